// Every (state, command, party) missing from kTransitions is a CONFLICT that changes nothing.
#undef NDEBUG
#include "core_harness.hpp"

namespace dgdo::test {
namespace {

struct Setup {
    Harness h;
    uint64_t id = 0;
    std::string driver;  // the order's current driver, or a former one when it has none
};

// Drives a fresh order into `target`. d1 is the first driver offered; d2 stays away.
std::unique_ptr<Setup> order_in(OrderState target) {
    auto s = std::make_unique<Setup>();
    Harness& h = s->h;
    h.online("d1", at(100));
    s->id = h.order_for("p1");
    s->driver = "d1";
    switch (target) {
    case OrderState::Searching: h.driver_cmd("d1", s->id, DGDO_CMD_REJECT); break;  // d1 becomes a former driver
    case OrderState::Offered: break;
    case OrderState::Accepted: h.driver_cmd("d1", s->id, DGDO_CMD_ACCEPT); break;
    case OrderState::Arriving:
        h.driver_cmd("d1", s->id, DGDO_CMD_ACCEPT);
        h.location("d1", at(90));  // the first position after the accept
        break;
    case OrderState::Arrived:
        h.driver_cmd("d1", s->id, DGDO_CMD_ACCEPT);
        h.driver_cmd("d1", s->id, DGDO_CMD_ARRIVED);
        break;
    case OrderState::Started:
    case OrderState::Completed:
        h.driver_cmd("d1", s->id, DGDO_CMD_ACCEPT);
        h.driver_cmd("d1", s->id, DGDO_CMD_ARRIVED);
        h.driver_cmd("d1", s->id, DGDO_CMD_START);
        if (target == OrderState::Completed) h.driver_cmd("d1", s->id, DGDO_CMD_COMPLETE);
        break;
    case OrderState::Canceled:
        h.driver_cmd("d1", s->id, DGDO_CMD_ACCEPT);
        h.passenger_cmd("p1", s->id, DGDO_CMD_CANCEL);
        break;
    case OrderState::NoDriver:
        h.driver_cmd("d1", s->id, DGDO_CMD_REJECT);
        h.tick(61);
        break;
    }
    EXPECT_EQ(h.state(s->id), target);
    return s;
}

struct Snapshot {
    OrderState state;
    std::string driver;
    size_t tried;
    uint64_t d1_offer, d1_trip;
    bool operator==(const Snapshot&) const = default;
};

Snapshot snap(const Setup& s) {
    const Order* o = s.h.core.find_order(s.id);
    const Driver* d = s.h.core.find_driver("d1");
    return Snapshot{o->state, o->driver, o->tried.size(), d->offer, d->trip};
}

const OrderState kAll[] = {OrderState::Searching, OrderState::Offered,  OrderState::Accepted,
                           OrderState::Arriving,  OrderState::Arrived,  OrderState::Started,
                           OrderState::Completed, OrderState::Canceled, OrderState::NoDriver};

TEST(CoreTransitions, EveryCommandNotInTheTableIsConflictAndChangesNothing) {
    int checked = 0;
    for (OrderState st : kAll) {
        for (uint8_t cmd = DGDO_CMD_ACCEPT; cmd <= DGDO_CMD_CANCEL; ++cmd) {
            for (bool by_passenger : {true, false}) {
                auto s = order_in(st);
                const bool current = by_passenger || s->h.core.find_order(s->id)->driver == s->driver;
                const Party party = by_passenger ? Party::Passenger : current ? Party::CurrentDriver : Party::FormerDriver;
                if (next_state(st, cmd, party)) continue;
                const Snapshot before = snap(*s);
                const auto out = by_passenger ? s->h.passenger_cmd("p1", s->id, cmd) : s->h.driver_cmd("d1", s->id, cmd);
                EXPECT_EQ(result_of(out), DGDO_RESULT_CONFLICT)
                    << "state " << int(st) << " cmd " << int(cmd) << " passenger " << by_passenger;
                EXPECT_EQ(out.size(), 1u);
                EXPECT_TRUE(snap(*s) == before) << "state " << int(st) << " cmd " << int(cmd);
                ++checked;
            }
        }
    }
    EXPECT_GT(checked, 70);
}

TEST(CoreTransitions, EveryCommandInTheTableIsAccepted) {
    for (const Transition& t : kTransitions) {
        auto s = order_in(t.from);
        const auto out = t.party == Party::Passenger ? s->h.passenger_cmd("p1", s->id, t.command)
                         : t.party == Party::Operator ? s->h.command(DGDO_ROLE_ADMIN, "ops", s->id, t.command)
                                                      : s->h.driver_cmd("d1", s->id, t.command);
        EXPECT_EQ(result_of(out), DGDO_RESULT_OK) << int(t.from) << " " << int(t.command);
        // A driver leaving an offer or trip sends the order back to search; no one else is near.
        EXPECT_EQ(s->h.state(s->id), t.to) << int(t.from) << " " << int(t.command);
    }
}

// An admin may only cancel, and only a live order: any other command is not its to send
// (FORBIDDEN), an ended order is nothing left to end (NOT_FOUND). Either way nothing changes.
TEST(CoreTransitions, AnAdminCommandNotInTheTableIsRefusedAndChangesNothing) {
    int checked = 0;
    for (OrderState st : kAll) {
        for (uint8_t cmd = DGDO_CMD_ACCEPT; cmd <= DGDO_CMD_CANCEL; ++cmd) {
            if (next_state(st, cmd, Party::Operator)) continue;
            auto s = order_in(st);
            const Snapshot before = snap(*s);
            const auto out = s->h.command(DGDO_ROLE_ADMIN, "ops", s->id, cmd);
            EXPECT_EQ(result_of(out), cmd == DGDO_CMD_CANCEL ? DGDO_RESULT_NOT_FOUND : DGDO_RESULT_FORBIDDEN)
                << "state " << int(st) << " cmd " << int(cmd);
            EXPECT_EQ(out.size(), 1u);
            EXPECT_TRUE(snap(*s) == before) << "state " << int(st) << " cmd " << int(cmd);
            ++checked;
        }
    }
    EXPECT_EQ(checked, 9 * 6 - 6);  // every state and command but the six live states' cancel
}

TEST(CoreTransitions, LateAcceptAfterTheOfferExpiredIsConflict) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(900));
    const uint64_t id = h.order_for("p1");
    h.tick(15);
    ASSERT_EQ(h.core.find_order(id)->driver, "d2");
    EXPECT_EQ(result_of(h.driver_cmd("d1", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_CONFLICT);
    EXPECT_EQ(h.state(id), OrderState::Offered);
    EXPECT_EQ(h.core.find_driver("d1")->trip, 0u);
}

TEST(CoreTransitions, UnknownCommandIsABadMessage) {
    Harness h;
    const uint64_t id = h.order_for("p1");
    EXPECT_EQ(result_of(h.passenger_cmd("p1", id, 42)), DGDO_RESULT_BAD_MESSAGE);
    EXPECT_EQ(h.state(id), OrderState::Searching);
}

}  // namespace
}  // namespace dgdo::test
