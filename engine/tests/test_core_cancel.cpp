// Passenger, driver and operator (admin) cancels, and what a disconnecting driver does to its offer.
#undef NDEBUG
#include "core_harness.hpp"

namespace dgdo::test {
namespace {

TEST(CoreCancel, PassengerCancelWhileSearchingEndsTheOrder) {
    Harness h;
    const uint64_t id = h.order_for("p1");
    const auto out = h.passenger_cmd("p1", id, DGDO_CMD_CANCEL);
    EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
    const auto upd = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(upd.size(), 1u);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).status, DGDO_ORDER_CANCELED);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).reason, DGDO_REASON_PASSENGER_CANCELED);
    EXPECT_EQ(h.state(id), OrderState::Canceled);
    EXPECT_TRUE(of_type(h.tick(61), DGDO_OUT_ORDER_UPDATE).empty());  // no no_driver later
}

TEST(CoreCancel, PassengerCancelWhileOfferedWithdrawsTheOffer) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    const auto out = h.passenger_cmd("p1", id, DGDO_CMD_CANCEL);
    const auto c = to_whom(out, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(as<dgdo_out_cancel_order>(c[0]).reason, DGDO_REASON_PASSENGER_CANCELED);
    EXPECT_TRUE(to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_DRIVER, "d1").empty());
    EXPECT_EQ(h.core.find_driver("d1")->offer, 0u);
    EXPECT_TRUE(of_type(h.tick(15), DGDO_OUT_CANCEL_ORDER).empty());  // the offer timer is gone too
}

// protocol.md: order_update carries `driver_id` "once assigned". A driver that only holds an offer
// (the passenger still reads "searching") is nobody the passenger should hear of: not in the
// snapshot of a reconnect while the offer is out, not in the canceled update that withdraws it
// (nor in that final record sent again later).
TEST(CoreCancel, APassengerNeverHearsTheIdOfADriverThatOnlyHeldAnOffer) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    ASSERT_EQ(h.state(id), OrderState::Offered);

    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7);  // a first connect: the snapshot
    auto upd = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(upd.size(), 1u);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).status, DGDO_ORDER_SEARCHING);
    EXPECT_EQ(id_str(as<dgdo_out_order_update>(upd[0]).driver_id), "");

    out = h.passenger_cmd("p1", id, DGDO_CMD_CANCEL);
    upd = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(upd.size(), 1u);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).status, DGDO_ORDER_CANCELED);
    EXPECT_EQ(id_str(as<dgdo_out_order_update>(upd[0]).driver_id), "");

    out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 8, 0);  // nothing held from 0 on? the ended record again
    for (const auto& r : to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1"))
        EXPECT_EQ(id_str(as<dgdo_out_order_update>(r).driver_id), "");

    // Once a driver accepted, the passenger is told who, to the end.
    const uint64_t next = h.order_for("p1");
    out = h.driver_cmd("d1", next, DGDO_CMD_ACCEPT);
    upd = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(upd.size(), 1u);
    EXPECT_EQ(id_str(as<dgdo_out_order_update>(upd[0]).driver_id), "d1");
    out = h.passenger_cmd("p1", next, DGDO_CMD_CANCEL);
    upd = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(upd.size(), 1u);
    EXPECT_EQ(id_str(as<dgdo_out_order_update>(upd[0]).driver_id), "d1");
}

