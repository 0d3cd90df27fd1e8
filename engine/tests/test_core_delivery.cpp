// Reliable delivery in the core: per-recipient seqs, the bounded history, resume by replay or
// snapshot (with orders that ended while the app was away), request-id idempotency, no double
// booking, and the Deliveries state saved and loaded.
#undef NDEBUG
#include <random>

#include "core_harness.hpp"

namespace dgdo::test {
namespace {

const Deliveries::Key kP1{DGDO_ROLE_PASSENGER, "p1"};
const Deliveries::Key kD1{DGDO_ROLE_DRIVER, "d1"};

std::vector<uint64_t> count_from(uint64_t first, uint64_t n) {
    std::vector<uint64_t> v;
    for (uint64_t i = 0; i < n; ++i) v.push_back(first + i);
    return v;
}

// d1 online 300 m from the pickup; p1's order offered to it and, if `accept`, accepted.
uint64_t ride_with_d1(Harness& h, bool accept = true) {
    h.online("d1", at(300));
    const uint64_t id = h.order_for("p1");
    if (accept) {
        EXPECT_EQ(result_of(h.driver_cmd("d1", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_OK);
    }
    return id;
}

void complete(Harness& h, const std::string& d, uint64_t id) {
    h.driver_cmd(d, id, DGDO_CMD_ARRIVED);
    h.driver_cmd(d, id, DGDO_CMD_START);
    h.driver_cmd(d, id, DGDO_CMD_COMPLETE);
}

// ---- seq -----------------------------------------------------------------------------------

TEST(CoreDelivery, EachRecipientsReliableMessagesCountUpByOneFromOne) {
    Harness h;
    const uint64_t a = ride_with_d1(h);
    complete(h, "d1", a);
    h.online("d2", at(-20000));
    const uint64_t b = h.order_for("p2", at(-20000));  // offered to d2, the only driver in reach
    h.driver_cmd("d2", b, DGDO_CMD_REJECT);            // silent for d2: its ack says it all
    h.passenger_cmd("p2", b, DGDO_CMD_CANCEL);
    const uint64_t c = h.order_for("p1");  // d1 again: its numbering goes on
    h.passenger_cmd("p1", c, DGDO_CMD_CANCEL);

    // p1: searching, accepted, arriving? no position came: accepted, arrived, started, completed; then c.
    EXPECT_EQ(seqs_to(h.all, DGDO_ROLE_PASSENGER, "p1"), count_from(1, 7));
    // d1: offer, accepted, arrived, started, completed; offer of c, cancel_order of c.
    EXPECT_EQ(seqs_to(h.all, DGDO_ROLE_DRIVER, "d1"), count_from(1, 7));
    EXPECT_EQ(seqs_to(h.all, DGDO_ROLE_PASSENGER, "p2"), count_from(1, 2));  // searching, canceled
    EXPECT_EQ(seqs_to(h.all, DGDO_ROLE_DRIVER, "d2"), count_from(1, 1));     // the offer
    EXPECT_EQ(h.core.deliveries().latest(kP1), 7u);
    // Non-reliable records carry no seq field at all: positions and results stay as they were.
    EXPECT_EQ(sizeof(dgdo_out_driver_position), 144u);
}

// ---- history ----------------------------------------------------------------------------------

TEST(CoreDelivery, TheHistoryKeepsTheLastDepthRecordsPerRecipient) {
    Config c;
    c.history_depth = 4;
    Harness h(c);
    for (int i = 0; i < 5; ++i) h.passenger_cmd("p1", h.order_for("p1"), DGDO_CMD_CANCEL);  // 2 records each
    EXPECT_EQ(h.core.deliveries().latest(kP1), 10u);
    EXPECT_EQ(h.core.deliveries().held(kP1), 4u);

    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, 6);  // 7..10 are held
    EXPECT_EQ(session_state(out).resumed, 1);
    EXPECT_EQ(session_state(out).seq, 10u);
    EXPECT_EQ(seqs_to(out, DGDO_ROLE_PASSENGER, "p1"), count_from(7, 4));

    out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 8, 5);  // 6 is gone
    EXPECT_EQ(session_state(out).resumed, 0);
    EXPECT_EQ(session_state(out).seq, 10u);
    // The snapshot: the three orders that ended after seq 5 (their `canceled` at 6, 8, 10), as fresh messages.
    EXPECT_EQ(seqs_to(out, DGDO_ROLE_PASSENGER, "p1"), count_from(11, 3));
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"),
              (std::vector<uint8_t>{DGDO_ORDER_CANCELED, DGDO_ORDER_CANCELED, DGDO_ORDER_CANCELED}));
    EXPECT_EQ(h.core.deliveries().held(kP1), 4u);  // still bounded after the snapshot added three
}

TEST(CoreDelivery, HistoryOfIdleRecipientsGoesWithTheirLastRetainedOrderButTheCounterStays) {
    Config c;
    c.retention_s = 100;
    c.search_timeout_s = c.exhausted_wait_s = 1000;  // y below waits as long as the test needs
    Harness h(c);
    const uint64_t a = ride_with_d1(h);
    complete(h, "d1", a);
    h.online("d2", at(-20000));  // out of d1's reach
    const uint64_t x = h.order_for("p2", at(-20000));
    h.passenger_cmd("p2", x, DGDO_CMD_CANCEL);
    h.tick(50);
    const uint64_t y = h.order_for("p2", at(40000));  // p2 is live again; nobody in reach
    EXPECT_EQ(h.core.deliveries().held(kP1), 5u);
    h.tick(50);  // a and x are past their retention; y is live
    ASSERT_EQ(h.core.find_order(a), nullptr);
    ASSERT_EQ(h.core.find_order(x), nullptr);
    EXPECT_EQ(h.core.deliveries().held(kP1), 0u);
    EXPECT_EQ(h.core.deliveries().held(kD1), 0u);
    EXPECT_EQ(h.core.deliveries().held({DGDO_ROLE_DRIVER, "d2"}), 0u);
    EXPECT_EQ(h.core.deliveries().held({DGDO_ROLE_PASSENGER, "p2"}), 3u);  // y still refers to it
    EXPECT_EQ(h.core.deliveries().ended_total(), 0u);
    EXPECT_EQ(h.core.deliveries().latest(kP1), 5u);

    // An old last_seq can no longer be replayed: a snapshot (nothing live, nothing retained), numbering on.
    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, 2);
    EXPECT_EQ(session_state(out).resumed, 0);
    EXPECT_EQ(session_state(out).seq, 5u);
    EXPECT_TRUE(of_type(out, DGDO_OUT_ORDER_UPDATE).empty());
    h.order_for("p1");
    EXPECT_EQ(h.core.deliveries().latest(kP1), 6u);
    h.passenger_cmd("p2", y, DGDO_CMD_CANCEL);
}

