// An order from request to completion, and the replies every command gets.
#undef NDEBUG
#include "core_harness.hpp"

namespace dgdo::test {
namespace {

TEST(CoreLifecycle, OrderGoesFromRequestToCompletionWithUpdatesToBothSides) {
    Harness h;
    h.online("d1", at(500));
    auto out = h.ride("p1");
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(out[0].type, DGDO_OUT_COMMAND_RESULT);
    const uint64_t id = as<dgdo_out_command_result>(out[0]).order_id;
    EXPECT_EQ(id, 1001u);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{DGDO_ORDER_SEARCHING});
    ASSERT_EQ(offered_to(out, "d1"), id);
    const auto offer = as<dgdo_out_new_order>(to_whom(out, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1")[0]);
    EXPECT_NEAR(offer.distance_m, 500, 2);
    EXPECT_NEAR(offer.eta_s, 500 * 1.35 / (22 / 3.6) + 30, 1);
    EXPECT_EQ(offer.expires_in_s, 15);
    EXPECT_EQ(id_str(offer.passenger_id), "p1");

    out = h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{DGDO_ORDER_ACCEPTED});
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_DRIVER, "d1"), std::vector<uint8_t>{DGDO_ORDER_ACCEPTED});
    EXPECT_EQ(id_str(as<dgdo_out_order_update>(out[1]).driver_id), "d1");

    const std::pair<uint8_t, uint8_t> steps[] = {{DGDO_CMD_ARRIVED, DGDO_ORDER_ARRIVED},
                                                 {DGDO_CMD_START, DGDO_ORDER_STARTED},
                                                 {DGDO_CMD_COMPLETE, DGDO_ORDER_COMPLETED}};
    for (auto [cmd, status] : steps) {
        out = h.driver_cmd("d1", id, cmd);
        EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
        EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{status});
        EXPECT_EQ(statuses_to(out, DGDO_ROLE_DRIVER, "d1"), std::vector<uint8_t>{status});
    }
    EXPECT_EQ(h.state(id), OrderState::Completed);
    const Driver* d = h.core.find_driver("d1");
    EXPECT_EQ(d->trip, 0u);
    EXPECT_EQ(d->offer, 0u);
    const CoreStats s = h.core.stats();
    EXPECT_EQ(s.orders_created, 1u);
    EXPECT_EQ(s.orders_matched, 1u);
    EXPECT_EQ(s.orders_completed, 1u);
    EXPECT_EQ(s.drivers_available, 1u);
}

TEST(CoreLifecycle, CompletedDriverIsOfferedTheNextWaitingOrder) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t a = h.order_for("p1");
    const uint64_t b = h.order_for("p2");  // waits: d1 holds an offer
    EXPECT_EQ(h.state(b), OrderState::Searching);
    h.driver_cmd("d1", a, DGDO_CMD_ACCEPT);
    h.driver_cmd("d1", a, DGDO_CMD_ARRIVED);
    h.driver_cmd("d1", a, DGDO_CMD_START);
    const auto out = h.driver_cmd("d1", a, DGDO_CMD_COMPLETE);
    EXPECT_EQ(offered_to(out, "d1"), b);
}

TEST(CoreLifecycle, CommandResultComesFirstAndEchoesCorrAndConnection) {
    Harness h;
    h.online("d1", at(100));
    dgdo_in_ride_request e;
    std::memset(&e, 0, sizeof e);
    e.meta = h.meta(DGDO_ROLE_PASSENGER, "p1", 3, 99);
    e.meta.corr = 4242;
    e.pickup = kCenter;
    e.dropoff = at(1000);
    const auto out = h.step(e);
    ASSERT_GE(out.size(), 3u);
    const auto r = as<dgdo_out_command_result>(out[0]);
    EXPECT_EQ(out[0].type, DGDO_OUT_COMMAND_RESULT);
    EXPECT_EQ(r.corr, 4242u);
    EXPECT_EQ(r.meta.to_conn, 99u);
    EXPECT_EQ(r.meta.to_worker, 3u);
    EXPECT_EQ(r.meta.commit_mono_ns, 0u);  // the loop stamps commit times
    EXPECT_EQ(of_type(out, DGDO_OUT_COMMAND_RESULT).size(), 1u);
}

TEST(CoreLifecycle, CommandWithoutCorrGetsNoResult) {
    Harness h;
    dgdo_in_driver_status e;
    std::memset(&e, 0, sizeof e);
    e.meta = h.meta(DGDO_ROLE_DRIVER, "d1");
    e.meta.corr = 0;
    e.status = DGDO_DRIVER_ONLINE;
    EXPECT_TRUE(h.step(e).empty());
    EXPECT_TRUE(h.core.find_driver("d1")->online);
}

TEST(CoreLifecycle, UnknownOrderIsNotFound) {
    Harness h;
    const auto out = h.driver_cmd("d1", 777, DGDO_CMD_ACCEPT);
    EXPECT_EQ(result_of(out), DGDO_RESULT_NOT_FOUND);
    EXPECT_EQ(as<dgdo_out_command_result>(out[0]).order_id, 777u);
    EXPECT_EQ(out.size(), 1u);
}