TEST(CoreCancel, PassengerCancelAfterAcceptFreesTheDriver) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    const auto out = h.passenger_cmd("p1", id, DGDO_CMD_CANCEL);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{DGDO_ORDER_CANCELED});
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_DRIVER, "d1"), std::vector<uint8_t>{DGDO_ORDER_CANCELED});
    EXPECT_EQ(to_whom(out, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d1").size(), 1u);
    EXPECT_EQ(h.core.find_driver("d1")->trip, 0u);
    const uint64_t next = h.order_for("p2");
    EXPECT_EQ(h.core.find_order(next)->driver, "d1");
}

// protocol.md (order_cancel): once the trip has started the passenger is aboard: neither side can
// cancel it (a driver's cancel would send a ride in progress back into search); the driver ends
// it with trip_complete.
TEST(CoreCancel, NobodyCanCancelAStartedTripAndTheDriverEndsItWithComplete) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    h.driver_cmd("d1", id, DGDO_CMD_ARRIVED);
    h.driver_cmd("d1", id, DGDO_CMD_START);
    auto out = h.driver_cmd("d1", id, DGDO_CMD_CANCEL);
    EXPECT_EQ(result_of(out), DGDO_RESULT_CONFLICT);
    EXPECT_EQ(out.size(), 1u);
    EXPECT_EQ(result_of(h.passenger_cmd("p1", id, DGDO_CMD_CANCEL)), DGDO_RESULT_CONFLICT);
    EXPECT_EQ(h.state(id), OrderState::Started);
    EXPECT_EQ(h.core.find_driver("d1")->trip, id);
    out = h.driver_cmd("d1", id, DGDO_CMD_COMPLETE);
    EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{DGDO_ORDER_COMPLETED});
    EXPECT_EQ(result_of(h.passenger_cmd("p1", id, DGDO_CMD_CANCEL)), DGDO_RESULT_CONFLICT);  // ended: too late too
}

TEST(CoreCancel, DriverCancelAfterAcceptPutsTheOrderBackIntoSearchWithoutThatDriver) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(1500));
    const uint64_t id = h.order_for("p1");
    h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    const auto out = h.driver_cmd("d1", id, DGDO_CMD_CANCEL);
    EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
    const auto upd = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(upd.size(), 1u);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).status, DGDO_ORDER_SEARCHING);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).reason, DGDO_REASON_DRIVER_CANCELED);
    const auto c = to_whom(out, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(as<dgdo_out_cancel_order>(c[0]).reason, DGDO_REASON_DRIVER_CANCELED);
    EXPECT_EQ(offered_to(out, "d2"), id);
    EXPECT_EQ(h.core.find_driver("d1")->trip, 0u);
    EXPECT_TRUE(h.core.find_order(id)->tried.count("d1"));
}

