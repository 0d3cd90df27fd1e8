// Dispatch tunables. Seconds and metres as the CLI and the config file take
// them (the key is the flag without "--", '-' or '_' alike); the core
// converts to nanoseconds once.
#pragma once

#include <cstdint>

namespace dgdo {

enum class Matching : uint8_t {
    Greedy,   // each order is offered to its nearest available driver at once
    Batched,  // orders wait up to batch_window_s; one min-cost assignment per window
};

struct Config {
    double offer_timeout_s = 15.0;     // a driver's time to accept an offer
    double radius_m = 3000.0;          // first search ring
    double wide_radius_m = 7000.0;     // second ring when the first has nobody
    double speed_kmh = 22.0;           // city average for ETAs
    double detour = 1.35;              // road distance / great-circle distance
    double pickup_overhead_s = 30.0;   // added to every pickup ETA
    double search_timeout_s = 60.0;    // hard cap: no acceptance by then -> no_driver
    // Once no untried available driver is within wide_radius_m, a passenger
    // should not stare at "searching" for the full search_timeout_s: the order
    // waits this long for a driver it has not tried yet, then ends no_driver
    // (0 = at once). The wait restarts after each further refusal.
    double exhausted_wait_s = 10.0;
    double grace_s = 10.0;             // a disconnected driver keeps its offer this long
    double estimate_interval_s = 3.0;  // ESTIMATE_UPDATE throttle per order
    double nearby_interval_s = 1.0;    // NEARBY_DRIVERS cadence
    double stats_interval_s = 1.0;     // ENGINE_STATS cadence
    double nearby_max_radius_m = 5000.0;
    double nearby_default_radius_m = 2000.0;  // when a subscribe gives radius 0
    Matching matching = Matching::Greedy;
    double batch_window_s = 2.0;       // batched mode: how long requests collect
    uint32_t batch_candidates = 8;     // batched mode: nearest drivers considered per order
    // batched mode: orders per min-cost solve. Hungarian is O(n² m); past this the window is
    // split into solves, orders whose nearest driver is closest going first.
    uint32_t batch_max_orders = 128;
    // A waiting order is retried when a driver near it becomes available, and otherwise this
    // often (staggered per order by up to a quarter of it) to catch drivers driving into range.
    double retry_interval_s = 1.0;
    // At most this many retries per tick; the rest stay due for the next tick, oldest due
    // first. Bounds a tick after a burst of failures (a retry in an empty area scans ~7 km).
    uint32_t retries_per_tick = 200;
    double retention_s = 3600.0;       // finished orders are forgotten after this
    // Reliable messages kept per recipient for resume (?last_seq). A recipient's history is
    // dropped once none of its orders is live or within retention_s (core/delivery.hpp).
    uint32_t history_depth = 256;
    double cell_m = 250.0;             // grid index cell edge
    double ref_lat = 38.56;            // latitude where cells are cell_m wide (Dushanbe)
};

}  // namespace dgdo
