// Who gets the offer: nearest first, next on reject or timeout, the wider ring, no_driver.
#undef NDEBUG
#include "core_harness.hpp"

namespace dgdo::test {
namespace {

TEST(CoreMatching, NearestAvailableDriverGetsTheOffer) {
    Harness h;
    h.online("far", at(2000));
    h.online("near", at(0, 300));
    h.online("mid", at(-900));
    const auto out = h.ride("p1");
    EXPECT_NE(offered_to(out, "near"), 0u);
    EXPECT_EQ(of_type(out, DGDO_OUT_NEW_ORDER).size(), 1u);
}

TEST(CoreMatching, OfflineOrBusyDriversAreSkipped) {
    Harness h;
    h.online("busy", at(50));
    h.location("off", at(10));  // position only, never online
    h.online("free", at(1000));
    h.order_for("p0");  // busy takes this offer
    const auto out = h.ride("p1");
    EXPECT_NE(offered_to(out, "free"), 0u);
}

TEST(CoreMatching, RejectedOfferGoesToTheNextCandidate) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(800));
    const uint64_t id = h.order_for("p1");
    const auto out = h.driver_cmd("d1", id, DGDO_CMD_REJECT);
    EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
    EXPECT_EQ(offered_to(out, "d2"), id);
    EXPECT_EQ(h.core.find_driver("d1")->offer, 0u);
    EXPECT_TRUE(h.core.find_order(id)->tried.count("d1"));
}

TEST(CoreMatching, DriverThatRejectedIsNeverOfferedTheSameOrderAgain) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    h.driver_cmd("d1", id, DGDO_CMD_REJECT);
    const auto later = h.tick(5);
    EXPECT_EQ(offered_to(later, "d1"), 0u);
    EXPECT_EQ(h.state(id), OrderState::Searching);
}

TEST(CoreMatching, ExpiredOfferIsCanceledAndGoesToTheNextCandidate) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(800));
    const uint64_t id = h.order_for("p1");
    EXPECT_TRUE(of_type(h.tick(14.9), DGDO_OUT_CANCEL_ORDER).empty());
    const auto out = h.tick(0.1);
    const auto cancels = to_whom(out, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(cancels.size(), 1u);
    EXPECT_EQ(as<dgdo_out_cancel_order>(cancels[0]).reason, DGDO_REASON_OFFER_EXPIRED);
    EXPECT_EQ(as<dgdo_out_cancel_order>(cancels[0]).order_id, id);
    EXPECT_EQ(offered_to(out, "d2"), id);
}

TEST(CoreMatching, WideRadiusIsSearchedOnlyWhenTheFirstRingIsEmpty) {
    Harness h;
    h.online("d5km", at(5000));
    h.online("d8km", at(8000));
    const uint64_t id = h.order_for("p1");
    EXPECT_EQ(h.core.find_order(id)->driver, "d5km");
    h.driver_cmd("d5km", id, DGDO_CMD_REJECT);
    EXPECT_EQ(h.state(id), OrderState::Searching);  // 8 km is outside both rings

    Harness h2;
    h2.online("d5km", at(5000));
    h2.online("d2km", at(2000));
    EXPECT_EQ(h2.core.find_order(h2.order_for("p1"))->driver, "d2km");
}

TEST(CoreMatching, RejectInsideTheFirstRingSendsTheOfferToADriverInTheWideRing) {
    Harness h;
    h.online("d1km", at(1000));
    h.online("d5km", at(0, 5000));
    h.online("d8km", at(8000));
    const uint64_t id = h.order_for("p1");
    ASSERT_EQ(h.core.find_order(id)->driver, "d1km");
    const auto out = h.driver_cmd("d1km", id, DGDO_CMD_REJECT);
    const auto offers = of_type(out, DGDO_OUT_NEW_ORDER);
    ASSERT_EQ(offers.size(), 1u);
    const auto n = as<dgdo_out_new_order>(offers[0]);
    EXPECT_EQ(id_str(n.meta.to_id), "d5km");
    EXPECT_EQ(n.order_id, id);
    EXPECT_NEAR(n.distance_m, 5000, 10);
    EXPECT_NEAR(n.eta_s, 5000 * 1.35 / (22 / 3.6) + 30, 2);
}

TEST(CoreMatching, OrderWithNoAcceptanceEndsAsNoDriverAfterTheSearchTimeout) {
    Config cfg;
    cfg.exhausted_wait_s = 1000;  // only the hard cap ends it here
    Harness h(cfg);
    const uint64_t id = h.order_for("p1");
    EXPECT_TRUE(of_type(h.tick(59.9), DGDO_OUT_ORDER_UPDATE).empty());
    const auto out = h.tick(0.1);
    const auto upd = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(upd.size(), 1u);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).status, DGDO_ORDER_NO_DRIVER);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).reason, DGDO_REASON_NO_DRIVER);
    EXPECT_EQ(h.state(id), OrderState::NoDriver);
    // A driver arriving afterwards gets nothing.
    EXPECT_EQ(offered_to(h.online("late", at(10)), "late"), 0u);
}