// orders_matched (/metrics dgdo_orders_matched, system_stats orders.matched) counts orders a driver
// accepted: one given up by its driver and accepted by the next is one order matched, not two, as
// orders_created and orders_completed count each order once. Declines and timed-out offers are no match.
TEST(CoreCancel, AnOrderAcceptedAgainAfterItsDriverGaveItUpIsMatchedOnce) {
    Config cfg;
    cfg.offer_timeout_s = 10;
    Harness h(cfg);
    h.online("d1", at(100));
    h.online("d2", at(300));
    h.online("d3", at(600));
    h.online("d4", at(900));
    const uint64_t id = h.order_for("p1");
    h.driver_cmd("d1", id, DGDO_CMD_REJECT);  // declined: offered to d2
    EXPECT_EQ(h.core.find_order(id)->driver, "d2");
    h.tick(11);  // d2's offer times out: offered to d3
    EXPECT_EQ(h.core.find_order(id)->driver, "d3");
    EXPECT_EQ(h.core.stats().orders_matched, 0u);
    ASSERT_EQ(result_of(h.driver_cmd("d3", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_OK);
    EXPECT_EQ(h.core.stats().orders_matched, 1u);
    h.driver_cmd("d3", id, DGDO_CMD_CANCEL);  // d3 gives it up: back to search, offered to d4
    ASSERT_EQ(h.core.find_order(id)->driver, "d4");
    ASSERT_EQ(result_of(h.driver_cmd("d4", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_OK);
    EXPECT_EQ(h.core.stats().orders_matched, 1u);
    EXPECT_EQ(h.core.stats().orders_created, 1u);

    // A snapshot keeps it: loaded, the order is still one that was matched.
    std::string bytes;
    h.core.save(bytes);
    Harness back(cfg);
    ASSERT_TRUE(back.core.load(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
    back.now = h.now;
    back.online("d5", at(1200));
    back.driver_cmd("d4", id, DGDO_CMD_CANCEL);
    ASSERT_EQ(back.core.find_order(id)->driver, "d5");
    ASSERT_EQ(result_of(back.driver_cmd("d5", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_OK);
    EXPECT_EQ(back.core.stats().orders_matched, 1u);
}

// Takes an order for p1 at kCenter from d1 (at 100 m) through to `arrived`.
uint64_t arrived_with_d1(Harness& h) {
    const uint64_t id = h.order_for("p1");
    EXPECT_EQ(h.core.find_order(id)->driver, "d1");
    h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    h.location("d1", at(50));
    EXPECT_EQ(result_of(h.driver_cmd("d1", id, DGDO_CMD_ARRIVED)), DGDO_RESULT_OK);
    EXPECT_EQ(h.state(id), OrderState::Arrived);
    return id;
}

TEST(CoreCancel, PassengerCancelFromArrivedTellsOnlyThatDriverAndFreesItForTheNextOrder) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(20000));  // online, but out of reach: must hear nothing
    const uint64_t id = arrived_with_d1(h);
    const uint64_t waiting = h.order_for("p2", at(300));
    ASSERT_EQ(h.state(waiting), OrderState::Searching);
    const auto out = h.passenger_cmd("p1", id, DGDO_CMD_CANCEL);
    EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
    const auto c = of_type(out, DGDO_OUT_CANCEL_ORDER);
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(id_str(as<dgdo_out_cancel_order>(c[0]).meta.to_id), "d1");
    EXPECT_EQ(as<dgdo_out_cancel_order>(c[0]).order_id, id);
    EXPECT_EQ(as<dgdo_out_cancel_order>(c[0]).reason, DGDO_REASON_PASSENGER_CANCELED);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_DRIVER, "d1"), std::vector<uint8_t>{DGDO_ORDER_CANCELED});
    EXPECT_EQ(h.core.find_driver("d1")->trip, 0u);
    EXPECT_EQ(offered_to(out, "d1"), waiting);  // freed: the waiting order comes to it at once
    EXPECT_TRUE(to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_DRIVER, "d2").empty());
}

TEST(CoreCancel, DriverCancelFromArrivedSendsItCancelOrderAndReoffersTheOrderToAnother) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(1500));
    const uint64_t id = arrived_with_d1(h);
    const auto out = h.driver_cmd("d1", id, DGDO_CMD_CANCEL);
    EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
    const auto c = of_type(out, DGDO_OUT_CANCEL_ORDER);
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(id_str(as<dgdo_out_cancel_order>(c[0]).meta.to_id), "d1");
    EXPECT_EQ(as<dgdo_out_cancel_order>(c[0]).reason, DGDO_REASON_DRIVER_CANCELED);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{DGDO_ORDER_SEARCHING});
    EXPECT_EQ(offered_to(out, "d2"), id);
    EXPECT_EQ(offered_to(out, "d1"), 0u);
    EXPECT_EQ(h.core.find_driver("d1")->trip, 0u);
    EXPECT_EQ(h.core.stats().drivers_available, 1u);  // d1 free again, d2 holding the offer
    const uint64_t next = h.order_for("p2", at(100));
    EXPECT_EQ(h.core.find_order(next)->driver, "d1");  // free for other orders, just not this one
}

TEST(CoreCancel, DriverCancellingItsOwnOfferGetsCancelOrderAndTheOfferMovesOn) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(1500));
    const uint64_t id = h.order_for("p1");
    ASSERT_EQ(h.core.find_order(id)->driver, "d1");
    const auto out = h.driver_cmd("d1", id, DGDO_CMD_CANCEL);
    EXPECT_EQ(result_of(out), DGDO_RESULT_OK);
    const auto c = of_type(out, DGDO_OUT_CANCEL_ORDER);
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(id_str(as<dgdo_out_cancel_order>(c[0]).meta.to_id), "d1");
    EXPECT_EQ(as<dgdo_out_cancel_order>(c[0]).reason, DGDO_REASON_DRIVER_CANCELED);
    EXPECT_EQ(offered_to(out, "d2"), id);
    EXPECT_TRUE(statuses_to(out, DGDO_ROLE_PASSENGER, "p1").empty());  // still "searching" to the passenger
    EXPECT_EQ(h.core.find_driver("d1")->offer, 0u);
    EXPECT_EQ(result_of(h.driver_cmd("d1", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_CONFLICT);
    const uint64_t next = h.order_for("p2", at(100));
    EXPECT_EQ(h.core.find_order(next)->driver, "d1");
}

TEST(CoreCancel, DisconnectedDriversOfferIsReofferedAfterTheGracePeriod) {
    Harness h;
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 5);
    h.online("d1", at(100));
    h.online("d2", at(700));
    const uint64_t id = h.order_for("p1");
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 5);
    EXPECT_TRUE(of_type(h.tick(9.9), DGDO_OUT_NEW_ORDER).empty());
    const auto out = h.tick(0.1);
    const auto c = to_whom(out, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(as<dgdo_out_cancel_order>(c[0]).reason, DGDO_REASON_DRIVER_DISCONNECTED);
    EXPECT_EQ(offered_to(out, "d2"), id);
    EXPECT_FALSE(h.core.find_driver("d1")->online);
}

