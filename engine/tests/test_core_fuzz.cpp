// Random runs of every input kind (commands in and out of turn, sessions opening, closing and
// resuming, workers detaching, ticks small and large), checking after each input what must always
// hold: an offer or a trip binds one driver to one order and the driver says so too; the index
// holds exactly the available drivers; nothing searches past its cap or holds an expired offer;
// fresh reliable records count up by one per recipient; an order ends once per recipient, is
// offered to a driver at most once and withdrawn from it at most once; a snapshot loads to the
// same bytes. Deterministic: fixed seeds.
#include <map>
#include <random>
#include <set>

#include "core_harness.hpp"

namespace dgdo::test {
namespace {

struct Fuzz {
    Harness h;
    std::mt19937 rng;
    std::map<std::string, uint64_t> last_seen;  // recipient key -> last seq seen
    std::map<uint64_t, int> terminal_updates;   // order -> terminal updates to its passenger
    std::map<int, long> seen_states;
    std::set<std::string> ended, offered, canceled;
    std::set<uint64_t> assigned;  // orders whose passenger was told of an accept

    Fuzz(Config cfg, uint32_t seed) : h(cfg), rng(seed) {}

    uint32_t r(uint32_t n) { return rng() % n; }

    void step_random() {
        const std::string d = "d" + std::to_string(r(8));
        const std::string p = "p" + std::to_string(r(6));
        const uint64_t order = 1001 + r(static_cast<uint32_t>(h.core.next_order_id() - 1001 + 2));
        std::vector<OutRecord> out;
        switch (r(14)) {
        case 0: out = h.location(d, at(static_cast<double>(r(4000)), static_cast<double>(r(4000)))); break;
        case 1: out = h.status(d, static_cast<uint8_t>(r(2))); break;
        case 2: out = h.ride(p, at(static_cast<double>(r(3000))), r(3), at(5000, r(2) * 100.0)); break;
        case 3:
        case 4:
        case 5: {
            // Mostly the driver's own offer or trip, so accepts and trips happen.
            const Driver* dr = h.core.find_driver(d);
            uint64_t mine = order;
            if (dr && r(4) != 0) mine = dr->offer ? dr->offer : dr->trip ? dr->trip : order;
            uint8_t cmd = static_cast<uint8_t>(1 + r(6));
            if (dr && dr->offer && r(2)) cmd = DGDO_CMD_ACCEPT;
            out = h.driver_cmd(d, mine, cmd);
            break;
        }
        case 6: {
            uint64_t mine = order;
            for (uint64_t id = h.core.next_order_id() - 1; id >= 1001 && r(3) != 0; --id) {
                const Order* o = h.core.find_order(id);
                if (o && o->passenger == p && !is_terminal(o->state)) {
                    mine = id;
                    break;
                }
            }
            out = h.passenger_cmd(p, mine, DGDO_CMD_CANCEL);
            break;
        }
        case 7: out = h.tick(0.5 * r(8)); break;
        case 8: out = h.session(true, DGDO_ROLE_DRIVER, d, static_cast<uint16_t>(1 + r(2)), 10 + r(3)); break;
        case 9: out = h.session(false, DGDO_ROLE_DRIVER, d, static_cast<uint16_t>(1 + r(2)), 10 + r(3)); break;
        case 10: {
            const uint64_t latest = h.core.deliveries().latest({DGDO_ROLE_DRIVER, d});
            out = h.session(true, DGDO_ROLE_DRIVER, d, 1, 20, latest > 0 ? latest - r(static_cast<uint32_t>(latest)) : 0);
            break;
        }
        case 11: {
            const uint64_t latest = h.core.deliveries().latest({DGDO_ROLE_PASSENGER, p});
            out = h.session(true, DGDO_ROLE_PASSENGER, p, 1, 30, latest > 0 ? latest - r(static_cast<uint32_t>(latest)) : 0);
            break;
        }
        case 12: out = h.tick(3 + r(20)); break;
        default: out = h.step(WorkerDetached{static_cast<uint16_t>(1 + r(2))}); break;
        }
        check_out(out);
        check_state();
    }

    void check_out(const std::vector<OutRecord>& out) {
        // Fresh records count up by one per recipient; replays repeat old seqs (below the last seen).
        for (const auto& o : out) {
            if (!Deliveries::reliable(o.type)) continue;
            const auto m = as<dgdo_out_meta>(o);
            const std::string key = std::to_string(m.to_role) + "/" + id_str(m.to_id);
            const uint64_t s = seq_of(o);
            uint64_t& last = last_seen[key];
            if (s > last) {
                ASSERT_EQ(s, last + 1) << key;  // no gap (a raise only comes from a last_seq ahead)
                last = s;
            }
            if (m.to_conn != 0) continue;  // a replay or snapshot to one connection repeats what was said
            const uint64_t oid = as<dgdo_out_order_update>(o).order_id;  // at 64 in all three
            const std::string ok = key + "#" + std::to_string(oid);
            if (o.type == DGDO_OUT_ORDER_UPDATE) {
                const auto u = as<dgdo_out_order_update>(o);
                ASSERT_FALSE(ended.count(ok)) << "update after the end " << ok << " status " << int(u.status);
                // A passenger hears of a driver once one accepted (protocol.md: driver_id "once assigned").
                if (m.to_role == DGDO_ROLE_PASSENGER && u.status == DGDO_ORDER_ACCEPTED) assigned.insert(oid);
                if (m.to_role == DGDO_ROLE_PASSENGER && !assigned.count(oid)) {
                    ASSERT_EQ(id_str(u.driver_id), "") << "driver named before an accept " << ok;
                }
                if (u.status == DGDO_ORDER_COMPLETED || u.status == DGDO_ORDER_CANCELED ||
                    u.status == DGDO_ORDER_NO_DRIVER)
                    ended.insert(ok);
            } else if (o.type == DGDO_OUT_NEW_ORDER) {
                ASSERT_TRUE(offered.insert(ok).second) << "offered twice " << ok;
            } else if (o.type == DGDO_OUT_CANCEL_ORDER) {
                ASSERT_TRUE(canceled.insert(ok).second) << "canceled twice " << ok;
                ASSERT_TRUE(offered.count(ok)) << "cancel of an order never offered " << ok;
            }
        }
    }