TEST(CoreLifecycle, AnotherPassengersCancelIsForbiddenAndChangesNothing) {
    Harness h;
    const uint64_t id = h.order_for("p1");
    const auto out = h.passenger_cmd("p2", id, DGDO_CMD_CANCEL);
    EXPECT_EQ(result_of(out), DGDO_RESULT_FORBIDDEN);
    EXPECT_EQ(out.size(), 1u);
    EXPECT_EQ(h.state(id), OrderState::Searching);
}

TEST(CoreLifecycle, DriverWhoWasNeverOfferedTheOrderIsForbidden) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(200));
    const uint64_t id = h.order_for("p1");
    ASSERT_EQ(h.core.find_order(id)->driver, "d1");
    for (uint8_t cmd = DGDO_CMD_ACCEPT; cmd <= DGDO_CMD_CANCEL; ++cmd) {
        const auto out = h.driver_cmd("d2", id, cmd);
        EXPECT_EQ(result_of(out), DGDO_RESULT_FORBIDDEN) << int(cmd);
        EXPECT_EQ(out.size(), 1u);
    }
    EXPECT_EQ(h.state(id), OrderState::Offered);
    EXPECT_EQ(h.core.find_driver("d2")->trip, 0u);
}

TEST(CoreLifecycle, PassengerCannotDriveTheOrder) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    EXPECT_EQ(result_of(h.passenger_cmd("p1", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_CONFLICT);
    EXPECT_EQ(h.state(id), OrderState::Offered);
}

TEST(CoreLifecycle, RideRequestFromADriverIsForbidden) {
    Harness h;
    dgdo_in_ride_request e;
    std::memset(&e, 0, sizeof e);
    e.meta = h.meta(DGDO_ROLE_DRIVER, "d1");
    e.pickup = kCenter;
    e.dropoff = kCenter;
    const auto out = h.step(e);
    EXPECT_EQ(result_of(out), DGDO_RESULT_FORBIDDEN);
    EXPECT_EQ(h.core.stats().orders_created, 0u);
}

TEST(CoreLifecycle, OutOfRangeCoordinatesAreABadMessage) {
    Harness h;
    EXPECT_EQ(result_of(h.ride("p1", dgdo_point{91, 0})), DGDO_RESULT_BAD_MESSAGE);
    EXPECT_EQ(result_of(h.location("d1", dgdo_point{0, 181})), DGDO_RESULT_BAD_MESSAGE);
    EXPECT_EQ(h.core.stats().orders_created, 0u);
}

TEST(CoreLifecycle, RepeatedRideRequestWithTheSameKeyReturnsTheSameOrder) {
    Harness h;
    h.online("d1", at(100));
    const auto first = h.ride("p1", kCenter, 555);
    const uint64_t id = as<dgdo_out_command_result>(first[0]).order_id;
    const auto again = h.ride("p1", kCenter, 555);
    ASSERT_EQ(again.size(), 1u);  // only the result: no new order, no new offer
    EXPECT_EQ(as<dgdo_out_command_result>(again[0]).order_id, id);
    EXPECT_EQ(h.core.stats().orders_created, 1u);
    // Another passenger's identical key is a different request.
    const auto other = h.ride("p2", kCenter, 555);
    EXPECT_NE(as<dgdo_out_command_result>(other[0]).order_id, id);
}

TEST(CoreLifecycle, RecordsAreAddressedToTheRecipientsWorker) {
    Harness h;
    h.session(true, DGDO_ROLE_PASSENGER, "p1", 2, 11);
    h.session(true, DGDO_ROLE_DRIVER, "d1", 5, 12);
    h.online("d1", at(100));
    const auto out = h.ride("p1");
    const auto upd = as<dgdo_out_order_update>(of_type(out, DGDO_OUT_ORDER_UPDATE).at(0));
    EXPECT_EQ(upd.meta.to_worker, 2u);
    EXPECT_EQ(upd.meta.to_role, DGDO_ROLE_PASSENGER);
    const auto offer = as<dgdo_out_new_order>(of_type(out, DGDO_OUT_NEW_ORDER).at(0));
    EXPECT_EQ(offer.meta.to_worker, 5u);
    EXPECT_EQ(offer.meta.to_conn, 0u);  // routed by role + id
}

TEST(CoreLifecycle, WithoutASessionRecordsGoToTheWorkerTheActorLastSpokeThrough) {
    Harness h;
    dgdo_in_ride_request e;
    std::memset(&e, 0, sizeof e);
    e.meta = h.meta(DGDO_ROLE_PASSENGER, "p1", 4, 1);
    e.pickup = kCenter;
    e.dropoff = at(1000);
    const auto out = h.step(e);
    EXPECT_EQ(as<dgdo_out_order_update>(of_type(out, DGDO_OUT_ORDER_UPDATE).at(0)).meta.to_worker, 4u);
}

TEST(CoreLifecycle, InboundRecordOfTheWrongLengthIsNotDecoded) {
    dgdo_in_driver_status s;
    std::memset(&s, 0, sizeof s);
    const auto* p = reinterpret_cast<const uint8_t*>(&s);
    EXPECT_TRUE(decode_inbound(DGDO_IN_DRIVER_STATUS, p, sizeof s).has_value());
    EXPECT_FALSE(decode_inbound(DGDO_IN_DRIVER_STATUS, p, sizeof s - 1).has_value());
    EXPECT_FALSE(decode_inbound(999, p, sizeof s).has_value());
}

}  // namespace
}  // namespace dgdo::test