TEST(CoreCancel, DriverThatReconnectsWithinGraceKeepsItsOffer) {
    Harness h;
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 5);
    h.online("d1", at(100));
    h.online("d2", at(700));
    const uint64_t id = h.order_for("p1");
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 5);
    h.tick(5);
    h.session(true, DGDO_ROLE_DRIVER, "d1", 2, 9);
    EXPECT_TRUE(of_type(h.tick(6), DGDO_OUT_CANCEL_ORDER).empty());
    EXPECT_EQ(result_of(h.driver_cmd("d1", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_OK);
}

// protocol.md (driver_status): the status outlives a disconnect only for the grace period. A
// driver back later is offline, gets no offer until it says `online` again (after its welcome),
// and a trip it had is still its own.
TEST(CoreCancel, ADriverBackAfterTheGraceIsOfflineUntilItSaysOnlineAgain) {
    Harness h;
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 5);
    h.online("d1", at(100));
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 5);
    h.tick(4);
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 6);  // back within the grace: still online
    EXPECT_TRUE(h.core.find_driver("d1")->online);
    const uint64_t a = h.order_for("p1");
    EXPECT_EQ(h.core.find_order(a)->driver, "d1");
    h.driver_cmd("d1", a, DGDO_CMD_ACCEPT);

    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 6);
    h.tick(10);  // the grace runs out: offline, the trip stays
    EXPECT_FALSE(h.core.find_driver("d1")->online);
    EXPECT_EQ(h.core.find_driver("d1")->trip, a);
    h.session(true, DGDO_ROLE_DRIVER, "d1", 2, 7);
    h.driver_cmd("d1", a, DGDO_CMD_ARRIVED);
    h.driver_cmd("d1", a, DGDO_CMD_START);
    h.driver_cmd("d1", a, DGDO_CMD_COMPLETE);
    const uint64_t b = h.order_for("p2");
    EXPECT_EQ(h.state(b), OrderState::Searching);  // connected, free, but offline: no offer
    EXPECT_EQ(h.core.stats().drivers_available, 0u);
    EXPECT_EQ(offered_to(h.status("d1", DGDO_DRIVER_ONLINE), "d1"), b);
}

TEST(CoreCancel, StaleCloseOfAReplacedConnectionIsIgnored) {
    Harness h;
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 5);
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 6);  // a second connection replaces the first
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 5);
    EXPECT_TRUE(h.core.find_driver("d1")->connected);
}

TEST(CoreCancel, DetachedWorkerDisconnectsItsDrivers) {
    Harness h;
    h.session(true, DGDO_ROLE_DRIVER, "d1", 3, 5);
    h.session(true, DGDO_ROLE_DRIVER, "d2", 4, 5);
    h.online("d1", at(100));
    h.online("d2", at(100));
    h.step(WorkerDetached{3});
    EXPECT_FALSE(h.core.find_driver("d1")->connected);
    EXPECT_TRUE(h.core.find_driver("d2")->connected);
    h.tick(10);
    EXPECT_FALSE(h.core.find_driver("d1")->online);
    EXPECT_TRUE(h.core.find_driver("d2")->online);
}

// ---- operator cancels (an admin's order_cancel) ------------------------------------------------

