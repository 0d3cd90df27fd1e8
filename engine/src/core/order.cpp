#include "core/order.hpp"

namespace dgdo {

std::optional<OrderState> next_state(OrderState from, uint8_t command, Party party) {
    for (const Transition& t : kTransitions)
        if (t.from == from && t.command == command && t.party == party) return t.to;
    return std::nullopt;
}

uint8_t app_status(OrderState s) {
    switch (s) {
    case OrderState::Searching:
    case OrderState::Offered: return DGDO_ORDER_SEARCHING;
    case OrderState::Accepted: return DGDO_ORDER_ACCEPTED;
    case OrderState::Arriving: return DGDO_ORDER_ARRIVING;
    case OrderState::Arrived: return DGDO_ORDER_ARRIVED;
    case OrderState::Started: return DGDO_ORDER_STARTED;
    case OrderState::Completed: return DGDO_ORDER_COMPLETED;
    case OrderState::Canceled: return DGDO_ORDER_CANCELED;
    case OrderState::NoDriver: return DGDO_ORDER_NO_DRIVER;
    }
    return 0;
}

bool is_terminal(OrderState s) {
    return s == OrderState::Completed || s == OrderState::Canceled || s == OrderState::NoDriver;
}

bool has_trip(OrderState s) {
    return s == OrderState::Accepted || s == OrderState::Arriving || s == OrderState::Arrived ||
           s == OrderState::Started;
}

}  // namespace dgdo
