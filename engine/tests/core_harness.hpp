// Drives a Core with typed inputs and reads its outputs back as structs.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "core/core.hpp"

namespace dgdo::test {

inline constexpr dgdo_point kCenter{38.56, 68.78};  // Dushanbe
inline constexpr uint64_t kStartNs = 1'000'000'000'000ull;

// A point `north_m` metres north and `east_m` metres east of kCenter.
inline dgdo_point at(double north_m, double east_m = 0) {
    return dgdo_point{kCenter.lat + north_m / 111195.0, kCenter.lon + east_m / (111195.0 * 0.78205)};
}

inline dgdo_id make_id(const std::string& s) {
    dgdo_id id;
    std::memset(&id, 0, sizeof id);
    std::memcpy(id.chars, s.data(), s.size());
    return id;
}

inline std::string id_str(const dgdo_id& id) { return std::string(id.chars, strnlen(id.chars, sizeof id.chars)); }

template <class T>
T as(const OutRecord& r) {
    T v;
    std::memset(&v, 0, sizeof v);
    std::memcpy(&v, r.body.data(), std::min(sizeof v, r.body.size()));
    return v;
}

struct Harness {
    Core core;
    uint64_t now = kStartNs;
    uint64_t next_corr = 1;
    std::vector<OutRecord> all;  // every output since construction

    explicit Harness(Config cfg = {}, std::unique_ptr<DriverIndex> index = nullptr) : core(cfg, std::move(index)) {
        tick(0);
    }

    std::vector<OutRecord> step(const InputEvent& ev) {
        std::vector<OutRecord> out;
        core.apply(ev, out);
        all.insert(all.end(), out.begin(), out.end());
        return out;
    }

    std::vector<OutRecord> tick(double seconds) {
        now += static_cast<uint64_t>(seconds * 1e9);
        return step(Tick{now});
    }

    dgdo_in_meta meta(uint8_t role, const std::string& actor, uint16_t worker = 1, uint32_t conn = 7) {
        dgdo_in_meta m;
        std::memset(&m, 0, sizeof m);
        m.recv_ns = now;
        m.corr = next_corr++;
        m.conn = conn;
        m.worker = worker;
        m.role = role;
        m.actor = make_id(actor);
        return m;
    }

    std::vector<OutRecord> location(const std::string& d, dgdo_point p) {
        dgdo_in_driver_location e;
        std::memset(&e, 0, sizeof e);
        e.meta = meta(DGDO_ROLE_DRIVER, d);
        e.pos = p;
        return step(e);
    }

    std::vector<OutRecord> status(const std::string& d, uint8_t s) {
        dgdo_in_driver_status e;
        std::memset(&e, 0, sizeof e);
        e.meta = meta(DGDO_ROLE_DRIVER, d);
        e.status = s;
        return step(e);
    }

    std::vector<OutRecord> online(const std::string& d, dgdo_point p) {
        auto out = location(d, p);
        auto more = status(d, DGDO_DRIVER_ONLINE);
        out.insert(out.end(), more.begin(), more.end());
        return out;
    }

    std::vector<OutRecord> ride(const std::string& p, dgdo_point pickup = kCenter, uint64_t idem = 0,
                                dgdo_point dropoff = at(4000, 4000)) {
        dgdo_in_ride_request e;
        std::memset(&e, 0, sizeof e);
        e.meta = meta(DGDO_ROLE_PASSENGER, p);
        e.idem_key = idem;
        e.pickup = pickup;
        e.dropoff = dropoff;
        return step(e);
    }

    std::vector<OutRecord> command(uint8_t role, const std::string& actor, uint64_t order, uint8_t cmd) {
        dgdo_in_order_command e;
        std::memset(&e, 0, sizeof e);
        e.meta = meta(role, actor);
        e.order_id = order;
        e.command = cmd;
        return step(e);
    }
    std::vector<OutRecord> driver_cmd(const std::string& d, uint64_t order, uint8_t cmd) {
        return command(DGDO_ROLE_DRIVER, d, order, cmd);
    }
    std::vector<OutRecord> passenger_cmd(const std::string& p, uint64_t order, uint8_t cmd) {
        return command(DGDO_ROLE_PASSENGER, p, order, cmd);
    }