std::vector<OutRecord> operator_cancel(Harness& h, uint64_t order) {
    return h.command(DGDO_ROLE_ADMIN, "ops", order, DGDO_CMD_CANCEL);
}

// Takes an order for p1 at kCenter from d1 (at 100 m) into `state`, one of the live ones.
uint64_t order_in(Harness& h, OrderState state) {
    if (state != OrderState::Searching) h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    if (state == OrderState::Searching || state == OrderState::Offered) return id;
    h.driver_cmd("d1", id, DGDO_CMD_ACCEPT);
    if (state == OrderState::Accepted) return id;
    h.location("d1", at(50));
    if (state == OrderState::Arriving) return id;
    h.driver_cmd("d1", id, DGDO_CMD_ARRIVED);
    if (state == OrderState::Arrived) return id;
    h.driver_cmd("d1", id, DGDO_CMD_START);
    return id;
}

// protocol.md (order_cancel, admin): an operator ends an order in any live state, the started
// trip included (a driver whose phone died mid-trip would otherwise hold it forever). The
// passenger gets `canceled` with operator_canceled; an offer is withdrawn from its driver
// (cancel_order), an assigned driver gets the canceled order_update and cancel_order, all
// reliable; the driver is free for the next order.
TEST(CoreOperatorCancel, EndsAnOrderInEveryLiveStateAndFreesItsDriver) {
    const OrderState live[] = {OrderState::Searching, OrderState::Offered, OrderState::Accepted,
                               OrderState::Arriving,  OrderState::Arrived, OrderState::Started};
    for (const OrderState state : live) {
        SCOPED_TRACE(static_cast<int>(state));
        Harness h;
        const uint64_t id = order_in(h, state);
        ASSERT_EQ(h.state(id), state);
        ASSERT_EQ(h.core.stats().active_orders, 1u);
        const auto out = operator_cancel(h, id);
        ASSERT_EQ(result_of(out), DGDO_RESULT_OK);
        const auto ack = as<dgdo_out_command_result>(out[0]);
        EXPECT_EQ(ack.order_id, id);
        EXPECT_EQ(ack.meta.to_role, DGDO_ROLE_ADMIN);
        EXPECT_EQ(h.state(id), OrderState::Canceled);
        EXPECT_EQ(h.core.stats().active_orders, 0u);

        const auto upd = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
        ASSERT_EQ(upd.size(), 1u);
        EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).status, DGDO_ORDER_CANCELED);
        EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).reason, DGDO_REASON_OPERATOR_CANCELED);
        EXPECT_GT(seq_of(upd[0]), 0u);

        const bool offered = state == OrderState::Offered;
        const bool assigned = has_trip(state);
        // The passenger hears of a driver only once one was assigned (as for a passenger's cancel).
        EXPECT_EQ(id_str(as<dgdo_out_order_update>(upd[0]).driver_id), assigned ? "d1" : "");
        const auto c = to_whom(out, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d1");
        ASSERT_EQ(c.size(), offered || assigned ? 1u : 0u);
        if (!c.empty()) {
            EXPECT_EQ(as<dgdo_out_cancel_order>(c[0]).reason, DGDO_REASON_OPERATOR_CANCELED);
            EXPECT_GT(seq_of(c[0]), 0u);
        }
        const auto dupd = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_DRIVER, "d1");
        ASSERT_EQ(dupd.size(), assigned ? 1u : 0u);
        if (assigned) {
            EXPECT_EQ(as<dgdo_out_order_update>(dupd[0]).status, DGDO_ORDER_CANCELED);
            EXPECT_EQ(as<dgdo_out_order_update>(dupd[0]).reason, DGDO_REASON_OPERATOR_CANCELED);
        }
        if (state != OrderState::Searching) {
            EXPECT_EQ(h.core.find_driver("d1")->offer, 0u);
            EXPECT_EQ(h.core.find_driver("d1")->trip, 0u);
            const uint64_t next = h.order_for("p2", at(100));
            EXPECT_EQ(h.core.find_order(next)->driver, "d1");  // free: the next order is offered to it
        }
        // Nothing of the order is left to fire: no offer expiry, no no_driver.
        for (const auto& r : h.tick(61)) {
            if (r.type == DGDO_OUT_ORDER_UPDATE) {
                EXPECT_NE(as<dgdo_out_order_update>(r).order_id, id);
            }
            if (r.type == DGDO_OUT_CANCEL_ORDER) {
                EXPECT_NE(as<dgdo_out_cancel_order>(r).order_id, id);
            }
        }
    }
}