// ---- resume ----------------------------------------------------------------------------------

TEST(CoreDelivery, ResumeReplaysWhatWasMissedInOrderWithTheOriginalBytesToTheOpeningConnection) {
    Harness h;
    const uint64_t id = ride_with_d1(h);  // the app drops after `accepted` (seq 2)
    auto missed = h.driver_cmd("d1", id, DGDO_CMD_ARRIVED);
    auto more = h.driver_cmd("d1", id, DGDO_CMD_START);
    missed.insert(missed.end(), more.begin(), more.end());
    const auto originals = to_whom(missed, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(originals.size(), 2u);

    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 3, 21, 2);  // back, through another worker
    ASSERT_EQ(out.at(0).type, DGDO_OUT_COMMAND_RESULT);
    ASSERT_EQ(out.at(1).type, DGDO_OUT_SESSION_STATE);  // first: the sidecar's welcome
    const auto st = session_state(out);
    EXPECT_EQ(st.resumed, 1);
    EXPECT_EQ(st.seq, 4u);
    EXPECT_EQ(st.meta.to_conn, 21u);
    EXPECT_EQ(st.meta.to_worker, 3u);
    const auto replayed = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(replayed.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
        const auto m = as<dgdo_out_meta>(replayed[i]);
        EXPECT_EQ(m.to_conn, 21u);
        EXPECT_EQ(m.to_worker, 3u);
        EXPECT_TRUE(std::equal(replayed[i].body.begin() + sizeof(dgdo_out_meta), replayed[i].body.end(),
                               originals[i].body.begin() + sizeof(dgdo_out_meta), originals[i].body.end()));
    }
    EXPECT_EQ(as<dgdo_out_order_update>(replayed[0]).status, DGDO_ORDER_ARRIVED);
    EXPECT_EQ(as<dgdo_out_order_update>(replayed[1]).seq, 4u);
    EXPECT_EQ(h.core.deliveries().latest(kP1), 4u);  // a replay hands out no new numbers
}

TEST(CoreDelivery, ResumeSnapshotIncludesAnOrderThatEndedWhileTheAppWasAway) {
    Config c;
    c.history_depth = 2;
    Harness h(c);
    const uint64_t a = ride_with_d1(h);  // p1: searching 1, accepted 2
    h.online("d2", at(-300));
    const uint64_t b = h.order_for("p1");  // searching 3, offered to d2
    h.session(false, DGDO_ROLE_PASSENGER, "p1", 1, 7);
    complete(h, "d1", a);  // arrived 4, started 5, completed 6: 4 falls out of the history

    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 9, 3);
    const auto st = session_state(out);
    EXPECT_EQ(st.resumed, 0);
    EXPECT_EQ(st.seq, 6u);
    const auto updates = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(updates.size(), 2u);
    const auto done = as<dgdo_out_order_update>(updates[0]);
    EXPECT_EQ(done.order_id, a);
    EXPECT_EQ(done.status, DGDO_ORDER_COMPLETED);
    EXPECT_EQ(id_str(done.driver_id), "d1");
    EXPECT_EQ(done.seq, 7u);  // a fresh number, right after the welcome's
    const auto live = as<dgdo_out_order_update>(updates[1]);
    EXPECT_EQ(live.order_id, b);
    EXPECT_EQ(live.status, DGDO_ORDER_SEARCHING);
    EXPECT_EQ(live.seq, 8u);

    // The app got the completed at 7: a later snapshot from a last_seq past it does not repeat it.
    out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 10, 7);
    EXPECT_EQ(session_state(out).resumed, 1);  // 8 is held
    EXPECT_EQ(seqs_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint64_t>{8});
}

TEST(CoreDelivery, ADriverAwayWhileItsPassengerCanceledGetsTheCancelInItsSnapshot) {
    Config c;
    c.history_depth = 1;
    Harness h(c);
    const uint64_t a = ride_with_d1(h);  // d1: offer 1, accepted 2
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 5, 2);  // up to date: nothing replayed
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 5);
    h.passenger_cmd("p1", a, DGDO_CMD_CANCEL);  // d1: order_update canceled 3, cancel_order 4

    auto out = h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 6, 2);
    EXPECT_EQ(session_state(out).resumed, 0);
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_DRIVER, "d1"), std::vector<uint8_t>{DGDO_ORDER_CANCELED});
    const auto cancels = to_whom(out, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_EQ(cancels.size(), 1u);
    EXPECT_EQ(as<dgdo_out_cancel_order>(cancels[0]).reason, DGDO_REASON_PASSENGER_CANCELED);
    EXPECT_EQ(seqs_to(out, DGDO_ROLE_DRIVER, "d1"), count_from(5, 2));
}