    void check_state() {
        const Core& c = h.core;
        std::map<std::string, uint64_t> offer_of, trip_of;
        for (uint64_t id = 1001; id < c.next_order_id(); ++id) {
            const Order* o = c.find_order(id);
            if (!o) continue;
            if (o->state == OrderState::Offered) {
                ASSERT_FALSE(o->driver.empty()) << id;
                ASSERT_EQ(offer_of.count(o->driver), 0u) << "two offers on " << o->driver;
                offer_of[o->driver] = id;
                ASSERT_GT(o->offer_deadline_ns, c.now_ns()) << id;
                ASSERT_LE(o->offer_deadline_ns, o->search_deadline_ns) << "an offer outliving its search " << id;
            }
            if (has_trip(o->state)) {
                ASSERT_EQ(trip_of.count(o->driver), 0u) << "two trips on " << o->driver;
                trip_of[o->driver] = id;
            }
            if (o->state == OrderState::Searching || o->state == OrderState::Offered) {
                ASSERT_GT(o->search_deadline_ns, c.now_ns()) << "search past its cap " << id;
            }
            if (o->state == OrderState::Searching) {
                ASSERT_TRUE(o->driver.empty()) << id;
            }
            ++seen_states[static_cast<int>(o->state)];
        }
        uint32_t available = 0;
        for (int i = 0; i < 8; ++i) {
            const std::string id = "d" + std::to_string(i);
            const Driver* d = c.find_driver(id);
            if (!d) continue;
            ASSERT_EQ(d->offer, offer_of.count(id) ? offer_of[id] : 0) << id;
            ASSERT_EQ(d->trip, trip_of.count(id) ? trip_of[id] : 0) << id;
            ASSERT_FALSE(d->offer != 0 && d->trip != 0) << id;
            const bool avail = d->online && d->connected && d->has_pos && d->offer == 0 && d->trip == 0;
            ASSERT_EQ(d->indexed, avail) << id;
            available += avail;
        }
        ASSERT_EQ(c.stats().drivers_available, available);
    }
};

void run(Config cfg, uint32_t seed, int steps, std::map<int, long>& reached) {
    Fuzz f(cfg, seed);
    for (int i = 0; i < steps; ++i) {
        f.step_random();
        if (::testing::Test::HasFatalFailure()) {
            ADD_FAILURE() << "seed " << seed << " step " << i;
            return;
        }
        if (i % 97 == 0) {  // a snapshot taken now and loaded gives the same bytes
            std::string a, b;
            f.h.core.save(a);
            Core again(cfg);
            ASSERT_TRUE(again.load(reinterpret_cast<const uint8_t*>(a.data()), a.size()));
            again.save(b);
            ASSERT_EQ(a, b) << "seed " << seed << " step " << i;
        }
    }
    for (auto [st, n] : f.seen_states) reached[st] += n;
}

// The runs went through the lifecycle, not around it (the walk is biased towards the drivers'
// own offers and trips and the passengers' own orders for that).
void expect_lifecycle(const std::map<int, long>& reached) {
    for (OrderState st : {OrderState::Searching, OrderState::Offered, OrderState::Accepted, OrderState::Arriving,
                          OrderState::Arrived, OrderState::Started, OrderState::Completed, OrderState::Canceled,
                          OrderState::NoDriver})
        EXPECT_TRUE(reached.count(static_cast<int>(st))) << "never reached state " << int(st);
}

// Short timers and a shallow history, so that a run of 3000 inputs reaches every timer and evicts history.
Config fuzz_config(uint32_t seed) {
    Config cfg;
    cfg.offer_timeout_s = 4;
    cfg.search_timeout_s = 20;
    cfg.exhausted_wait_s = seed % 3 == 0 ? 0 : 3;
    cfg.grace_s = 5;
    cfg.retention_s = 30;
    cfg.history_depth = 8;
    return cfg;
}

TEST(CoreFuzz, GreedyInvariantsHold) {
    std::map<int, long> reached;
    for (uint32_t seed = 1; seed <= 60; ++seed) {
        run(fuzz_config(seed), seed, 3000, reached);
        if (HasFailure()) return;
    }
    expect_lifecycle(reached);
}

TEST(CoreFuzz, BatchedInvariantsHold) {
    std::map<int, long> reached;
    for (uint32_t seed = 1; seed <= 60; ++seed) {
        Config cfg = fuzz_config(seed);
        cfg.matching = Matching::Batched;
        cfg.batch_max_orders = 1 + seed % 3;
        run(cfg, seed, 3000, reached);
        if (HasFailure()) return;
    }
    expect_lifecycle(reached);
}

}  // namespace
}  // namespace dgdo::test
