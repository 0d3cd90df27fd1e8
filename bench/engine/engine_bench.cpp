// dgdo-engine-bench: the engine's hot paths at 100k drivers, against DESIGN §6.
//
//   position update      GridIndex::upsert of a small move (the index's part of a driver_location)
//   core location apply  Core::apply(driver_location): validation + index + tracking
//   nearest query        GridIndex::nearest within 3 km, every driver eligible
//   offer decision       Core::apply(ride_request) -> NEW_ORDER, eligibility checks included
//   under load           80% of the fleet on trips and 2k orders waiting where no driver is free:
//                        one Tick (retries, timers) and the offer decision around them
//   batched solve        one batch window closing over 1.5k waiting orders (capped chunks)
//
// Prints a Markdown table. `--smoke` runs tiny counts (CI); `--drivers N` changes the fleet.
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/core.hpp"
#include "core/driver_index.hpp"
#include "inputs.hpp"

using namespace dgdo;
using namespace dgdo::bench;

namespace {

uint64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

double pct(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i), v.end());
    return v[i];
}

std::string machine() {
    std::ifstream f("/proc/cpuinfo");
    std::string line, model = "unknown CPU";
    int cpus = 0;
    while (std::getline(f, line)) {
        if (line.rfind("model name", 0) == 0 && cpus++ == 0) model = line.substr(line.find(':') + 2);
    }
    return model + ", " + std::to_string(cpus) + " vCPU";
}

const char* verdict(double value, double target) { return value <= target ? "ok" : "MISS"; }

constexpr uint64_t kT0 = 1'000'000'000'000ull;

uint64_t offer_in(const std::vector<OutRecord>& out) {
    for (const auto& r : out)
        if (r.type == DGDO_OUT_NEW_ORDER) return read<dgdo_out_new_order>(r).order_id;
    return 0;
}

struct Loaded {
    std::vector<double> tick_us, offer_us;
    size_t waiting = 0, busy = 0, offered = 0;
};

// 100k drivers: every fifth is free, in the western half; the rest are on
// trips anywhere. 2k orders wait in a district 7+ km east of every free
// driver, so none of them can be served and each keeps being retried.
Loaded under_load(size_t drivers, size_t waiting, size_t ticks, size_t offers, uint64_t seed) {
    Config cfg;
    cfg.search_timeout_s = 1e7;  // the waiting orders stay for the whole run
    cfg.exhausted_wait_s = 1e7;
    Core core(cfg);
    std::vector<OutRecord> out;
    uint64_t now = kT0;
    core.apply(Tick{now}, out);
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> ns(-7000, 7000), west(-7000, 0), east(7200, 9000);
    std::vector<std::string> ids(drivers);
    std::vector<dgdo_point> pos(drivers);
    for (size_t i = 0; i < drivers; ++i) {
        ids[i] = "drv-" + std::to_string(i);
        pos[i] = i % 5 == 0 ? offset(ns(rng), west(rng)) : offset(ns(rng), ns(rng));
        core.apply(location(ids[i], pos[i]), out);
        core.apply(status(ids[i], true), out);
    }
    Loaded r;
    for (size_t i = 0; i < drivers; ++i) {  // a pickup right at the driver: it is the one offered
        if (i % 5 == 0) continue;
        out.clear();
        const std::string pax = "trip-" + std::to_string(i);
        core.apply(ride(pax, pos[i], pos[(i + 7) % drivers]), out);
        const uint64_t order = offer_in(out);
        if (order == 0) continue;
        out.clear();
        core.apply(command(DGDO_ROLE_DRIVER, ids[i], order, DGDO_CMD_ACCEPT), out);
        ++r.busy;
    }
    for (size_t i = 0; i < waiting; ++i) {  // arriving over 2 s, as requests do
        out.clear();
        core.apply(ride("wait-" + std::to_string(i), offset(ns(rng), east(rng)), kDushanbe), out);
        r.waiting += offer_in(out) == 0;
        if (i % (waiting / 20 + 1) == 0) {
            out.clear();
            now += 100'000'000ull;
            core.apply(Tick{now}, out);
        }
    }
    out.clear();
    for (size_t t = 0; t < ticks; ++t) {  // 100 ms ticks: every waiting order comes due about once a second
        now += 100'000'000ull;
        const uint64_t a = now_ns();
        core.apply(Tick{now}, out);
        r.tick_us.push_back(static_cast<double>(now_ns() - a) / 1000.0);
        out.clear();
    }
    for (size_t i = 0; i < offers; ++i) {
        const std::string pax = "pax-" + std::to_string(i);
        const auto req = ride(pax, offset(ns(rng) * 0.9, west(rng) * 0.9 - 300), kDushanbe);
        const uint64_t a = now_ns();
        core.apply(req, out);
        r.offer_us.push_back(static_cast<double>(now_ns() - a) / 1000.0);
        const uint64_t order = offer_in(out);
        out.clear();
        r.offered += order != 0;
        if (order) core.apply(command(DGDO_ROLE_PASSENGER, pax, order, DGDO_CMD_CANCEL), out);  // untimed
        out.clear();
        if (i % 100 == 99) {  // time keeps passing: retries stay due alongside the requests
            now += 100'000'000ull;
            core.apply(Tick{now}, out);
            out.clear();
        }
    }
    return r;
}