TEST(CoreDelivery, WithoutLastSeqTheSnapshotHoldsTheLiveOrdersOnly) {
    Harness h;
    const uint64_t a = ride_with_d1(h);
    complete(h, "d1", a);
    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7);
    EXPECT_EQ(session_state(out).resumed, 0);
    EXPECT_EQ(session_state(out).seq, 5u);
    EXPECT_TRUE(of_type(out, DGDO_OUT_ORDER_UPDATE).empty());
}

TEST(CoreDelivery, ALastSeqAheadOfTheCounterIsNotResumedAndNumberingGoesOnAboveIt) {
    Harness h;
    const uint64_t a = ride_with_d1(h);  // p1 at 2
    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, 1000);  // e.g. an engine that lost its state
    EXPECT_EQ(session_state(out).resumed, 0);
    EXPECT_EQ(session_state(out).seq, 1000u);
    EXPECT_EQ(seqs_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint64_t>{1001});  // the live order
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{DGDO_ORDER_ACCEPTED});
    out = h.driver_cmd("d1", a, DGDO_CMD_ARRIVED);
    EXPECT_EQ(seqs_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint64_t>{1002});
    // The jump cannot be replayed across.
    out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 8, 1);
    EXPECT_EQ(session_state(out).resumed, 0);
}

TEST(CoreDelivery, EveryOpenIsAnsweredWithOneSessionStateAdminsIncluded) {
    Harness h;
    auto out = h.session(true, DGDO_ROLE_ADMIN, "ops", 1, 3);
    const auto st = session_state(out);
    EXPECT_EQ(st.meta.to_role, DGDO_ROLE_ADMIN);
    EXPECT_EQ(id_str(st.meta.to_id), "ops");
    EXPECT_EQ(st.seq, 0u);
    EXPECT_TRUE(of_type(h.session(false, DGDO_ROLE_ADMIN, "ops", 1, 3), DGDO_OUT_SESSION_STATE).empty());
}

// The welcome says whether the engine has a driver online (dispatchable): the operator's map
// must not show a driver as available that the engine will never offer a ride, e.g. an app open
// off shift (no `online` yet) or one back after its grace ran out.
TEST(CoreDelivery, ADriversSessionStateSaysWhetherTheEngineHasItOnline) {
    Harness h;
    EXPECT_EQ(session_state(h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 5)).online, 0);  // never said online
    h.online("d1", at(100));
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 5);
    h.tick(4);
    EXPECT_EQ(session_state(h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 6)).online, 1);  // back within the grace
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 6);
    h.tick(30);  // the grace runs out: offline
    EXPECT_EQ(session_state(h.session(true, DGDO_ROLE_DRIVER, "d1", 2, 7)).online, 0);
    h.status("d1", DGDO_DRIVER_ONLINE);
    // The same connection's open again (re-announced by its sidecar) says it too.
    const uint64_t upgraded = h.now;
    h.session(true, DGDO_ROLE_DRIVER, "d2", 1, 9, std::nullopt, upgraded);
    h.online("d2", at(200));
    EXPECT_EQ(session_state(h.session(true, DGDO_ROLE_DRIVER, "d2", 1, 9, std::nullopt, upgraded)).online, 1);
    EXPECT_EQ(session_state(h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 10)).online, 0);  // drivers only
}

// A sidecar carries a session's open over from a dead engine's ring (it was never taken, or taken
// and not yet released) and then re-announces the session to the next engine with the same bytes.
// The second is the connection the first opened, not a new one: answered, but with no second
// snapshot (the app would be sent its orders twice, under new seqs).
TEST(CoreDelivery, TheSameOpenOfTheSameConnectionAgainBringsNoSecondSnapshot) {
    Harness h;
    ride_with_d1(h);  // p1 has a live order
    const uint64_t upgraded = h.now;
    auto first = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, std::nullopt, upgraded);
    const auto snap = seqs_to(first, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(snap.size(), 1u);  // the live order
    h.tick(0.1);
    auto again = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, std::nullopt, upgraded);
    ASSERT_EQ(of_type(again, DGDO_OUT_SESSION_STATE).size(), 1u);
    EXPECT_EQ(session_state(again).resumed, 1);
    EXPECT_EQ(session_state(again).seq, snap.back());  // nothing after it to replay
    EXPECT_TRUE(seqs_to(again, DGDO_ROLE_PASSENGER, "p1").empty());
    // Another connection of the same app is a new one, as is the same connection opened anew.
    again = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 8);
    EXPECT_EQ(seqs_to(again, DGDO_ROLE_PASSENGER, "p1").size(), 1u);
}

// ---- idempotency ------------------------------------------------------------------------------

