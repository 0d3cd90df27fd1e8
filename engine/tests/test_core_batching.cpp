// Batched mode: requests collect for the window, then one min-cost assignment.
#undef NDEBUG
#include "core_harness.hpp"

namespace dgdo::test {
namespace {

Config batched() {
    Config c;
    c.matching = Matching::Batched;
    c.batch_window_s = 2.0;
    return c;
}

TEST(CoreBatching, NoOfferBeforeTheWindowCloses) {
    Harness h(batched());
    h.online("d1", at(100));
    const auto out = h.ride("p1");
    EXPECT_TRUE(of_type(out, DGDO_OUT_NEW_ORDER).empty());
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), (std::vector<uint8_t>{DGDO_ORDER_SEARCHING}));
    EXPECT_TRUE(of_type(h.tick(1.9), DGDO_OUT_NEW_ORDER).empty());
    EXPECT_EQ(offered_to(h.tick(0.1), "d1"), 1001u);
}

TEST(CoreBatching, TheAssignmentMinimisesTotalPickupDistanceWhereGreedyWouldNot) {
    // Orders A (x=0) and B (x=1000 m); d1 at x=600, d2 at x=-1000.
    // Greedy, oldest first: A-d1 (600) + B-d2 (2000) = 2600. Optimal: A-d2 (1000) + B-d1 (400) = 1400.
    for (const bool use_batch : {false, true}) {
        Harness h(use_batch ? batched() : Config{});
        h.online("d1", at(0, 600));
        h.online("d2", at(0, -1000));
        const uint64_t a = h.order_for("pA", at(0, 0));
        const uint64_t b = h.order_for("pB", at(0, 1000));
        h.tick(2);
        const std::string want_a = use_batch ? "d2" : "d1", want_b = use_batch ? "d1" : "d2";
        EXPECT_EQ(h.core.find_order(a)->driver, want_a) << "batched " << use_batch;
        EXPECT_EQ(h.core.find_order(b)->driver, want_b) << "batched " << use_batch;
    }
}

TEST(CoreBatching, WithMoreOrdersThanDriversTheRestWaitForTheNextWindow) {
    Harness h(batched());
    h.online("d1", at(100));
    const uint64_t a = h.order_for("pA", at(0));
    const uint64_t b = h.order_for("pB", at(50));
    const auto out = h.tick(2);
    EXPECT_EQ(of_type(out, DGDO_OUT_NEW_ORDER).size(), 1u);
    EXPECT_EQ(h.core.find_order(b)->driver, "d1");  // the nearer pickup
    EXPECT_EQ(h.state(a), OrderState::Searching);
    h.online("d2", at(-100));
    EXPECT_TRUE(of_type(h.tick(1), DGDO_OUT_NEW_ORDER).empty());  // the next window is still open
    EXPECT_EQ(offered_to(h.tick(1), "d2"), a);
}

TEST(CoreBatching, RejectedOrderIsReofferedAtTheNextWindowToAnotherDriver) {
    Harness h(batched());
    h.online("d1", at(100));
    h.online("d2", at(900));
    const uint64_t id = h.order_for("p1");
    h.tick(2);
    ASSERT_EQ(h.core.find_order(id)->driver, "d1");
    const auto out = h.driver_cmd("d1", id, DGDO_CMD_REJECT);
    EXPECT_TRUE(of_type(out, DGDO_OUT_NEW_ORDER).empty());
    EXPECT_EQ(offered_to(h.tick(2), "d2"), id);
}

TEST(CoreBatching, WidensToTheSecondRadiusAndEndsAsNoDriver) {
    Config c = batched();
    c.search_timeout_s = 10;
    Harness h(c);
    h.online("far", at(5000));
    const uint64_t a = h.order_for("pA");
    h.tick(2);
    EXPECT_EQ(h.core.find_order(a)->driver, "far");
    Harness h2(c);
    h2.online("too-far", at(8000));
    const uint64_t b = h2.order_for("pB");
    h2.tick(2);
    EXPECT_EQ(h2.state(b), OrderState::Searching);
    const auto out = h2.tick(8);
    EXPECT_EQ(h2.state(b), OrderState::NoDriver);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "pB"), (std::vector<uint8_t>{DGDO_ORDER_NO_DRIVER}));
}

TEST(CoreBatching, PassengerCancelWhileWaitingForTheWindowEndsTheOrder) {
    Harness h(batched());
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    EXPECT_EQ(result_of(h.passenger_cmd("p1", id, DGDO_CMD_CANCEL)), DGDO_RESULT_OK);
    EXPECT_TRUE(of_type(h.tick(2), DGDO_OUT_NEW_ORDER).empty());
    EXPECT_EQ(h.state(id), OrderState::Canceled);
}

TEST(CoreBatching, NoDriverEverGetsTwoOffersFromOneBatch) {
    Harness h(batched());
    for (int i = 0; i < 5; ++i) h.online("d" + std::to_string(i), at(100.0 * i));
    for (int i = 0; i < 12; ++i) h.ride("p" + std::to_string(i), at(37.0 * i, 11.0 * i));
    const auto out = h.tick(2);
    const auto offers = of_type(out, DGDO_OUT_NEW_ORDER);
    EXPECT_EQ(offers.size(), 5u);
    std::set<std::string> drivers;
    for (const auto& o : offers) drivers.insert(id_str(as<dgdo_out_new_order>(o).meta.to_id));
    EXPECT_EQ(drivers.size(), 5u);
}

}  // namespace
}  // namespace dgdo::test