struct Batched {
    std::vector<double> solve_ms;
    size_t orders = 0, offered = 0;
};

// A batch window closing over `orders` requests with `free` drivers about: the
// Tick that runs the min-cost assignment, solved in chunks of `cap` orders.
Batched batched_solve(size_t free, size_t orders, uint32_t cap, size_t rounds, uint64_t seed) {
    Config cfg;
    cfg.matching = Matching::Batched;
    cfg.batch_max_orders = cap;
    Core core(cfg);
    std::vector<OutRecord> out;
    uint64_t now = kT0;
    core.apply(Tick{now}, out);
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> coord(-7000, 7000);
    for (size_t i = 0; i < free; ++i) {
        const std::string id = "drv-" + std::to_string(i);
        core.apply(location(id, offset(coord(rng), coord(rng))), out);
        core.apply(status(id, true), out);
    }
    Batched b;
    b.orders = orders;
    for (size_t round = 0; round < rounds; ++round) {
        out.clear();
        std::vector<std::pair<std::string, uint64_t>> made;  // (passenger, order)
        for (size_t i = 0; i < orders; ++i) {
            const std::string pax = "b" + std::to_string(round) + "-" + std::to_string(i);
            core.apply(ride(pax, offset(coord(rng), coord(rng)), kDushanbe), out);
            made.emplace_back(pax, read<dgdo_out_command_result>(out.front()).order_id);
            out.clear();
        }
        now += static_cast<uint64_t>(cfg.batch_window_s * 1e9);
        const uint64_t a = now_ns();
        core.apply(Tick{now}, out);
        b.solve_ms.push_back(static_cast<double>(now_ns() - a) / 1e6);
        for (const auto& r : out) b.offered += r.type == DGDO_OUT_NEW_ORDER;
        out.clear();
        // Everyone leaves, matched or not: the next round starts from the same free fleet.
        for (const auto& [p, order] : made) core.apply(command(DGDO_ROLE_PASSENGER, p, order, DGDO_CMD_CANCEL), out);
        out.clear();
    }
    return b;
}

}  // namespace

