// Input builders shared by the engine benchmark and the matching simulation.
#pragma once

#include <cmath>
#include <cstring>
#include <string>

#include "core/core.hpp"

namespace dgdo::bench {

inline constexpr dgdo_point kDushanbe{38.56, 68.78};
inline constexpr double kMetresPerDegLat = 111195.0;

// A point north_m / east_m metres from the city centre.
inline dgdo_point offset(double north_m, double east_m) {
    return dgdo_point{kDushanbe.lat + north_m / kMetresPerDegLat,
                      kDushanbe.lon + east_m / (kMetresPerDegLat * std::cos(kDushanbe.lat * 3.14159265358979323846 / 180))};
}

inline dgdo_in_meta meta(uint8_t role, const std::string& actor, uint64_t corr = 0) {
    dgdo_in_meta m;
    std::memset(&m, 0, sizeof m);
    m.corr = corr;
    m.conn = 1;
    m.worker = 1;
    m.role = role;
    std::memcpy(m.actor.chars, actor.data(), std::min(actor.size(), sizeof m.actor.chars));
    return m;
}

inline dgdo_in_driver_location location(const std::string& d, dgdo_point p) {
    dgdo_in_driver_location e;
    std::memset(&e, 0, sizeof e);
    e.meta = meta(DGDO_ROLE_DRIVER, d);
    e.pos = p;
    return e;
}

inline dgdo_in_driver_status status(const std::string& d, bool online) {
    dgdo_in_driver_status e;
    std::memset(&e, 0, sizeof e);
    e.meta = meta(DGDO_ROLE_DRIVER, d);
    e.status = online ? DGDO_DRIVER_ONLINE : DGDO_DRIVER_OFFLINE;
    return e;
}

inline dgdo_in_ride_request ride(const std::string& p, dgdo_point pickup, dgdo_point dropoff) {
    dgdo_in_ride_request e;
    std::memset(&e, 0, sizeof e);
    e.meta = meta(DGDO_ROLE_PASSENGER, p, 1);
    e.pickup = pickup;
    e.dropoff = dropoff;
    return e;
}

inline dgdo_in_order_command command(uint8_t role, const std::string& actor, uint64_t order, uint8_t cmd) {
    dgdo_in_order_command e;
    std::memset(&e, 0, sizeof e);
    e.meta = meta(role, actor, 1);
    e.order_id = order;
    e.command = cmd;
    return e;
}

template <class T>
T read(const OutRecord& r) {
    T v;
    std::memset(&v, 0, sizeof v);
    std::memcpy(&v, r.body.data(), std::min(sizeof v, r.body.size()));
    return v;
}

inline std::string id_of(const dgdo_id& id) { return std::string(id.chars, strnlen(id.chars, sizeof id.chars)); }

}  // namespace dgdo::bench
