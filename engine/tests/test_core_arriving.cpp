// ARRIVING: the first position after an accept; cancellations from it.
#undef NDEBUG
#include "core_harness.hpp"

namespace dgdo::test {
namespace {

struct Accepted {
    Harness h;
    uint64_t id = 0;
    Accepted() {
        h.online("d1", at(500));
        id = h.order_for("p1");
        EXPECT_EQ(result_of(h.driver_cmd("d1", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_OK);
    }
};

TEST(CoreArriving, FirstPositionAfterAcceptTellsBothSidesArrivingBeforeThePosition) {
    Accepted a;
    const auto out = a.h.location("d1", at(400));
    EXPECT_EQ(a.h.state(a.id), OrderState::Arriving);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), (std::vector<uint8_t>{DGDO_ORDER_ARRIVING}));
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_DRIVER, "d1"), (std::vector<uint8_t>{DGDO_ORDER_ARRIVING}));
    size_t update_at = 0, position_at = 0;
    for (size_t i = 0; i < out.size(); ++i) {
        if (out[i].type == DGDO_OUT_ORDER_UPDATE) update_at = i;
        if (out[i].type == DGDO_OUT_DRIVER_POSITION) position_at = i;
    }
    EXPECT_LT(update_at, position_at);
    const auto est = to_whom(out, DGDO_OUT_ESTIMATE_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(est.size(), 1u);
    EXPECT_NEAR(as<dgdo_out_estimate_update>(est[0]).distance_m, 400, 2);
    // Later positions do not repeat the status.
    EXPECT_TRUE(statuses_to(a.h.location("d1", at(300)), DGDO_ROLE_PASSENGER, "p1").empty());
}

TEST(CoreArriving, ArrivedIsAcceptedFromArrivingAndStraightFromAccepted) {
    Accepted a;
    a.h.location("d1", at(10));
    EXPECT_EQ(result_of(a.h.driver_cmd("d1", a.id, DGDO_CMD_ARRIVED)), DGDO_RESULT_OK);
    EXPECT_EQ(a.h.state(a.id), OrderState::Arrived);
    Accepted b;
    EXPECT_EQ(result_of(b.h.driver_cmd("d1", b.id, DGDO_CMD_ARRIVED)), DGDO_RESULT_OK);
    EXPECT_EQ(b.h.state(b.id), OrderState::Arrived);
}

TEST(CoreArriving, PassengerCancelWhileArrivingFreesTheDriverAndTellsIt) {
    Accepted a;
    a.h.location("d1", at(400));
    const auto out = a.h.passenger_cmd("p1", a.id, DGDO_CMD_CANCEL);
    EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
    EXPECT_EQ(a.h.state(a.id), OrderState::Canceled);
    const auto cancels = to_whom(out, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(cancels.size(), 1u);
    EXPECT_EQ(as<dgdo_out_cancel_order>(cancels[0]).reason, DGDO_REASON_PASSENGER_CANCELED);
    EXPECT_EQ(a.h.core.find_driver("d1")->trip, 0u);
    EXPECT_TRUE(to_whom(a.h.location("d1", at(300)), DGDO_OUT_DRIVER_POSITION, DGDO_ROLE_PASSENGER, "p1").empty());
}

TEST(CoreArriving, DriverCancelWhileArrivingSendsTheOrderToTheNextDriver) {
    Accepted a;
    a.h.online("d2", at(900));
    a.h.location("d1", at(400));
    const auto out = a.h.driver_cmd("d1", a.id, DGDO_CMD_CANCEL);
    EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), (std::vector<uint8_t>{DGDO_ORDER_SEARCHING}));
    EXPECT_EQ(offered_to(out, "d2"), a.id);
    EXPECT_EQ(a.h.state(a.id), OrderState::Offered);
}

TEST(CoreArriving, RacingAcceptsOnlyTheHolderOfTheOfferWins) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(200));
    const uint64_t id = h.order_for("p1");
    h.driver_cmd("d1", id, DGDO_CMD_REJECT);  // d2 holds the offer now
    ASSERT_EQ(h.core.find_order(id)->driver, "d2");
    // Both accepts arrive in the same batch: the former driver's and the holder's.
    EXPECT_EQ(result_of(h.driver_cmd("d1", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_CONFLICT);
    EXPECT_EQ(result_of(h.driver_cmd("d2", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_OK);
    EXPECT_EQ(result_of(h.driver_cmd("d2", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_CONFLICT);
    EXPECT_EQ(h.core.find_driver("d2")->trip, id);
    EXPECT_EQ(h.core.find_driver("d1")->trip, 0u);
    EXPECT_EQ(h.core.find_driver("d1")->offer, 0u);
}

TEST(CoreArriving, AcceptAfterTheExpiryTickIsConflictAndTheOrderMovesOn) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    h.tick(15);  // the offer expired in this tick; nobody else is near
    EXPECT_EQ(result_of(h.driver_cmd("d1", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_CONFLICT);
    EXPECT_EQ(h.state(id), OrderState::Searching);
}

}  // namespace
}  // namespace dgdo::test
