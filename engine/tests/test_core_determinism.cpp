// The same inputs give the same output bytes: the core is a pure function of its journal.
#undef NDEBUG
#include <random>

#include "core_harness.hpp"

namespace dgdo::test {
namespace {

// A pseudo-random but fixed day: drivers roam, passengers order, everyone acts.
std::vector<OutRecord> run_script(uint32_t seed) {
    Harness h;
    std::mt19937 rng(seed);
    auto pick = [&rng](int n) { return static_cast<int>(rng() % static_cast<uint32_t>(n)); };
    for (int i = 0; i < 3000; ++i) {
        const std::string d = "d" + std::to_string(pick(30));
        const std::string p = "p" + std::to_string(pick(20));
        switch (pick(10)) {
        case 0: h.status(d, static_cast<uint8_t>(pick(4) != 0)); break;
        case 1: h.ride(p, at(pick(4000) - 2000, pick(4000) - 2000), static_cast<uint64_t>(pick(3))); break;
        case 2:
        case 3: {
            const uint64_t order = 1001 + static_cast<uint64_t>(pick(200));
            h.driver_cmd(d, order, static_cast<uint8_t>(1 + pick(6)));
            if (const Order* o = h.core.find_order(order); o && !o->driver.empty())
                h.driver_cmd(o->driver, order, static_cast<uint8_t>(1 + pick(5)));
            break;
        }
        case 4: h.passenger_cmd(p, 1001 + static_cast<uint64_t>(pick(200)), DGDO_CMD_CANCEL); break;
        case 5: h.nearby(p, at(pick(2000), pick(2000)), 1000 + pick(3000), pick(3) != 0); break;
        case 6: h.session(pick(2) != 0, DGDO_ROLE_DRIVER, d, static_cast<uint16_t>(1 + pick(2)), 1); break;
        case 7: h.tick(0.1 * pick(30)); break;
        default: h.location(d, at(pick(8000) - 4000, pick(8000) - 4000)); break;
        }
    }
    return h.all;
}

TEST(CoreDeterminism, SameInputsThroughTwoFreshCoresGiveIdenticalOutputBytes) {
    const auto a = run_script(2024);
    const auto b = run_script(2024);
    ASSERT_EQ(a.size(), b.size());
    size_t offers = 0, updates = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i].type, b[i].type) << i;
        ASSERT_EQ(a[i].body, b[i].body) << i;
        offers += a[i].type == DGDO_OUT_NEW_ORDER;
        updates += a[i].type == DGDO_OUT_ORDER_UPDATE;
    }
    EXPECT_GT(offers, 50u);  // the script really exercises dispatch
    EXPECT_GT(updates, 100u);
}

TEST(CoreDeterminism, NoDriverEverHoldsTwoOrdersDuringARandomRun) {
    Harness h;
    std::mt19937 rng(99);
    for (int i = 0; i < 2000; ++i) {
        const std::string d = "d" + std::to_string(rng() % 10);
        switch (rng() % 6) {
        case 0: h.online(d, at(static_cast<double>(rng() % 3000))); break;
        case 1: h.ride("p" + std::to_string(rng() % 10)); break;
        case 2: h.driver_cmd(d, 1001 + rng() % 100, static_cast<uint8_t>(1 + rng() % 6)); break;
        case 3: h.tick(1); break;
        default: h.status(d, static_cast<uint8_t>(rng() % 2)); break;
        }
        std::map<std::string, int> bound;
        for (uint64_t id = 1001; id < 1101; ++id) {
            const Order* o = h.core.find_order(id);
            if (o && (o->state == OrderState::Offered || has_trip(o->state))) {
                ASSERT_EQ(++bound[o->driver], 1) << o->driver;
            }
        }
    }
}

}  // namespace
}  // namespace dgdo::test
