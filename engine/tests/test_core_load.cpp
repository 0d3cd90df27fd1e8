// Bounded work under load: waiting orders are retried when supply near them
// changes or about once a second, busy drivers cost searches nothing, and a
// large batch is solved in capped chunks.
#undef NDEBUG
#include <random>
#include <set>

#include "core/driver_index.hpp"
#include "core_harness.hpp"

namespace dgdo::test {
namespace {

// A GridIndex that counts the searches the core makes.
class CountingIndex final : public DriverIndex {
public:
    explicit CountingIndex(size_t* searches) : searches_(searches) {}
    void upsert(const std::string& id, dgdo_point pos) override { grid_.upsert(id, pos); }
    void erase(const std::string& id) override { grid_.erase(id); }
    std::vector<Candidate> nearest_k(dgdo_point at, double r, std::size_t k, const Eligible& e) const override {
        ++*searches_;
        return grid_.nearest_k(at, r, k, e);
    }
    std::size_t size() const override { return grid_.size(); }

private:
    GridIndex grid_;
    size_t* searches_;
};

TEST(CoreLoad, WaitingOrdersAreRetriedAboutOnceASecondNotOnEveryTick) {
    size_t searches = 0;
    Config c;
    c.exhausted_wait_s = 1000;
    Harness h(c, std::make_unique<CountingIndex>(&searches));
    h.online("far", at(20000));
    for (int i = 0; i < 50; ++i) h.ride("p" + std::to_string(i), at(10.0 * i));
    searches = 0;
    for (int i = 0; i < 20; ++i) h.tick(0.1);  // 2 s
    EXPECT_GE(searches, 50u);                  // each retried at least once...
    EXPECT_LE(searches, 100u);                 // ...at most twice, where every tick would be 1000
}

TEST(CoreLoad, RetriesAreStaggeredAcrossTicks) {
    size_t searches = 0;
    Config c;
    c.exhausted_wait_s = 1000;
    Harness h(c, std::make_unique<CountingIndex>(&searches));
    for (int i = 0; i < 200; ++i) h.ride("p" + std::to_string(i), at(10.0 * i));  // all fail in the same instant
    size_t busiest = 0;
    for (int i = 0; i < 15; ++i) {
        searches = 0;
        h.tick(0.1);
        busiest = std::max(busiest, searches);
    }
    EXPECT_LT(busiest, 200u);
}

TEST(CoreLoad, RetriesPerTickAreCappedAndTheRestFollowInLaterTicks) {
    size_t searches = 0;
    Config c;
    c.exhausted_wait_s = 1000;
    c.retries_per_tick = 30;
    Harness h(c, std::make_unique<CountingIndex>(&searches));
    for (int i = 0; i < 200; ++i) h.ride("p" + std::to_string(i), at(10.0 * i));
    size_t total = 0;
    for (int i = 0; i < 20; ++i) {
        searches = 0;
        h.tick(0.1);
        EXPECT_LE(searches, 30u);
        total += searches;
    }
    EXPECT_GE(total, 200u);  // nobody starves: every order got its retry within 2 s
}

TEST(CoreLoad, FreedDriverGoesToTheOldestWaitingOrderWithinItsReach) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t first = h.order_for("p0");  // d1 takes it
    const uint64_t far = h.order_for("pFar", at(0, 30000));
    const uint64_t near = h.order_for("pNear", at(500));
    const auto out = h.driver_cmd("d1", first, DGDO_CMD_REJECT);
    EXPECT_EQ(offered_to(out, "d1"), near);
    EXPECT_EQ(h.state(far), OrderState::Searching);
}

TEST(CoreLoad, FreedDriverIsOfferedAfterTheOutputsOfWhatFreedIt) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t a = h.order_for("pA");
    const uint64_t b = h.order_for("pB");
    h.driver_cmd("d1", a, DGDO_CMD_ACCEPT);
    h.driver_cmd("d1", a, DGDO_CMD_ARRIVED);
    h.driver_cmd("d1", a, DGDO_CMD_START);
    const auto out = h.driver_cmd("d1", a, DGDO_CMD_COMPLETE);
    ASSERT_GE(out.size(), 2u);
    EXPECT_EQ(out.back().type, DGDO_OUT_NEW_ORDER);
    EXPECT_EQ(offered_to(out, "d1"), b);
}

