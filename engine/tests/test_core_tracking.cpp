// Live positions and ETAs to the passenger, nearby snapshots, admin stats.
#undef NDEBUG
#include "core_harness.hpp"

namespace dgdo::test {
namespace {

TEST(CoreTracking, DriverPositionsReachThePassengerOnlyFromAcceptToCompletion) {
    Harness h;
    h.online("d1", at(1000));
    const uint64_t id = h.order_for("p1");
    EXPECT_TRUE(of_type(h.location("d1", at(900)), DGDO_OUT_DRIVER_POSITION).empty());  // offered only

    h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    auto out = h.location("d1", at(800));
    const auto pos = to_whom(out, DGDO_OUT_DRIVER_POSITION, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(pos.size(), 1u);
    EXPECT_EQ(as<dgdo_out_driver_position>(pos[0]).order_id, id);
    EXPECT_EQ(id_str(as<dgdo_out_driver_position>(pos[0]).driver_id), "d1");
    EXPECT_DOUBLE_EQ(as<dgdo_out_driver_position>(pos[0]).pos.lat, at(800).lat);

    h.driver_cmd("d1", id, DGDO_CMD_ARRIVED);
    EXPECT_EQ(of_type(h.location("d1", at(0)), DGDO_OUT_DRIVER_POSITION).size(), 1u);
    h.driver_cmd("d1", id, DGDO_CMD_START);
    EXPECT_EQ(of_type(h.location("d1", at(100)), DGDO_OUT_DRIVER_POSITION).size(), 1u);
    h.driver_cmd("d1", id, DGDO_CMD_COMPLETE);
    EXPECT_TRUE(of_type(h.location("d1", at(200)), DGDO_OUT_DRIVER_POSITION).empty());
}

TEST(CoreTracking, EstimateUpdatesAreThrottledToOnePerThreeSeconds) {
    Harness h;
    h.online("d1", at(2000));
    const uint64_t id = h.order_for("p1");
    h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    auto out = h.location("d1", at(1500));
    auto est = of_type(out, DGDO_OUT_ESTIMATE_UPDATE);
    ASSERT_EQ(est.size(), 1u);
    const auto e = as<dgdo_out_estimate_update>(est[0]);
    EXPECT_NEAR(e.distance_m, 1500, 3);
    EXPECT_NEAR(e.eta_s, 1500 * 1.35 / (22 / 3.6) + 30, 1);  // to the pickup
    h.tick(1);
    EXPECT_TRUE(of_type(h.location("d1", at(1400)), DGDO_OUT_ESTIMATE_UPDATE).empty());
    h.tick(2);
    EXPECT_EQ(of_type(h.location("d1", at(1300)), DGDO_OUT_ESTIMATE_UPDATE).size(), 1u);
}

TEST(CoreTracking, EstimateAfterTheStartIsToTheDropoff) {
    Harness h;
    h.online("d1", at(100));
    const dgdo_point dropoff = at(3000);
    const auto r = h.ride("p1", kCenter, 0, dropoff);
    const uint64_t id = as<dgdo_out_command_result>(r[0]).order_id;
    h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    h.driver_cmd("d1", id, DGDO_CMD_ARRIVED);
    h.driver_cmd("d1", id, DGDO_CMD_START);
    const auto est = of_type(h.location("d1", at(1000)), DGDO_OUT_ESTIMATE_UPDATE);
    ASSERT_EQ(est.size(), 1u);
    EXPECT_NEAR(as<dgdo_out_estimate_update>(est[0]).distance_m, 2000, 5);
    EXPECT_NEAR(as<dgdo_out_estimate_update>(est[0]).eta_s, 2000 * 1.35 / (22 / 3.6), 1);
}

TEST(CoreTracking, FirstPositionAfterTheStartBringsTheDropoffEstimateDespiteTheThrottle) {
    Harness h;
    h.online("d1", at(2000));
    const auto r = h.ride("p1", kCenter, 0, at(3000));
    const uint64_t id = as<dgdo_out_command_result>(r[0]).order_id;
    h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    ASSERT_EQ(of_type(h.location("d1", at(100)), DGDO_OUT_ESTIMATE_UPDATE).size(), 1u);  // to the pickup
    h.tick(1);
    h.driver_cmd("d1", id, DGDO_CMD_ARRIVED);
    h.driver_cmd("d1", id, DGDO_CMD_START);
    const auto est = of_type(h.location("d1", at(1000)), DGDO_OUT_ESTIMATE_UPDATE);  // 1 s after the last one
    ASSERT_EQ(est.size(), 1u);
    EXPECT_NEAR(as<dgdo_out_estimate_update>(est[0]).distance_m, 2000, 5);  // to the dropoff, not the pickup
    EXPECT_NEAR(as<dgdo_out_estimate_update>(est[0]).eta_s, 2000 * 1.35 / (22 / 3.6), 1);
    h.tick(1);
    EXPECT_TRUE(of_type(h.location("d1", at(1100)), DGDO_OUT_ESTIMATE_UPDATE).empty());  // throttled again
}

TEST(CoreTracking, NearbyListsOnlyDriversFreeToTakeARide) {
    Harness h;
    h.session(true, DGDO_ROLE_DRIVER, "gone", 1, 9);
    h.online("free", at(300));
    h.online("offered", at(100));
    h.online("ontrip", at(200));
    h.online("gone", at(250));
    const uint64_t a = h.order_for("pA");  // "offered" takes it
    const uint64_t b = h.order_for("pB");  // then "ontrip"
    h.driver_cmd("ontrip", b, DGDO_CMD_ACCEPT);
    h.session(false, DGDO_ROLE_DRIVER, "gone", 1, 9);  // within its grace, but not offerable
    ASSERT_EQ(h.core.find_order(a)->driver, "offered");
    auto list = [&h](const std::vector<OutRecord>& out) {
        std::vector<std::string> ids;
        const auto snaps = to_whom(out, DGDO_OUT_NEARBY_DRIVERS, DGDO_ROLE_PASSENGER, "p1");
        if (snaps.empty()) return ids;
        const auto n = as<dgdo_out_nearby_drivers>(snaps.back());
        for (uint32_t i = 0; i < n.count; ++i) ids.push_back(id_str(n.drivers[i].driver_id));
        return ids;
    };
    EXPECT_EQ(list(h.nearby("p1", kCenter, 2000)), std::vector<std::string>{"free"});
    h.passenger_cmd("pA", a, DGDO_CMD_CANCEL);  // "offered" is free again
    EXPECT_EQ(list(h.tick(1)), (std::vector<std::string>{"offered", "free"}));
}

TEST(CoreTracking, NearbySubscriberGetsOnlineDriversNearestFirstAboutOnceASecond) {
    Harness h;
    h.online("far", at(1500));
    h.online("near", at(200));
    h.online("out", at(4000));
    h.location("offline", at(100));
    auto out = h.nearby("p1", kCenter, 2000);
    EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
    auto snaps = of_type(out, DGDO_OUT_NEARBY_DRIVERS);
    ASSERT_EQ(snaps.size(), 1u);
    EXPECT_EQ(snaps[0].body.size(), 72u + 2 * 56u);  // only `count` entries travel
    const auto n = as<dgdo_out_nearby_drivers>(snaps[0]);
    ASSERT_EQ(n.count, 2u);
    EXPECT_EQ(id_str(n.drivers[0].driver_id), "near");
    EXPECT_EQ(id_str(n.drivers[1].driver_id), "far");

    EXPECT_TRUE(of_type(h.tick(0.5), DGDO_OUT_NEARBY_DRIVERS).empty());
    EXPECT_EQ(of_type(h.tick(0.5), DGDO_OUT_NEARBY_DRIVERS).size(), 1u);
    h.nearby("p1", kCenter, 0, false);
    EXPECT_TRUE(of_type(h.tick(1), DGDO_OUT_NEARBY_DRIVERS).empty());
}

// A subscription is the connection's, not the app id's: it ends with the connection, whether that
// closes or a newer one of the same passenger replaces it (which asked for nothing, and may be
// another device). Otherwise the new one gets nearby_drivers it never subscribed to.
TEST(CoreTracking, ANewerConnectionOfTheSamePassengerDoesNotInheritTheNearbySubscription) {
    Harness h;
    h.online("near", at(200));
    h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 5);
    h.nearby("p1", kCenter, 2000);
    EXPECT_EQ(of_type(h.tick(1), DGDO_OUT_NEARBY_DRIVERS).size(), 1u);
    h.session(true, DGDO_ROLE_PASSENGER, "p1", 2, 6);  // replaces conn 5 (on another worker, as it happens)
    EXPECT_TRUE(of_type(h.tick(1), DGDO_OUT_NEARBY_DRIVERS).empty());
    EXPECT_TRUE(of_type(h.tick(1), DGDO_OUT_NEARBY_DRIVERS).empty());
}

TEST(CoreTracking, NearbyRadiusAboveTheLimitIsABadMessage) {
    Harness h;
    EXPECT_EQ(result_of(h.nearby("p1", kCenter, 5001)), DGDO_RESULT_BAD_MESSAGE);
    EXPECT_TRUE(of_type(h.tick(1), DGDO_OUT_NEARBY_DRIVERS).empty());
}

TEST(CoreTracking, NearbySnapshotHoldsAtMostTheMaximumEntries) {
    Harness h;
    for (int i = 0; i < 40; ++i) h.online("d" + std::to_string(100 + i), at(10.0 * i));
    const auto n = as<dgdo_out_nearby_drivers>(of_type(h.nearby("p1", kCenter, 5000), DGDO_OUT_NEARBY_DRIVERS).at(0));
    EXPECT_EQ(n.count, static_cast<uint32_t>(DGDO_NEARBY_MAX));
    EXPECT_EQ(id_str(n.drivers[0].driver_id), "d100");
}

TEST(CoreTracking, EngineStatsGoToAdminsOnceASecond) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(100));
    h.order_for("p1");
    EXPECT_TRUE(of_type(h.tick(0.9), DGDO_OUT_ENGINE_STATS).empty());
    const auto stats = of_type(h.tick(0.1), DGDO_OUT_ENGINE_STATS);
    ASSERT_EQ(stats.size(), 1u);
    const auto s = as<dgdo_out_engine_stats>(stats[0]);
    EXPECT_EQ(s.meta.to_role, DGDO_ROLE_ADMIN);
    EXPECT_EQ(s.meta.to_worker, 0u);
    EXPECT_EQ(s.drivers_online, 2u);
    EXPECT_EQ(s.drivers_available, 1u);
    EXPECT_EQ(s.active_orders, 1u);
    EXPECT_EQ(s.orders_created, 1u);
}

}  // namespace
}  // namespace dgdo::test