TEST(CoreDelivery, ARetriedRequestIdGetsTheSameLiveOrderAndADifferentRideWithItIsAConflict) {
    Harness h;
    const auto first = h.ride("p1", kCenter, 7);
    const uint64_t a = as<dgdo_out_command_result>(first[0]).order_id;
    auto again = h.ride("p1", kCenter, 7);
    EXPECT_EQ(result_of(again), DGDO_RESULT_OK);
    EXPECT_EQ(as<dgdo_out_command_result>(again[0]).order_id, a);
    EXPECT_TRUE(of_type(again, DGDO_OUT_ORDER_UPDATE).empty());

    const size_t orders = h.core.order_count();
    auto other = h.ride("p1", at(500), 7);  // same id, another pickup
    EXPECT_EQ(result_of(other), DGDO_RESULT_CONFLICT);
    EXPECT_EQ(as<dgdo_out_command_result>(other[0]).order_id, 0u);  // not the old order
    EXPECT_EQ(other.size(), 1u);
    other = h.ride("p1", kCenter, 7, at(-3000));  // same pickup, another dropoff
    EXPECT_EQ(result_of(other), DGDO_RESULT_CONFLICT);
    EXPECT_EQ(h.core.order_count(), orders);
    EXPECT_EQ(h.state(a), OrderState::Searching);
}