    // An open without last_seq is a first connect; with one, a resume.
    // `recv_ns`: when its sidecar took the upgrade (default: now).
    std::vector<OutRecord> session(bool open, uint8_t role, const std::string& actor, uint16_t worker, uint32_t conn,
                                   std::optional<uint64_t> last_seq = std::nullopt,
                                   std::optional<uint64_t> recv_ns = std::nullopt) {
        dgdo_in_session s;
        std::memset(&s, 0, sizeof s);
        s.meta = meta(role, actor, worker, conn);
        if (recv_ns) s.meta.recv_ns = *recv_ns;
        if (last_seq) {
            s.flags = DGDO_SESSION_HAS_LAST_SEQ;
            s.last_seq = *last_seq;
        }
        if (open) return step(SessionOpen{s});
        return step(SessionClose{s});
    }

    std::vector<OutRecord> nearby(const std::string& p, dgdo_point c, double radius, bool subscribe = true) {
        dgdo_in_nearby e;
        std::memset(&e, 0, sizeof e);
        e.meta = meta(DGDO_ROLE_PASSENGER, p);
        e.center = c;
        e.radius_m = radius;
        e.subscribe = subscribe;
        return step(e);
    }

    // Creates an order for `p` and returns its id (asserting the request succeeded).
    uint64_t order_for(const std::string& p, dgdo_point pickup = kCenter) {
        const auto out = ride(p, pickup);
        EXPECT_FALSE(out.empty());
        const auto r = as<dgdo_out_command_result>(out.at(0));
        EXPECT_EQ(r.status, DGDO_RESULT_OK);
        return r.order_id;
    }

    OrderState state(uint64_t order) const { return core.find_order(order)->state; }
};

inline std::vector<OutRecord> of_type(const std::vector<OutRecord>& out, int32_t type) {
    std::vector<OutRecord> r;
    for (const auto& o : out)
        if (o.type == type) r.push_back(o);
    return r;
}

inline std::vector<OutRecord> to_whom(const std::vector<OutRecord>& out, int32_t type, uint8_t role,
                                      const std::string& id) {
    std::vector<OutRecord> r;
    for (const auto& o : of_type(out, type)) {
        const auto m = as<dgdo_out_meta>(o);
        if (m.to_role == role && id_str(m.to_id) == id) r.push_back(o);
    }
    return r;
}

inline uint8_t result_of(const std::vector<OutRecord>& out) {
    EXPECT_FALSE(out.empty());
    if (out.empty()) return 255;
    EXPECT_EQ(out[0].type, DGDO_OUT_COMMAND_RESULT);
    return as<dgdo_out_command_result>(out[0]).status;
}

// The order id of the single NEW_ORDER sent to `driver` in `out`, or 0.
inline uint64_t offered_to(const std::vector<OutRecord>& out, const std::string& driver) {
    const auto offers = to_whom(out, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, driver);
    return offers.size() == 1 ? as<dgdo_out_new_order>(offers[0]).order_id : 0;
}

inline std::vector<uint8_t> statuses_to(const std::vector<OutRecord>& out, uint8_t role, const std::string& id) {
    std::vector<uint8_t> s;
    for (const auto& r : to_whom(out, DGDO_OUT_ORDER_UPDATE, role, id)) s.push_back(as<dgdo_out_order_update>(r).status);
    return s;
}

// The seq of each reliable record in `out` addressed to (role, id), in order.
inline std::vector<uint64_t> seqs_to(const std::vector<OutRecord>& out, uint8_t role, const std::string& id) {
    std::vector<uint64_t> s;
    for (const auto& o : out) {
        if (!Deliveries::reliable(o.type)) continue;
        const auto m = as<dgdo_out_meta>(o);
        if (m.to_role == role && id_str(m.to_id) == id) s.push_back(seq_of(o));
    }
    return s;
}

// The SESSION_STATE in `out` (there must be exactly one).
inline dgdo_out_session session_state(const std::vector<OutRecord>& out) {
    const auto st = of_type(out, DGDO_OUT_SESSION_STATE);
    EXPECT_EQ(st.size(), 1u);
    return st.empty() ? dgdo_out_session{} : as<dgdo_out_session>(st[0]);
}

}  // namespace dgdo::test