TEST(CoreMatching, SearchTimeoutWithdrawsAnOutstandingOffer) {
    Config cfg;
    cfg.offer_timeout_s = 100;
    Harness h(cfg);
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    const auto out = h.tick(60);
    EXPECT_EQ(to_whom(out, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d1").size(), 1u);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{DGDO_ORDER_NO_DRIVER});
    EXPECT_EQ(h.state(id), OrderState::NoDriver);
    EXPECT_EQ(h.core.find_driver("d1")->offer, 0u);
}

// protocol.md: "Answer within expires_in_s seconds, or it is withdrawn". The search timeout
// still caps the order (no_driver never later than search_timeout_s), so an offer made near it
// must say the time it really has, and be withdrawn then, not 15 s after a countdown that lied.
TEST(CoreMatching, AnOfferMadeNearTheSearchDeadlineSaysTheTimeItReallyHas) {
    Config cfg;
    cfg.exhausted_wait_s = 1000;  // only the hard cap ends it here
    Harness h(cfg);
    const uint64_t id = h.order_for("p1");
    h.tick(50);
    const auto out = h.online("d1", at(100));
    const auto offers = to_whom(out, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(offers.size(), 1u);
    EXPECT_NEAR(as<dgdo_out_new_order>(offers[0]).expires_in_s, 10.0, 1e-6);
    EXPECT_EQ(h.core.find_order(id)->offer_deadline_ns, h.core.find_order(id)->search_deadline_ns);
    // A reconnect's snapshot says the same time left.
    h.tick(4);
    const auto snap = to_whom(h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 9), DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(snap.size(), 1u);
    EXPECT_NEAR(as<dgdo_out_new_order>(snap[0]).expires_in_s, 6.0, 1e-6);
    // Withdrawn when the driver was told, as offer_expired, and the passenger hears no_driver.
    EXPECT_TRUE(of_type(h.tick(5.9), DGDO_OUT_CANCEL_ORDER).empty());
    const auto end = h.tick(0.1);
    const auto c = to_whom(end, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(as<dgdo_out_cancel_order>(c[0]).reason, DGDO_REASON_OFFER_EXPIRED);
    EXPECT_EQ(statuses_to(end, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{DGDO_ORDER_NO_DRIVER});
    // An offer made early in the search keeps the full offer_timeout_s.
    const auto full = to_whom(h.ride("p2"), DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(full.size(), 1u);
    EXPECT_NEAR(as<dgdo_out_new_order>(full[0]).expires_in_s, cfg.offer_timeout_s, 1e-6);
}

TEST(CoreMatching, SearchingOrderIsOfferedWhenADriverComesOnline) {
    Harness h;
    const uint64_t id = h.order_for("p1");
    const auto out = h.online("d1", at(300));
    EXPECT_EQ(offered_to(out, "d1"), id);
}

TEST(CoreMatching, SearchingOrderIsRetriedWithinAboutASecondWhenADriverMovesIntoRange) {
    Harness h;
    h.online("d1", at(9000));
    const uint64_t id = h.order_for("p1");
    EXPECT_EQ(h.state(id), OrderState::Searching);
    h.location("d1", at(1000));
    std::vector<OutRecord> out;
    for (int i = 0; i < 13 && out.empty(); ++i) out = of_type(h.tick(0.1), DGDO_OUT_NEW_ORDER);
    EXPECT_EQ(offered_to(out, "d1"), id);
}

TEST(CoreMatching, DriverHoldsAtMostOneOffer) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t a = h.order_for("p1");
    const uint64_t b = h.order_for("p2");
    EXPECT_EQ(h.core.find_driver("d1")->offer, a);
    EXPECT_EQ(h.state(b), OrderState::Searching);
    const auto out = h.driver_cmd("d1", a, DGDO_CMD_REJECT);
    EXPECT_EQ(offered_to(out, "d1"), b);  // free again: the waiting order comes next
}

TEST(CoreMatching, OnlyTheOfferedDriverCanAcceptAndASecondAcceptIsConflict) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(150));
    const uint64_t id = h.order_for("p1");
    EXPECT_EQ(result_of(h.driver_cmd("d2", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_FORBIDDEN);
    EXPECT_EQ(result_of(h.driver_cmd("d1", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_OK);
    const auto again = h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    EXPECT_EQ(result_of(again), DGDO_RESULT_CONFLICT);
    EXPECT_EQ(again.size(), 1u);
    EXPECT_EQ(h.core.find_order(id)->driver, "d1");
    EXPECT_EQ(h.core.find_driver("d2")->trip, 0u);
    EXPECT_EQ(h.core.stats().orders_matched, 1u);
}

TEST(CoreMatching, DriverGoingOfflineLosesItsOfferToTheNextCandidate) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(500));
    const uint64_t id = h.order_for("p1");
    const auto out = h.status("d1", DGDO_DRIVER_OFFLINE);
    const auto c = to_whom(out, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(as<dgdo_out_cancel_order>(c[0]).reason, DGDO_REASON_DRIVER_OFFLINE);
    EXPECT_EQ(offered_to(out, "d2"), id);
}

TEST(CoreMatching, EqualDistancesResolveByDriverId) {
    Harness h;
    h.online("b", at(500));
    h.online("a", at(500));
    EXPECT_EQ(h.core.find_order(h.order_for("p1"))->driver, "a");
}

}  // namespace
}  // namespace dgdo::test