TEST(CoreDelivery, ARequestIdReusedAfterItsOrderEndedMakesANewOrderNeverTheFinishedOne) {
    Harness h;
    const uint64_t a = as<dgdo_out_command_result>(h.ride("p1", kCenter, 7)[0]).order_id;
    h.passenger_cmd("p1", a, DGDO_CMD_CANCEL);
    EXPECT_EQ(h.core.idem_count(), 0u);
    EXPECT_NE(h.core.find_order(a), nullptr);  // still retained: commands on it are answered
    const auto again = h.ride("p1", at(800), 7);  // a new session, its counter back at "r1"
    EXPECT_EQ(result_of(again), DGDO_RESULT_OK);
    const uint64_t b = as<dgdo_out_command_result>(again[0]).order_id;
    EXPECT_NE(b, a);
    EXPECT_EQ(statuses_to(again, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{DGDO_ORDER_SEARCHING});
    EXPECT_EQ(as<dgdo_out_command_result>(h.ride("p1", at(800), 7)[0]).order_id, b);  // and b is now its order
    // Keys belong to their passenger.
    EXPECT_NE(as<dgdo_out_command_result>(h.ride("p2", at(800), 7)[0]).order_id, b);
}

// ---- no double booking ---------------------------------------------------------------------------

TEST(CoreDelivery, ADriverWithATripNeverGetsASecondNewOrderWhateverIsReannounced) {
    Harness h;
    const uint64_t a = ride_with_d1(h);
    const size_t from = h.all.size();
    // What a sidecar re-announces after an engine restart or its own, in every order it may come.
    h.status("d1", DGDO_DRIVER_ONLINE);
    h.order_for("p2", at(100));
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 7);
    h.session(true, DGDO_ROLE_DRIVER, "d1", 2, 4, 2);
    h.status("d1", DGDO_DRIVER_ONLINE);
    h.location("d1", at(50));
    h.step(WorkerDetached{2});
    h.tick(30);  // past the grace: the driver goes offline, the trip stays
    EXPECT_EQ(h.core.find_driver("d1")->trip, a);
    h.session(true, DGDO_ROLE_DRIVER, "d1", 3, 1, 2);
    h.location("d1", at(60));
    h.status("d1", DGDO_DRIVER_ONLINE);
    h.status("d1", DGDO_DRIVER_OFFLINE);
    h.status("d1", DGDO_DRIVER_ONLINE);
    h.order_for("p3", at(-100));
    h.tick(1);
    std::vector<OutRecord> since(h.all.begin() + static_cast<std::ptrdiff_t>(from), h.all.end());
    EXPECT_TRUE(to_whom(since, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1").empty());
    EXPECT_EQ(h.core.find_driver("d1")->offer, 0u);
    EXPECT_EQ(h.core.stats().drivers_available, 0u);

    // Once the trip is over, the driver is free again: exactly one offer, for a waiting order.
    const auto done = h.driver_cmd("d1", a, DGDO_CMD_ARRIVED);
    h.driver_cmd("d1", a, DGDO_CMD_START);
    const auto freed = h.driver_cmd("d1", a, DGDO_CMD_COMPLETE);
    EXPECT_EQ(to_whom(freed, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1").size(), 1u);
    EXPECT_TRUE(to_whom(done, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1").empty());
}

TEST(CoreDelivery, ADriverHoldingAnOfferIsNotOfferedAnotherWhenReannouncedOnline) {
    Harness h;
    const uint64_t a = ride_with_d1(h, /*accept=*/false);
    const size_t from = h.all.size();
    h.session(true, DGDO_ROLE_DRIVER, "d1", 2, 4);  // snapshot: the offer it holds, again
    h.status("d1", DGDO_DRIVER_ONLINE);
    h.location("d1", at(250));
    h.order_for("p2", at(100));
    std::vector<OutRecord> since(h.all.begin() + static_cast<std::ptrdiff_t>(from), h.all.end());
    for (const auto& r : to_whom(since, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1"))
        EXPECT_EQ(as<dgdo_out_new_order>(r).order_id, a);
    EXPECT_EQ(h.core.find_driver("d1")->offer, a);
}

// ---- save / load ----------------------------------------------------------------------------------

// A busy little day: rides, accepts, completions, cancels, resumes, retention pruning.
void busy_day(Harness& h, uint32_t seed) {
    std::mt19937 rng(seed);
    for (int i = 0; i < 1500; ++i) {
        const std::string d = "d" + std::to_string(rng() % 8);
        const std::string p = "p" + std::to_string(rng() % 8);
        switch (rng() % 8) {
        case 0: h.online(d, at(static_cast<double>(rng() % 2000))); break;
        case 1: h.ride(p, at(static_cast<double>(rng() % 2000)), rng() % 3); break;
        case 2:
        case 3: {
            const uint64_t order = 1001 + rng() % 200;
            if (const Order* o = h.core.find_order(order); o && !o->driver.empty())
                h.driver_cmd(o->driver, order, static_cast<uint8_t>(1 + rng() % 5));
            break;
        }
        case 4: h.passenger_cmd(p, 1001 + rng() % 200, DGDO_CMD_CANCEL); break;
        case 5: h.session(true, DGDO_ROLE_PASSENGER, p, 1, 1, rng() % 2 ? std::optional<uint64_t>(rng() % 30) : std::nullopt); break;
        default: h.tick(0.5 * (rng() % 10)); break;
        }
    }
}

TEST(CoreDelivery, SaveThenLoadGivesTheSameStateAndTheSameBytes) {
    Config c;
    c.retention_s = 60;
    c.history_depth = 16;
    Harness h(c);
    busy_day(h, 7);
    const Deliveries& live = h.core.deliveries();
    ASSERT_GT(live.recipients(), 8u);
    ASSERT_GT(live.held_total(), 50u);
    ASSERT_GT(live.ended_total(), 5u);

    std::string bytes;
    live.save(bytes);
    Deliveries back(16);
    const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data());
    const uint8_t* end = p + bytes.size();
    ASSERT_TRUE(back.load(p, end));
    EXPECT_EQ(p, end);
    EXPECT_TRUE(back == live);
    std::string again;
    back.save(again);
    EXPECT_EQ(again, bytes);

    // The same inputs through another core: the same bytes (deterministic, key-ordered).
    Harness twin(c);
    busy_day(twin, 7);
    std::string twin_bytes;
    twin.core.deliveries().save(twin_bytes);
    EXPECT_EQ(twin_bytes, bytes);
}

TEST(CoreDelivery, LoadRefusesTruncatedOrForeignBytesAndLeavesTheStateAsItWas) {
    Harness h;
    busy_day(h, 11);
    std::string bytes;
    h.core.deliveries().save(bytes);
    Deliveries target(256);
    std::string before;
    target.save(before);
    for (size_t cut : {size_t{0}, size_t{3}, size_t{8}, bytes.size() / 2, bytes.size() - 1}) {
        const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data());
        EXPECT_FALSE(target.load(p, p + cut)) << cut;
        EXPECT_EQ(p, reinterpret_cast<const uint8_t*>(bytes.data())) << cut;
    }
    std::string foreign = bytes;
    foreign[0] ^= 0x55;
    const uint8_t* p = reinterpret_cast<const uint8_t*>(foreign.data());
    EXPECT_FALSE(target.load(p, p + foreign.size()));
    std::string after;
    target.save(after);
    EXPECT_EQ(after, before);
}

TEST(CoreDelivery, ASmallerDepthAtLoadKeepsTheNewestRecords) {
    Harness h;
    for (int i = 0; i < 10; ++i) h.passenger_cmd("p1", h.order_for("p1"), DGDO_CMD_CANCEL);
    std::string bytes;
    h.core.deliveries().save(bytes);
    Deliveries small(3);
    const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data());
    ASSERT_TRUE(small.load(p, p + bytes.size()));
    EXPECT_EQ(small.held(kP1), 3u);
    std::vector<OutRecord> missed;
    ASSERT_TRUE(small.since(kP1, 17, missed));
    ASSERT_EQ(missed.size(), 3u);
    EXPECT_EQ(seq_of(missed[0]), 18u);
    EXPECT_FALSE(small.since(kP1, 16, missed));
}

// since() at its edges: last_seq at the latest, at 0, just inside and just outside the history,
// ahead of the counter, and after the history went with the recipient's last retained order.
TEST(CoreDelivery, SinceAnswersAtEveryEdgeOfTheHistory) {
    auto seqs = [](const std::vector<OutRecord>& v) {
        std::vector<uint64_t> s;
        for (const auto& r : v) s.push_back(seq_of(r));
        return s;
    };
    for (uint32_t depth : {4u, 8u}) {
        Config c;
        c.history_depth = depth;
        c.retention_s = 100;
        Harness h(c);
        for (int i = 0; i < 3; ++i) h.passenger_cmd("p1", h.order_for("p1"), DGDO_CMD_CANCEL);  // seqs 1..6
        const Deliveries& d = h.core.deliveries();
        const Deliveries::Key p1{DGDO_ROLE_PASSENGER, "p1"};
        ASSERT_EQ(d.latest(p1), 6u);
        std::vector<OutRecord> out;
        EXPECT_TRUE(d.since(p1, 6, out));  // nothing missed
        EXPECT_TRUE(out.empty());
        EXPECT_TRUE(d.since(p1, 2, out));  // 3..6 held at either depth
        EXPECT_EQ(seqs(out), (std::vector<uint64_t>{3, 4, 5, 6}));
        out.clear();
        EXPECT_EQ(d.since(p1, 1, out), depth == 8) << depth;  // 2 fell out of a depth of 4
        EXPECT_EQ(d.since(p1, 0, out), depth == 8) << depth;
        if (depth == 8) {
            EXPECT_EQ(seqs(out), (std::vector<uint64_t>{2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6}));  // appended twice
        } else {
            EXPECT_TRUE(out.empty());  // untouched when false
        }
        out.clear();
        EXPECT_FALSE(d.since(p1, 7, out));  // ahead of the counter
        EXPECT_TRUE(out.empty());
        EXPECT_FALSE(d.since({DGDO_ROLE_PASSENGER, "nobody"}, 1, out));
        EXPECT_TRUE(d.since({DGDO_ROLE_PASSENGER, "nobody"}, 0, out));  // 0 of 0: nothing missed
        EXPECT_TRUE(d.since({DGDO_ROLE_DRIVER, "p1"}, 0, out));        // roles are separate recipients
        EXPECT_TRUE(out.empty());

        h.tick(101);  // every order forgotten: the history goes, the counter stays
        EXPECT_EQ(d.held(p1), 0u);
        EXPECT_EQ(d.latest(p1), 6u);
        EXPECT_TRUE(d.since(p1, 6, out));
        EXPECT_FALSE(d.since(p1, 5, out));
        EXPECT_TRUE(out.empty());
        h.order_for("p1");  // numbering goes on at 7, and a resume from 6 replays just it
        EXPECT_TRUE(d.since(p1, 6, out));
        EXPECT_EQ(seqs(out), (std::vector<uint64_t>{7}));
    }
}

// A snapshot sends an ended order's final record again under a fresh seq. The app may get the
// welcome and lose that copy (it dies before processing it); if the copy is then out of the
// history too, its next resume, from the welcome's seq, is a snapshot again, and must carry the
// final record again: it is above that last_seq by its new number, whatever its first one was.
TEST(CoreDelivery, AFinalRecordResentInASnapshotIsResentAgainToAnAppThatLostTheResend) {
    Config c;
    c.history_depth = 2;
    Harness h(c);
    const uint64_t a = ride_with_d1(h);  // p1: searching 1, accepted 2
    h.session(false, DGDO_ROLE_PASSENGER, "p1", 1, 7);
    complete(h, "d1", a);  // arrived 3, started 4, completed 5

    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 8, 2);  // 3 is out of the history: a snapshot
    auto st = session_state(out);
    ASSERT_EQ(st.resumed, 0);
    ASSERT_EQ(st.seq, 5u);
    auto updates = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(updates.size(), 1u);
    EXPECT_EQ(as<dgdo_out_order_update>(updates[0]).status, DGDO_ORDER_COMPLETED);
    EXPECT_EQ(seq_of(updates[0]), 6u);
    // The app processed the welcome (5) and died. Two more records push 6 out of the history.
    h.session(false, DGDO_ROLE_PASSENGER, "p1", 1, 8);
    const uint64_t b = h.order_for("p1");               // searching 7 (d1 gets the offer)
    h.passenger_cmd("p1", b, DGDO_CMD_CANCEL);           // canceled 8

    out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 9, 5);
    st = session_state(out);
    ASSERT_EQ(st.resumed, 0);
    std::vector<std::pair<uint64_t, uint8_t>> got;
    for (const auto& r : to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1"))
        got.emplace_back(as<dgdo_out_order_update>(r).order_id, as<dgdo_out_order_update>(r).status);
    EXPECT_EQ(got, (std::vector<std::pair<uint64_t, uint8_t>>{{a, DGDO_ORDER_COMPLETED}, {b, DGDO_ORDER_CANCELED}}));
}

// ---- a recovery's jump (Recovered, Deliveries::jump) ---------------------------------------------

// What a lost journal tail handed out (ids, seqs) is above the recovered state's counters by at
// most what that window could make: after the jump nothing is handed out a second time.
TEST(CoreDelivery, ARecoveryJumpMovesTheNextOrderIdAndEverySeqCounterUpByTheGap) {
    Harness h;
    const uint64_t a = ride_with_d1(h);  // p1: 1, 2; d1: 1, 2
    const uint64_t next = h.core.next_order_id();
    EXPECT_EQ(next, a + 1);
    EXPECT_TRUE(h.step(Recovered{kRecoveryGap}).empty());  // it says nothing to anyone
    EXPECT_EQ(h.core.next_order_id(), next + kRecoveryGap);
    EXPECT_EQ(h.core.deliveries().latest(kP1), 2 + kRecoveryGap);
    EXPECT_EQ(h.core.deliveries().latest(kD1), 2 + kRecoveryGap);
    EXPECT_EQ(h.core.deliveries().issued(kP1), 2u);  // what was really handed out

    auto out = h.driver_cmd("d1", a, DGDO_CMD_ARRIVED);
    EXPECT_EQ(seqs_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint64_t>{3 + kRecoveryGap});
    EXPECT_EQ(seqs_to(out, DGDO_ROLE_DRIVER, "d1"), std::vector<uint64_t>{3 + kRecoveryGap});
    const uint64_t b = h.order_for("p2");  // a recipient first seen now numbers on above the gap too
    EXPECT_EQ(b, next + kRecoveryGap);
    EXPECT_EQ(seqs_to(h.all, DGDO_ROLE_PASSENGER, "p2"), std::vector<uint64_t>{1 + kRecoveryGap});
    h.step(Recovered{kRecoveryGap});  // a second recovery jumps again
    EXPECT_EQ(h.order_for("p3"), b + 1 + kRecoveryGap);
}

// After a jump p1's history is 1, 2, G+3, G+4: a last_seq it was handed out resumes (the replay
// crosses the gap); one in the gap, or the counter before anything was numbered above it, is a
// seq the lost tail numbered for a message that no longer exists: a snapshot, never a replay that
// would skip, unsaid, what the app took for it.
TEST(CoreDelivery, AfterAJumpALastSeqTheEngineNeverHandedOutIsNotResumed) {
    constexpr uint64_t G = kRecoveryGap;
    for (uint32_t depth : {2u, 256u}) {
        Config c;
        c.history_depth = depth;
        Harness h(c);
        const uint64_t a = ride_with_d1(h);  // p1: searching 1, accepted 2
        h.step(Recovered{G});
        // Each open is a new connection: the same connection's open again is answered with
        // where it stands, no snapshot (Core::on(SessionOpen)).
        uint32_t conn = 7;
        // Before anything new: 2 is where it stands; G + 2 (the counter) was never handed out.
        auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, conn++, 2);
        EXPECT_EQ(session_state(out).resumed, 1) << depth;
        EXPECT_EQ(session_state(out).seq, 2u) << depth;  // where the (empty) replay ends
        EXPECT_TRUE(seqs_to(out, DGDO_ROLE_PASSENGER, "p1").empty());
        out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, conn++, G + 2);
        EXPECT_EQ(session_state(out).resumed, 0) << depth;
        EXPECT_EQ(session_state(out).seq, G + 2) << depth;
        EXPECT_EQ(seqs_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint64_t>{G + 3});  // the live order
        h.driver_cmd("d1", a, DGDO_CMD_ARRIVED);  // G + 4
        // (depth 2: the history is now G + 3, G + 4, base 2)
        std::vector<OutRecord> missed;
        EXPECT_EQ(h.core.deliveries().since(kP1, 1, missed), depth > 2) << depth;
        missed.clear();
        ASSERT_TRUE(h.core.deliveries().since(kP1, 2, missed)) << depth;
        std::vector<uint64_t> got;
        for (const auto& r : missed) got.push_back(seq_of(r));
        EXPECT_EQ(got, (std::vector<uint64_t>{G + 3, G + 4})) << depth;
        for (uint64_t never : {uint64_t{3}, uint64_t{1000}, G, G + 1, G + 2}) {
            out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, conn++, never);
            const auto st = session_state(out);
            EXPECT_EQ(st.resumed, 0) << depth << " " << never;
            EXPECT_GE(st.seq, never) << never;  // the app's numbering never goes back
            const auto seqs = seqs_to(out, DGDO_ROLE_PASSENGER, "p1");
            ASSERT_EQ(seqs.size(), 1u) << never;  // the snapshot: its live order, numbered above
            EXPECT_EQ(seqs[0], st.seq + 1) << never;
            EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint8_t>{DGDO_ORDER_ARRIVED});
        }
        const uint64_t now = h.core.deliveries().issued(kP1);
        out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, conn++, now);  // one it was handed out: resumed
        EXPECT_EQ(session_state(out).resumed, 1) << depth;
        EXPECT_EQ(session_state(out).seq, now);
    }
}

