// Dispatch tunables. Seconds and metres as the CLI takes them; the core
// converts to nanoseconds once.
#pragma once

namespace dgdo {

struct Config {
    double offer_timeout_s = 15.0;     // a driver's time to accept an offer
    double radius_m = 3000.0;          // first search ring
    double wide_radius_m = 7000.0;     // second ring when the first has nobody
    double speed_kmh = 22.0;           // city average for ETAs
    double detour = 1.35;              // road distance / great-circle distance
    double pickup_overhead_s = 30.0;   // added to every pickup ETA
    double search_timeout_s = 60.0;    // no acceptance by then -> no_driver
    double grace_s = 10.0;             // a disconnected driver keeps its offer this long
    double estimate_interval_s = 3.0;  // ESTIMATE_UPDATE throttle per order
    double nearby_interval_s = 1.0;    // NEARBY_DRIVERS cadence
    double stats_interval_s = 1.0;     // ENGINE_STATS cadence
    double nearby_max_radius_m = 5000.0;
    double nearby_default_radius_m = 2000.0;  // when a subscribe gives radius 0
};

}  // namespace dgdo
