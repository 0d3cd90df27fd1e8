// Order lifecycle: every legal (state, command, actor) -> next state lives in
// kTransitions. A lookup miss is a CONFLICT, never an exception.
//
//   searching --offer--> offered --accept--> accepted --(position)--> arriving --arrived--> arrived --start--> started --complete--> completed
//       ^                  |  reject/driver cancel/expiry   |  driver cancel (accepted | arriving | arrived)
//       +------------------+--------------------------------+
//   passenger cancel: searching | offered | accepted | arriving | arrived -> canceled
//   operator cancel:  searching | offered | accepted | arriving | arrived | started -> canceled
//                     (an admin's CANCEL: the way out of a trip whose driver never comes back)
//   search timeout:   searching | offered -> no_driver   (tick-driven, not a command)
//   none left:        searching -> no_driver, exhausted_wait_s after the last candidate is gone
//
// ARRIVING is not a command: the first driver_location after the accept moves
// accepted -> arriving (the driver is visibly on the way; the passenger gets
// "arriving" and, from then on, live positions and ETAs). A driver may also
// report `arrived` straight from accepted (it was already at the pickup).
// The offer itself (searching -> offered) is the engine's decision, not a command.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include "dgdo/events.h"

namespace dgdo {

enum class OrderState : uint8_t { Searching, Offered, Accepted, Arriving, Arrived, Started, Completed, Canceled, NoDriver };

// Who is acting, relative to the order.
enum class Party : uint8_t {
    Passenger,      // the order's passenger
    CurrentDriver,  // the driver holding the offer or the trip
    FormerDriver,   // a driver the order has moved on from (late accept, ...)
    Operator,       // an admin: may cancel any live order
};

struct Transition {
    OrderState from;
    uint8_t command;  // enum dgdo_order_command
    Party party;
    OrderState to;
};

inline constexpr Transition kTransitions[] = {
    {OrderState::Offered, DGDO_CMD_ACCEPT, Party::CurrentDriver, OrderState::Accepted},
    {OrderState::Offered, DGDO_CMD_REJECT, Party::CurrentDriver, OrderState::Searching},
    {OrderState::Offered, DGDO_CMD_CANCEL, Party::CurrentDriver, OrderState::Searching},
    {OrderState::Accepted, DGDO_CMD_ARRIVED, Party::CurrentDriver, OrderState::Arrived},
    {OrderState::Arriving, DGDO_CMD_ARRIVED, Party::CurrentDriver, OrderState::Arrived},
    {OrderState::Arrived, DGDO_CMD_START, Party::CurrentDriver, OrderState::Started},
    {OrderState::Started, DGDO_CMD_COMPLETE, Party::CurrentDriver, OrderState::Completed},
    {OrderState::Accepted, DGDO_CMD_CANCEL, Party::CurrentDriver, OrderState::Searching},
    {OrderState::Arriving, DGDO_CMD_CANCEL, Party::CurrentDriver, OrderState::Searching},
    {OrderState::Arrived, DGDO_CMD_CANCEL, Party::CurrentDriver, OrderState::Searching},
    {OrderState::Searching, DGDO_CMD_CANCEL, Party::Passenger, OrderState::Canceled},
    {OrderState::Offered, DGDO_CMD_CANCEL, Party::Passenger, OrderState::Canceled},
    {OrderState::Accepted, DGDO_CMD_CANCEL, Party::Passenger, OrderState::Canceled},
    {OrderState::Arriving, DGDO_CMD_CANCEL, Party::Passenger, OrderState::Canceled},
    {OrderState::Arrived, DGDO_CMD_CANCEL, Party::Passenger, OrderState::Canceled},
    {OrderState::Searching, DGDO_CMD_CANCEL, Party::Operator, OrderState::Canceled},
    {OrderState::Offered, DGDO_CMD_CANCEL, Party::Operator, OrderState::Canceled},
    {OrderState::Accepted, DGDO_CMD_CANCEL, Party::Operator, OrderState::Canceled},
    {OrderState::Arriving, DGDO_CMD_CANCEL, Party::Operator, OrderState::Canceled},
    {OrderState::Arrived, DGDO_CMD_CANCEL, Party::Operator, OrderState::Canceled},
    {OrderState::Started, DGDO_CMD_CANCEL, Party::Operator, OrderState::Canceled},
};

std::optional<OrderState> next_state(OrderState from, uint8_t command, Party party);

// The status apps see (an offer in flight still reads "searching" to the passenger).
uint8_t app_status(OrderState s);

bool is_terminal(OrderState s);
// Accepted, arriving, arrived or started: a driver is bound to the order.
bool has_trip(OrderState s);

struct Order {
    uint64_t id = 0;
    std::string passenger;
    dgdo_point pickup{};
    dgdo_point dropoff{};
    OrderState state = OrderState::Searching;
    std::string driver;           // offered or assigned driver; empty while searching
    std::set<std::string> tried;  // drivers this order moved on from: never offered again
    uint64_t created_ns = 0;
    uint64_t search_deadline_ns = 0;
    uint64_t offer_deadline_ns = 0;
    uint64_t retry_ns = 0;               // next greedy retry while waiting; 0 = none scheduled
    uint64_t exhausted_deadline_ns = 0;  // nobody left to offer it to: no_driver then; 0 = has candidates
    uint64_t last_estimate_ns = 0;
    bool estimate_sent = false;
    bool matched = false;      // a driver accepted it once: counted in orders_matched (a re-accept is not)
    uint64_t idem_key = 0;     // the passenger's idempotency key, 0 = none
    uint64_t finished_ns = 0;  // when it became terminal (pruned retention_s later)
};

}  // namespace dgdo