// The same connection's open again (carried over, then re-announced) after a jump is resumed like
// the first: its seq says the last one handed out, not the counter above the gap (a resumed
// SESSION_STATE's seq is where the replay ends; nothing was handed out at G + 2).
TEST(CoreDelivery, AfterAJumpTheSameOpenOfTheSameConnectionAgainSaysTheLastSeqHandedOut) {
    constexpr uint64_t G = kRecoveryGap;
    Harness h;
    ride_with_d1(h);  // p1: 1, 2
    h.step(Recovered{G});
    const uint64_t upgraded = h.now;
    auto first = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, 2, upgraded);
    ASSERT_EQ(session_state(first).resumed, 1);
    ASSERT_EQ(session_state(first).seq, 2u);
    auto again = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, 2, upgraded);
    ASSERT_EQ(of_type(again, DGDO_OUT_SESSION_STATE).size(), 1u);
    EXPECT_EQ(session_state(again).resumed, 1);
    EXPECT_EQ(session_state(again).seq, 2u);
    EXPECT_TRUE(seqs_to(again, DGDO_ROLE_PASSENGER, "p1").empty());
}

TEST(CoreDelivery, AfterAJumpARecipientFirstSeenWithALastSeqGetsASnapshotNumberedAboveTheGap) {
    Harness h;
    h.step(Recovered{kRecoveryGap});
    // p1 was handed 1..3 by the lost tail: the recovered engine never saw it.
    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, 3);
    EXPECT_EQ(session_state(out).resumed, 0);
    EXPECT_EQ(session_state(out).seq, kRecoveryGap);
    h.order_for("p1");
    EXPECT_EQ(seqs_to(h.all, DGDO_ROLE_PASSENGER, "p1"), std::vector<uint64_t>{kRecoveryGap + 1});
}

