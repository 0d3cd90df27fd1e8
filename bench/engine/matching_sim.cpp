// dgdo-matching-sim: greedy vs batched matching through the real Core, in a
// Dushanbe-sized city (14 km × 12 km), at three demand levels.
//
// Model. Drivers start uniformly at random, online. Passengers request rides
// (Poisson arrivals, uniform pickups and dropoffs). A driver accepts an offer
// 2 s after receiving it, drives to the pickup (great-circle × detour at
// 22 km/h), boards the passenger (30 s), drives to the dropoff, completes and
// waits there. Orders end as no_driver when no free driver is left within reach
// for exhausted_wait_s, or at the latest after the search timeout. Capacity = drivers / mean cycle time; demand is a share of it.
// Only requests after a warm-up are measured.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "core/core.hpp"
#include "core/geo.hpp"
#include "inputs.hpp"

using namespace dgdo;
using namespace dgdo::bench;

namespace {

constexpr double kHalfNS = 6000, kHalfEW = 7000;  // metres from the centre
constexpr double kAcceptDelayS = 2, kBoardS = 30;

struct Result {
    size_t requested = 0, served = 0;
    double pickup_m = 0, wait_s = 0;  // sums over served
};

struct Sim {
    Config cfg;
    Core core;
    std::mt19937_64 rng;
    double t = 0;
    using Action = std::function<void()>;
    std::priority_queue<std::pair<double, uint64_t>, std::vector<std::pair<double, uint64_t>>, std::greater<>> q;
    std::map<uint64_t, Action> actions;
    uint64_t seq = 0;
    struct Req {
        double at_s;
        bool measured;
        double pickup_m = -1;
    };
    std::map<uint64_t, Req> reqs;  // order id -> request
    std::map<uint64_t, dgdo_point> dropoff, pickup;
    std::map<std::string, dgdo_point> where;
    Result res;
    std::vector<OutRecord> out;

    Sim(Config c, uint64_t seed) : cfg(c), core(c), rng(seed) {}

    uint64_t ns(double s) const { return 1'000'000'000'000ull + static_cast<uint64_t>(s * 1e9); }
    double drive(double m) const { return drive_s(m, cfg.detour, cfg.speed_kmh); }
    dgdo_point random_point() {
        std::uniform_real_distribution<double> ns_(-kHalfNS, kHalfNS), ew(-kHalfEW, kHalfEW);
        return offset(ns_(rng), ew(rng));
    }
    void at(double when, Action a) {
        actions[seq] = std::move(a);
        q.push({when, seq++});
    }
    void apply(const InputEvent& ev) {
        out.clear();
        core.apply(ev, out);
        for (const auto& r : out) react(r);
    }
    void react(const OutRecord& r) {
        if (r.type == DGDO_OUT_NEW_ORDER) {
            const auto o = read<dgdo_out_new_order>(r);
            const std::string d = id_of(o.meta.to_id);
            const double dist = o.distance_m;
            at(t + kAcceptDelayS, [this, d, id = o.order_id, dist] { accept(d, id, dist); });
        }
    }
    void accept(const std::string& d, uint64_t id, double dist) {
        out.clear();
        core.apply(command(DGDO_ROLE_DRIVER, d, id, DGDO_CMD_ACCEPT), out);
        if (read<dgdo_out_command_result>(out.at(0)).status != DGDO_RESULT_OK) return;
        for (const auto& r : out) react(r);
        reqs[id].pickup_m = dist;
        at(t + drive(dist), [this, d, id] { arrive(d, id); });
    }
    void arrive(const std::string& d, uint64_t id) {
        apply(location(d, pickup[id]));
        apply(command(DGDO_ROLE_DRIVER, d, id, DGDO_CMD_ARRIVED));
        Req& r = reqs[id];
        if (r.measured) {
            ++res.served;
            res.pickup_m += r.pickup_m;
            res.wait_s += t - r.at_s;
        }
        at(t + kBoardS, [this, d, id] {
            apply(command(DGDO_ROLE_DRIVER, d, id, DGDO_CMD_START));
            at(t + drive(haversine_m(pickup[id], dropoff[id])), [this, d, id] {
                apply(location(d, dropoff[id]));
                apply(command(DGDO_ROLE_DRIVER, d, id, DGDO_CMD_COMPLETE));
            });
        });
    }

