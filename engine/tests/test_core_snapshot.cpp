// An app that cannot resume (first connect, or its missed messages are no longer held) gets the
// state of what it is part of, as fresh reliable messages after its SESSION_STATE.
#undef NDEBUG
#include "core_harness.hpp"

namespace dgdo::test {
namespace {

TEST(CoreSnapshot, PassengerGetsItsLiveOrdersAndNothingFinished) {
    Harness h;
    h.online("d1", at(300));
    const uint64_t done = h.order_for("p1");
    h.driver_cmd("d1", done, DGDO_CMD_ACCEPT);
    h.driver_cmd("d1", done, DGDO_CMD_ARRIVED);
    h.driver_cmd("d1", done, DGDO_CMD_START);
    h.driver_cmd("d1", done, DGDO_CMD_COMPLETE);
    const uint64_t live = h.order_for("p1");
    h.driver_cmd("d1", live, DGDO_CMD_ACCEPT);

    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7);  // no last_seq: a first connect
    EXPECT_EQ(session_state(out).resumed, 0);
    const auto updates = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(updates.size(), 1u);
    const auto u = as<dgdo_out_order_update>(updates[0]);
    EXPECT_EQ(u.order_id, live);
    EXPECT_EQ(u.status, DGDO_ORDER_ACCEPTED);
    EXPECT_EQ(id_str(u.driver_id), "d1");
    EXPECT_EQ(u.meta.to_conn, 7u);  // to the opening connection
}

TEST(CoreSnapshot, DriverGetsItsTripAndItsOpenOfferWithTheTimeLeft) {
    Harness h;
    h.online("d1", at(300));
    const uint64_t id = h.order_for("p1");
    h.tick(5);
    auto out = h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 8);
    const auto offers = to_whom(out, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(offers.size(), 1u);
    const auto n = as<dgdo_out_new_order>(offers[0]);
    EXPECT_EQ(n.order_id, id);
    EXPECT_NEAR(n.expires_in_s, 10, 0.2);
    EXPECT_NEAR(n.distance_m, 300, 2);

    h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    out = h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 9);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_DRIVER, "d1"), std::vector<uint8_t>{DGDO_ORDER_ACCEPTED});
    EXPECT_TRUE(to_whom(out, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1").empty());
}

TEST(CoreSnapshot, AnOpenAtTheLatestSeqIsResumedWithNothingMore) {
    Harness h;
    h.online("d1", at(300));
    h.order_for("p1");
    const uint64_t p_latest = h.core.deliveries().latest({DGDO_ROLE_PASSENGER, "p1"});
    const uint64_t d_latest = h.core.deliveries().latest({DGDO_ROLE_DRIVER, "d1"});
    ASSERT_EQ(p_latest, 1u);  // searching
    ASSERT_EQ(d_latest, 1u);  // the offer
    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, p_latest);
    EXPECT_EQ(session_state(out).resumed, 1);
    EXPECT_EQ(session_state(out).seq, p_latest);
    EXPECT_TRUE(of_type(out, DGDO_OUT_ORDER_UPDATE).empty());
    out = h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 8, d_latest);
    EXPECT_EQ(session_state(out).resumed, 1);
    EXPECT_TRUE(of_type(out, DGDO_OUT_NEW_ORDER).empty());
}

// A driver that reconnects within its grace and resumes gets the offer it missed replayed, with
// its seq; what that replay says about the time left must be true now, as a snapshot's would be
// (else the app counts down 15 s from the reconnect and the offer vanishes under its finger).
TEST(CoreSnapshot, AReplayedOfferSaysTheTimeLeftNotTheTimeItWasMadeWith) {
    Harness h;
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 7);
    h.online("d1", at(300));
    const uint64_t id = h.order_for("p1");  // new_order, seq 1, 15 s
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 7);  // lost before it read the offer
    h.tick(6);
    auto out = h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 8, 0);
    ASSERT_EQ(session_state(out).resumed, 1);
    const auto offers = to_whom(out, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(offers.size(), 1u);
    const auto n = as<dgdo_out_new_order>(offers[0]);
    EXPECT_EQ(n.order_id, id);
    EXPECT_EQ(n.seq, 1u);  // the original number
    EXPECT_NEAR(n.expires_in_s, 9, 0.01);
    EXPECT_EQ(result_of(h.driver_cmd("d1", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_OK);
}

}  // namespace
}  // namespace dgdo::test