TEST(CoreDelivery, AJumpSurvivesSaveAndLoad) {
    Config c;
    c.history_depth = 3;
    Harness h(c);
    busy_day(h, 5);
    h.step(Recovered{kRecoveryGap});
    busy_day(h, 6);
    std::string bytes;
    h.core.deliveries().save(bytes);
    Deliveries back(3);
    const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data());
    ASSERT_TRUE(back.load(p, p + bytes.size()));
    EXPECT_TRUE(back == h.core.deliveries());
    back.jump(1);
    EXPECT_FALSE(back == h.core.deliveries());  // the floor and the counters are part of the state
}

// ---- the time a change went out ------------------------------------------------------------------

uint64_t commit_real(const OutRecord& r) {
    dgdo_out_meta m;
    std::memcpy(&m, r.body.data(), sizeof m);
    return m.commit_real_ns;
}

OutRecord last_update(const std::vector<OutRecord>& out, uint8_t role, const std::string& id, uint8_t status) {
    std::optional<OutRecord> found;
    for (const OutRecord& r : to_whom(out, DGDO_OUT_ORDER_UPDATE, role, id)) {
        dgdo_out_order_update u;
        std::memcpy(&u, r.body.data(), sizeof u);
        if (u.status == status) found = r;
    }
    EXPECT_TRUE(found.has_value());
    return found.value_or(OutRecord{DGDO_OUT_ORDER_UPDATE, std::vector<uint8_t>(sizeof(dgdo_out_order_update))});
}