    Result run(int drivers, double rate_per_s, double warmup_s, double measure_s) {
        apply(Tick{ns(0)});
        for (int i = 0; i < drivers; ++i) {
            const std::string d = "d" + std::to_string(i);
            apply(location(d, random_point()));
            apply(status(d, true));
        }
        std::exponential_distribution<double> gap(rate_per_s);
        int pax = 0;
        std::function<void()> next_request = [&] {
            const std::string p = "p" + std::to_string(pax++);
            const dgdo_point a = random_point(), b = random_point();
            out.clear();
            core.apply(ride(p, a, b), out);
            const uint64_t id = read<dgdo_out_command_result>(out.at(0)).order_id;
            pickup[id] = a;
            dropoff[id] = b;
            reqs[id] = Req{t, t >= warmup_s && t < warmup_s + measure_s};
            res.requested += reqs[id].measured;
            for (const auto& r : out) react(r);
            if (t < warmup_s + measure_s) at(t + gap(rng), next_request);
        };
        at(gap(rng), next_request);
        for (double tick = 0.5; tick <= warmup_s + measure_s + cfg.search_timeout_s + 600; tick += 0.5)
            at(tick, [this] { apply(Tick{ns(t)}); });
        while (!q.empty()) {
            const auto [when, id] = q.top();
            q.pop();
            t = when;
            Action a = std::move(actions[id]);
            actions.erase(id);
            a();
        }
        return res;
    }
};

}  // namespace

int main(int argc, char** argv) {
    const bool smoke = argc > 1 && std::string(argv[1]) == "--smoke";
    const int drivers = smoke ? 40 : 400;
    const double warmup = smoke ? 300 : 1800, measure = smoke ? 600 : 3600;
    // Mean cycle: pickup (~1.2 km at capacity) + boarding + ride (mean distance between two
    // uniform points in the box ≈ 4.8 km), all at 22 km/h × 1.35 detour.
    Config base;
    const double ride_m = 4800, pickup_m = 1200;
    const double cycle_s = drive_s(ride_m + pickup_m, base.detour, base.speed_kmh) + kBoardS + kAcceptDelayS;
    const double capacity = drivers / cycle_s;  // rides per second
    std::printf("## dgdo-matching-sim%s — %d drivers, 14 km × 12 km, capacity ≈ %.0f rides/h (cycle %.0f s); "
                "%.0f min measured after %.0f min warm-up\n\n",
                smoke ? " (smoke)" : "", drivers, capacity * 3600, cycle_s, measure / 60, warmup / 60);
    std::printf("| demand | matching | requests | served | mean pickup distance (m) | mean wait to pickup (s) |\n");
    std::printf("|---|---|---:|---:|---:|---:|\n");
    const std::pair<const char*, double> levels[] = {{"low (0.4× capacity)", 0.4},
                                                     {"near capacity (0.9×)", 0.9},
                                                     {"over capacity (1.5×)", 1.5}};
    for (const auto& [name, share] : levels) {
        for (const Matching m : {Matching::Greedy, Matching::Batched}) {
            Config c = base;
            c.matching = m;
            c.retention_s = 600;
            Sim sim(c, 2024);
            const Result r = sim.run(drivers, share * capacity, warmup, measure);
            const double served = r.requested ? 100.0 * static_cast<double>(r.served) / static_cast<double>(r.requested) : 0;
            std::printf("| %s | %s | %zu | %.1f %% | %.0f | %.0f |\n", name, m == Matching::Greedy ? "greedy" : "batched (2 s)",
                        r.requested, served, r.served ? r.pickup_m / static_cast<double>(r.served) : 0,
                        r.served ? r.wait_s / static_cast<double>(r.served) : 0);
        }
    }
    return 0;
}