int main(int argc, char** argv) {
    bool smoke = false;
    size_t drivers = 100000;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--smoke") {
            smoke = true;
            drivers = 2000;
        } else if (a == "--drivers" && i + 1 < argc) {
            drivers = std::strtoul(argv[++i], nullptr, 10);
        } else {
            std::fprintf(stderr, "usage: dgdo-engine-bench [--smoke] [--drivers N]\n");
            return 2;
        }
    }
    const size_t updates = smoke ? 20000 : 2000000;
    const size_t queries = smoke ? 500 : 50000;
    const size_t offers = smoke ? 300 : 20000;
    const size_t linear_queries = smoke ? 20 : 200;
    const double half_m = 7000;  // a 14 km × 14 km city

    std::mt19937_64 rng(1);
    std::uniform_real_distribution<double> coord(-half_m, half_m), jitter(-15.0, 15.0);
    std::vector<std::string> ids(drivers);
    std::vector<dgdo_point> pos(drivers);
    for (size_t i = 0; i < drivers; ++i) {
        ids[i] = "drv-" + std::to_string(i);
        pos[i] = offset(coord(rng), coord(rng));
    }

    // ---- index alone -------------------------------------------------------
    GridIndex grid;
    for (size_t i = 0; i < drivers; ++i) grid.upsert(ids[i], pos[i]);
    std::vector<uint32_t> who(updates);
    std::vector<dgdo_point> moved(updates);
    for (size_t i = 0; i < updates; ++i) {
        who[i] = static_cast<uint32_t>(rng() % drivers);
        const dgdo_point p = pos[who[i]];
        moved[i] = dgdo_point{p.lat + jitter(rng) / kMetresPerDegLat, p.lon + jitter(rng) / kMetresPerDegLat};
    }
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < updates; ++i) grid.upsert(ids[who[i]], moved[i]);
    const double update_ns = static_cast<double>(now_ns() - t0) / static_cast<double>(updates);
    std::vector<uint32_t> handles(drivers);
    for (size_t i = 0; i < drivers; ++i) handles[i] = grid.handle(ids[i]);
    t0 = now_ns();
    for (size_t i = 0; i < updates; ++i) grid.move(handles[who[i]], moved[i]);
    const double move_ns = static_cast<double>(now_ns() - t0) / static_cast<double>(updates);

    std::vector<dgdo_point> qs(queries);
    for (auto& q : qs) q = offset(coord(rng) * 0.9, coord(rng) * 0.9);
    std::vector<double> q_us;
    q_us.reserve(queries);
    size_t found = 0;
    for (const auto& q : qs) {
        const uint64_t a = now_ns();
        found += grid.nearest(q, 3000, nullptr).has_value();
        q_us.push_back(static_cast<double>(now_ns() - a) / 1000.0);
    }

    LinearIndex linear;
    for (size_t i = 0; i < drivers; ++i) linear.upsert(ids[i], pos[i]);
    std::vector<double> lin_us;
    for (size_t i = 0; i < linear_queries; ++i) {
        const uint64_t a = now_ns();
        found += linear.nearest(qs[i], 3000, nullptr).has_value();
        lin_us.push_back(static_cast<double>(now_ns() - a) / 1000.0);
    }

    // ---- the core --------------------------------------------------------------
    Core core;
    std::vector<OutRecord> out;
    core.apply(Tick{1'000'000'000'000ull}, out);
    for (size_t i = 0; i < drivers; ++i) {
        core.apply(location(ids[i], pos[i]), out);
        core.apply(status(ids[i], true), out);
    }
    out.clear();
    std::vector<dgdo_in_driver_location> locs(std::min<size_t>(updates, 200000));
    for (size_t i = 0; i < locs.size(); ++i) locs[i] = location(ids[who[i]], moved[i]);
    t0 = now_ns();
    for (const auto& l : locs) {
        core.apply(l, out);
        out.clear();
    }
    const double core_loc_ns = static_cast<double>(now_ns() - t0) / static_cast<double>(locs.size());

    std::vector<double> offer_us;
    offer_us.reserve(offers);
    size_t offered = 0;
    for (size_t i = 0; i < offers; ++i) {
        const auto req = ride("pax-" + std::to_string(i), qs[i % qs.size()], qs[(i + 1) % qs.size()]);
        out.clear();
        const uint64_t a = now_ns();
        core.apply(req, out);
        offer_us.push_back(static_cast<double>(now_ns() - a) / 1000.0);
        uint64_t order = 0;
        for (const auto& r : out)
            if (r.type == DGDO_OUT_NEW_ORDER) {
                ++offered;
                order = read<dgdo_out_new_order>(r).order_id;
            }
        out.clear();
        // Untimed: free the driver again so every decision sees the full fleet.
        if (order) core.apply(command(DGDO_ROLE_PASSENGER, "pax-" + std::to_string(i), order, DGDO_CMD_CANCEL), out);
    }

    std::printf("## dgdo-engine-bench%s — %zu drivers in a 14 km × 14 km city, %s\n\n", smoke ? " (smoke)" : "",
                drivers, machine().c_str());
    std::printf("| metric | p50 | p99 | mean | target (DESIGN §6) | verdict |\n");
    std::printf("|---|---:|---:|---:|---|---|\n");
    std::printf("| position update, index by handle (ns) | | | %.1f | ≤ 100 ns | %s |\n", move_ns, verdict(move_ns, 100));
    std::printf("| position update, index by id string (ns) | | | %.1f | ≤ 100 ns | %s |\n", update_ns, verdict(update_ns, 100));
    std::printf("| driver_location through Core::apply (ns) | | | %.1f | (info) | |\n", core_loc_ns);
    const double qp50 = pct(q_us, 50), qp99 = pct(q_us, 99);
    double qmean = 0;
    for (double v : q_us) qmean += v;
    qmean /= static_cast<double>(q_us.size());
    std::printf("| nearest-available query, grid (µs) | %.2f | %.2f | %.2f | ≤ 5 µs | %s |\n", qp50, qp99, qmean,
                verdict(qmean, 5));
    std::printf("| nearest-available query, linear scan (µs) | %.1f | %.1f | | (baseline) | %.0f× slower |\n",
                pct(lin_us, 50), pct(lin_us, 99), pct(lin_us, 50) / std::max(qp50, 1e-3));
    const double op50 = pct(offer_us, 50), op99 = pct(offer_us, 99);
    std::printf("| offer decision, ride_request → NEW_ORDER (µs) | %.2f | %.2f | | ≤ 20 µs p99 | %s |\n", op50, op99,
                verdict(op99, 20));

    // ---- under load ----------------------------------------------------------
    const size_t waiting = smoke ? 100 : 2000;
    const Loaded load = under_load(drivers, waiting, smoke ? 20 : 300, smoke ? 200 : 20000, 3);
    const double tp50 = pct(load.tick_us, 50), tp99 = pct(load.tick_us, 99);
    const double lp50 = pct(load.offer_us, 50), lp99 = pct(load.offer_us, 99);
    std::printf("| under load: one 100 ms Tick, %zu busy, %zu orders waiting (µs) | %.1f | %.1f | | (info) | |\n",
                load.busy, load.waiting, tp50, tp99);
    std::printf("| under load: offer decision (µs) | %.2f | %.2f | | ≤ 20 µs p99 | %s |\n", lp50, lp99,
                verdict(lp99, 20));

    // ---- batched -------------------------------------------------------------
    const size_t batch_orders = smoke ? 300 : 1500, free_drivers = drivers / 5;
    const Batched bat = batched_solve(free_drivers, batch_orders, Config{}.batch_max_orders, smoke ? 1 : 5, 4);
    std::printf("| batched window: %zu orders, %zu free drivers, solves of ≤ %u (ms) | %.1f | %.1f | | (info) | |\n",
                batch_orders, free_drivers, Config{}.batch_max_orders, pct(bat.solve_ms, 50), pct(bat.solve_ms, 99));

    std::printf("\n%zu/%zu queries found a driver, %zu/%zu requests got an offer; %zu grid cells\n", found - 0,
                queries + linear_queries, offered, offers, grid.cells());
    std::printf("under load: %zu/%zu requests got an offer; batched: %zu offers for %zu orders in %zu windows\n",
                load.offered, load.offer_us.size(), bat.offered, bat.orders * bat.solve_ms.size(), bat.solve_ms.size());
    // A batched order can lose every candidate to cheaper pairs and wait for the next window.
    const bool ok = offered == offers && load.offered == load.offer_us.size() && load.waiting == waiting &&
                    bat.offered * 10 >= bat.orders * bat.solve_ms.size() * 9;
    return ok ? 0 : 1;
}