constexpr uint64_t kLiveAt = 1764090000123000000ull;

TEST(CoreDelivery, AReplayedOrSnapshotRecordCarriesTheTimeItsChangeFirstWentOut) {
    Harness h;
    const uint64_t id = ride_with_d1(h);
    // The loop published searching, the offer and accepted at kLiveAt, and says so.
    h.step(Committed{kLiveAt, h.core.deliveries().stamped()});
    const uint64_t accepted = h.core.deliveries().latest(kP1);  // p1's `accepted`
    h.tick(5);

    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, accepted - 1);
    ASSERT_EQ(session_state(out).resumed, 1);
    EXPECT_EQ(commit_real(last_update(out, DGDO_ROLE_PASSENGER, "p1", DGDO_ORDER_ACCEPTED)), kLiveAt);

    out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 8);  // no last_seq: the snapshot
    ASSERT_EQ(session_state(out).resumed, 0);
    const OutRecord snap = last_update(out, DGDO_ROLE_PASSENGER, "p1", DGDO_ORDER_ACCEPTED);
    EXPECT_GT(seq_of(snap), accepted);
    EXPECT_EQ(commit_real(snap), kLiveAt);
    // The snapshot's record, resumed from in turn, says the same.
    out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 9, seq_of(snap) - 1);
    EXPECT_EQ(commit_real(last_update(out, DGDO_ROLE_PASSENGER, "p1", DGDO_ORDER_ACCEPTED)), kLiveAt);

    // The trip ends; a snapshot from before it resends the `completed` with its own time.
    complete(h, "d1", id);
    h.step(Committed{kLiveAt + 60'000'000'000ull, h.core.deliveries().stamped()});
    h.tick(5);
    out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 10, 10'000);  // ahead of the count: a snapshot
    ASSERT_EQ(session_state(out).resumed, 0);
    EXPECT_EQ(commit_real(last_update(out, DGDO_ROLE_PASSENGER, "p1", DGDO_ORDER_COMPLETED)),
              kLiveAt + 60'000'000'000ull);
}

TEST(CoreDelivery, ARecordNotDatedYetIsSentWithoutATimeAndDatedOnce) {
    Harness h;
    ride_with_d1(h);
    const uint64_t upto = h.core.deliveries().stamped();
    // A resume before the loop said when they went out: no time (the loop stamps its publish).
    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, 0);
    EXPECT_EQ(commit_real(last_update(out, DGDO_ROLE_PASSENGER, "p1", DGDO_ORDER_ACCEPTED)), 0u);
    h.step(Committed{kLiveAt, upto});
    h.step(Committed{kLiveAt + 1, h.core.deliveries().stamped()});  // a later date never moves an earlier one
    out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 8, 0);
    EXPECT_EQ(commit_real(last_update(out, DGDO_ROLE_PASSENGER, "p1", DGDO_ORDER_ACCEPTED)), kLiveAt);
}

TEST(CoreDelivery, AFinalRecordThatLeftTheHistoryBeforeItWasDatedIsDatedWhereItIsKept) {
    Config c;
    c.history_depth = 1;
    Harness h(c);
    const uint64_t a = ride_with_d1(h);
    h.step(Committed{kLiveAt, h.core.deliveries().stamped()});
    complete(h, "d1", a);  // arrived, started, completed: p1's history holds the completed alone
    h.online("d2", at(-300));
    const uint64_t b = h.order_for("p1");  // searching: the completed leaves the history, not dated yet
    h.step(Committed{kLiveAt + 7, h.core.deliveries().stamped()});

    auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 9, 1);  // from before the history: a snapshot
    ASSERT_EQ(session_state(out).resumed, 0);
    EXPECT_EQ(commit_real(last_update(out, DGDO_ROLE_PASSENGER, "p1", DGDO_ORDER_COMPLETED)), kLiveAt + 7);
    // (The live order's `searching` is not held any more either: the resent `completed` took the one place.)
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"),
              (std::vector<uint8_t>{DGDO_ORDER_COMPLETED, DGDO_ORDER_SEARCHING}));
    EXPECT_EQ(as<dgdo_out_order_update>(last_update(out, DGDO_ROLE_PASSENGER, "p1", DGDO_ORDER_SEARCHING)).order_id, b);
}

TEST(CoreDelivery, RecordsNotDatedYetSurviveSaveAndLoad) {
    Harness h;
    ride_with_d1(h);
    const uint64_t upto = h.core.deliveries().stamped();
    std::string bytes;
    h.core.deliveries().save(bytes);
    Deliveries back;
    const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data());
    ASSERT_TRUE(back.load(p, p + bytes.size()));
    std::string reloaded;
    back.save(reloaded);
    EXPECT_EQ(reloaded, bytes);  // what waits to be dated included
    EXPECT_EQ(back.stamped(), upto);
    back.dated(kLiveAt, upto);
    h.step(Committed{kLiveAt, upto});
    EXPECT_TRUE(back == h.core.deliveries());  // dated the same after the load as live
    std::string live, again;
    h.core.deliveries().save(live);
    back.save(again);
    EXPECT_EQ(again, live);
    EXPECT_NE(again, bytes);  // the dates are part of the state
}

}  // namespace
}  // namespace dgdo::test