TEST(CoreLoad, OnlyAvailableDriversAreIndexed) {
    size_t searches = 0;
    auto owned = std::make_unique<CountingIndex>(&searches);
    const CountingIndex* index = owned.get();
    Harness h(Config{}, std::move(owned));
    h.online("d1", at(100));
    h.online("d2", at(200));
    h.location("d3", at(300));  // never online
    EXPECT_EQ(index->size(), 2u);
    const uint64_t id = h.order_for("p1");  // d1 holds an offer
    EXPECT_EQ(index->size(), 1u);
    h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    EXPECT_EQ(index->size(), 1u);
    h.session(true, DGDO_ROLE_DRIVER, "d2", 1, 3);
    h.session(false, DGDO_ROLE_DRIVER, "d2", 1, 3);  // disconnected: not offerable
    EXPECT_EQ(index->size(), 0u);
    h.session(true, DGDO_ROLE_DRIVER, "d2", 1, 4);
    EXPECT_EQ(index->size(), 1u);
    h.passenger_cmd("p1", id, DGDO_CMD_CANCEL);
    EXPECT_EQ(index->size(), 2u);
    EXPECT_EQ(h.core.stats().drivers_available, 2u);
}

// The gauges are kept incrementally (and drivers_available is the index's
// size): through a random run they must equal a count from scratch.
TEST(CoreLoad, StatsEqualACountFromScratchThroughARandomRun) {
    Harness h;
    std::mt19937 rng(5);
    for (int i = 0; i < 3000; ++i) {
        const std::string d = "d" + std::to_string(rng() % 25);
        switch (rng() % 9) {
        case 0: h.status(d, static_cast<uint8_t>(rng() % 2)); break;
        case 1: h.ride("p" + std::to_string(rng() % 15), at(static_cast<double>(rng() % 4000))); break;
        case 2:
        case 3: {
            const uint64_t id = 1001 + rng() % 400;
            const Order* o = h.core.find_order(id);
            h.driver_cmd(o && !o->driver.empty() ? o->driver : d, id, static_cast<uint8_t>(1 + rng() % 6));
            break;
        }
        case 4: h.passenger_cmd("p" + std::to_string(rng() % 15), 1001 + rng() % 400, DGDO_CMD_CANCEL); break;
        case 5: h.session(rng() % 2, DGDO_ROLE_DRIVER, d, 1, 1); break;
        case 6: h.tick(0.5 * static_cast<double>(rng() % 8)); break;
        default: h.location(d, at(static_cast<double>(rng() % 6000))); break;
        }
        uint32_t online = 0, available = 0, active = 0;
        for (int k = 0; k < 25; ++k)
            if (const Driver* x = h.core.find_driver("d" + std::to_string(k))) {
                online += x->online;
                available += x->online && x->connected && x->has_pos && x->offer == 0 && x->trip == 0;
            }
        for (uint64_t id = 1001; id < 1401; ++id)
            if (const Order* o = h.core.find_order(id)) active += !is_terminal(o->state);
        const CoreStats s = h.core.stats();
        ASSERT_EQ(s.drivers_online, online) << "step " << i;
        ASSERT_EQ(s.drivers_available, available) << "step " << i;
        ASSERT_EQ(s.active_orders, active) << "step " << i;
    }
}

Config batched(uint32_t cap) {
    Config c;
    c.matching = Matching::Batched;
    c.batch_max_orders = cap;
    return c;
}

TEST(CoreLoad, BatchLargerThanTheCapIsSolvedInChunksWithOneOfferPerDriver) {
    Harness h(batched(3));
    for (int i = 0; i < 10; ++i) h.online("d" + std::to_string(i), at(150.0 * i, 40.0 * i));
    for (int i = 0; i < 8; ++i) h.ride("p" + std::to_string(i), at(120.0 * i, 30.0 * i));
    const auto offers = of_type(h.tick(2), DGDO_OUT_NEW_ORDER);
    EXPECT_EQ(offers.size(), 8u);
    std::set<std::string> drivers;
    std::set<uint64_t> orders;
    for (const auto& o : offers) {
        drivers.insert(id_str(as<dgdo_out_new_order>(o).meta.to_id));
        orders.insert(as<dgdo_out_new_order>(o).order_id);
    }
    EXPECT_EQ(drivers.size(), 8u);
    EXPECT_EQ(orders.size(), 8u);
}

TEST(CoreLoad, ChunkedBatchDecidesTheOrderNearestADriverFirst) {
    Harness h(batched(1));
    h.online("d1", at(0));
    h.ride("pFar", at(2000));                    // older, but farther from d1
    const uint64_t near = h.order_for("pNear", at(50));
    EXPECT_EQ(offered_to(h.tick(2), "d1"), near);
}

TEST(CoreLoad, ChunkedBatchesAreDeterministic) {
    auto run = [] {
        Harness h(batched(4));
        for (int i = 0; i < 30; ++i) h.online("d" + std::to_string(i), at(97.0 * (i % 7), 131.0 * (i % 5)));
        for (int i = 0; i < 40; ++i) h.ride("p" + std::to_string(i), at(53.0 * (i % 11), 71.0 * (i % 6)));
        h.tick(2);
        h.tick(2);
        return h.all;
    };
    const auto a = run(), b = run();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i].body, b[i].body) << i;
}

}  // namespace
}  // namespace dgdo::test