// The product gap: a driver's phone dies mid-trip and never comes back. The trip outlives the
// grace period (a trip stays its driver's), so only an operator can end it.
TEST(CoreOperatorCancel, EndsAStartedTripWhoseDriverIsGoneAndTheDriverHearsItOnReturn) {
    Harness h;
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 5);
    const uint64_t id = order_in(h, OrderState::Started);
    const uint64_t driver_seq = seqs_to(h.all, DGDO_ROLE_DRIVER, "d1").back();
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 5);
    h.tick(60);
    ASSERT_EQ(h.state(id), OrderState::Started);
    ASSERT_FALSE(h.core.find_driver("d1")->online);

    const auto out = operator_cancel(h, id);
    ASSERT_EQ(result_of(out), DGDO_RESULT_OK);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{DGDO_ORDER_CANCELED});
    EXPECT_EQ(h.core.find_driver("d1")->trip, 0u);
    EXPECT_EQ(h.core.stats().active_orders, 0u);

    // Back with the seq it had: it is told the order ended (what it missed, in order).
    const auto back = h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 6, driver_seq);
    const auto upd = to_whom(back, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(upd.size(), 1u);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).status, DGDO_ORDER_CANCELED);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).reason, DGDO_REASON_OPERATOR_CANCELED);
    EXPECT_EQ(result_of(h.driver_cmd("d1", id, DGDO_CMD_COMPLETE)), DGDO_RESULT_CONFLICT);
}

// protocol.md: `not_found` for an order the engine does not know or that has already ended
// (there is nothing live to end); nothing else happens.
TEST(CoreOperatorCancel, AnUnknownOrEndedOrderIsNotFound) {
    Harness h;
    h.online("d1", at(100));
    auto out = operator_cancel(h, 4242);
    EXPECT_EQ(result_of(out), DGDO_RESULT_NOT_FOUND);
    EXPECT_EQ(out.size(), 1u);

    const uint64_t completed = order_in(h, OrderState::Started);
    h.driver_cmd("d1", completed, DGDO_CMD_COMPLETE);
    const uint64_t by_passenger = h.order_for("p2");
    h.passenger_cmd("p2", by_passenger, DGDO_CMD_CANCEL);
    const uint64_t by_operator = h.order_for("p3");
    ASSERT_EQ(result_of(operator_cancel(h, by_operator)), DGDO_RESULT_OK);
    h.status("d1", DGDO_DRIVER_OFFLINE);
    const uint64_t no_driver = h.order_for("p4");
    h.tick(61);
    ASSERT_EQ(h.state(no_driver), OrderState::NoDriver);
    for (const uint64_t id : {completed, by_passenger, by_operator, no_driver}) {
        SCOPED_TRACE(id);
        out = operator_cancel(h, id);
        EXPECT_EQ(result_of(out), DGDO_RESULT_NOT_FOUND);
        EXPECT_EQ(as<dgdo_out_command_result>(out[0]).order_id, id);
        EXPECT_EQ(out.size(), 1u);
    }
}

// An operator may only cancel: the driver's steps stay the driver's.
TEST(CoreOperatorCancel, AnAdminCannotDriveAnOrder) {
    Harness h;
    const uint64_t id = order_in(h, OrderState::Offered);
    for (const uint8_t cmd : {DGDO_CMD_ACCEPT, DGDO_CMD_REJECT, DGDO_CMD_ARRIVED, DGDO_CMD_START, DGDO_CMD_COMPLETE}) {
        const auto out = h.command(DGDO_ROLE_ADMIN, "ops", id, cmd);
        EXPECT_EQ(result_of(out), DGDO_RESULT_FORBIDDEN);
        EXPECT_EQ(out.size(), 1u);
    }
    EXPECT_EQ(h.state(id), OrderState::Offered);
}

}  // namespace
}  // namespace dgdo::test
