// Core::save / load / digest: the core's whole state as bytes, for snapshots.
//
// Layout (little-endian; str = u32 length + bytes; every list is u32 count + items):
//   u32 magic "DGCS", u32 version
//   scalars: now, ticked, next_nearby, next_stats, next_order_id, batch_due, counters, online_count
//   drivers      in creation order (drivers_ is dense and never erased; the id table and the
//                spatial index are rebuilt from it)
//   orders       by id (retained finished ones included)
//   searching    order ids (pickups come from the orders)
//   idem         (passenger, key) -> order
//   sessions     in first-seen order (InsertionMap), so a loaded core iterates them as the
//                original did; each: role, id, worker, conn, open, opened_ns (version 2)
//   nearby       by passenger
//   timers       offer, search, exhausted, retry, grace: every entry, stale ones included
//                (the expiry loops skip stale entries; dropping them would change nothing
//                today, but a copy is cheaper to trust than a rule)
//   finished     (finished ns, order id), oldest first
// live_by_passenger_ is derived (the non-terminal orders by passenger) and rebuilt on load.
//
// Per-driver and per-order fixed fields go through one packed struct each: at 100k drivers
// save() is one memcpy-sized append per driver instead of a dozen.
#include <algorithm>
#include <cstring>

#include "core/core.hpp"
#include "core/state_io.hpp"

namespace dgdo {

namespace io {

uint64_t hash64(const void* data, size_t n) {
    constexpr uint64_t k1 = 0x9E3779B97F4A7C15ull, k2 = 0xC2B2AE3D27D4EB4Full;
    const auto* p = static_cast<const uint8_t*>(data);
    uint64_t h = 0x27D4EB2F165667C5ull ^ (n * k1);
    while (n >= 8) {
        uint64_t w;
        std::memcpy(&w, p, 8);
        h ^= (w * k2);
        h = ((h << 31) | (h >> 33)) * k1;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h ^= (w * k2) ^ n;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    return h ^ (h >> 33);
}

}  // namespace io

namespace {

constexpr uint32_t kMagic = 0x53434744u;  // "DGCS"
// 2: a session's opened_ns (late opens from another worker are told to close: Core::on(SessionOpen)).
// Version 1 still loads, with opened_ns 0: every later open is newer, as version 1 took them.
// 3: an order's `matched` (bit 1 of its flags byte, beside estimate_sent), and the deliveries'
// format 2 inside (Deliveries::jump: each recipient's base, the counter new recipients start at).
// Versions 1 and 2 still load: their deliveries are format 1, and matched is set on the orders a
// driver holds or completed (one that an older engine saw accepted, then given up, is counted
// again if accepted again, once).
constexpr uint32_t kVersion = 3;
constexpr uint8_t kEstimateSent = 1, kMatched = 2;  // OrderFixed::flags

#pragma pack(push, 1)
struct DriverFixed {
    dgdo_point pos;
    float heading, speed_kmh;
    uint64_t grace_deadline_ns, offer, trip;
    uint8_t has_pos, online, connected, indexed;
};
struct OrderFixed {
    uint64_t id;
    dgdo_point pickup, dropoff;
    uint64_t created_ns, search_deadline_ns, offer_deadline_ns, retry_ns, exhausted_deadline_ns, last_estimate_ns,
        idem_key, finished_ns;
    uint8_t state, flags;  // flags: kEstimateSent | kMatched
};
#pragma pack(pop)

using io::get;
using io::get_count;
using io::get_str;
using io::put;
using io::put_str;

template <class Set>
void put_timers(std::string& out, const Set& s) {
    put(out, static_cast<uint32_t>(s.size()));
    for (const auto& [at, id] : s) {
        put(out, at);
        put(out, id);
    }
}

template <class Set>
bool get_timers(const uint8_t*& p, const uint8_t* end, Set& s) {
    uint32_t n = 0;
    if (!get_count(p, end, n, 16)) return false;
    for (uint32_t i = 0; i < n; ++i) {
        uint64_t at = 0, id = 0;
        if (!get(p, end, at) || !get(p, end, id)) return false;
        s.emplace_hint(s.end(), at, id);
    }
    return true;
}

}  // namespace

void Core::save(std::string& out) const {
    out.clear();
    out.reserve(64 + drivers_.size() * (sizeof(DriverFixed) + 16) + orders_.size() * (sizeof(OrderFixed) + 32) +
                sessions_.size() * 32);
    put(out, kMagic);
    put(out, kVersion);
    put(out, now_);
    put(out, static_cast<uint8_t>(ticked_));
    put(out, next_nearby_ns_);
    put(out, next_stats_ns_);
    put(out, next_order_id_);
    put(out, batch_due_ns_);
    put(out, counters_.orders_created);
    put(out, counters_.orders_matched);
    put(out, counters_.orders_completed);
    put(out, online_count_);

    put(out, static_cast<uint32_t>(drivers_.size()));
    for (const Driver& d : drivers_) {
        put_str(out, d.id);
        const DriverFixed f{d.pos, d.heading, d.speed_kmh, d.grace_deadline_ns, d.offer, d.trip,
                            d.has_pos, d.online, d.connected, d.indexed};
        put(out, f);
    }

    put(out, static_cast<uint32_t>(orders_.size()));
    for (const auto& [id, o] : orders_) {
        const OrderFixed f{o.id, o.pickup, o.dropoff, o.created_ns, o.search_deadline_ns, o.offer_deadline_ns,
                           o.retry_ns, o.exhausted_deadline_ns, o.last_estimate_ns, o.idem_key, o.finished_ns,
                           static_cast<uint8_t>(o.state),
                           static_cast<uint8_t>((o.estimate_sent ? kEstimateSent : 0) | (o.matched ? kMatched : 0))};
        put(out, f);
        put_str(out, o.passenger);
        put_str(out, o.driver);
        put(out, static_cast<uint32_t>(o.tried.size()));
        for (const auto& t : o.tried) put_str(out, t);
    }

    put(out, static_cast<uint32_t>(searching_.size()));
    for (const auto& [id, pickup] : searching_) put(out, id);

    put(out, static_cast<uint32_t>(idem_.size()));
    for (const auto& [k, order] : idem_) {
        put_str(out, k.first);
        put(out, k.second);
        put(out, order);
    }

    put(out, static_cast<uint32_t>(sessions_.size()));
    for (const auto& [k, s] : sessions_) {
        put(out, k.first);
        put_str(out, k.second);
        put(out, s.worker);
        put(out, s.conn);
        put(out, static_cast<uint8_t>(s.open));
        put(out, s.opened_ns);
    }

    put(out, static_cast<uint32_t>(nearby_.size()));
    for (const auto& [passenger, sub] : nearby_) {
        put_str(out, passenger);
        put(out, sub.center);
        put(out, sub.radius_m);
    }

    put_timers(out, offer_timers_);
    put_timers(out, search_timers_);
    put_timers(out, exhausted_timers_);
    put_timers(out, retry_timers_);
    put(out, static_cast<uint32_t>(grace_timers_.size()));
    for (const auto& [at, id] : grace_timers_) {
        put(out, at);
        put_str(out, id);
    }
    put_timers(out, finished_);
    delivery_.save(out);  // reliable-delivery state: seqs and history per recipient
}

bool Core::load(const uint8_t* data, size_t len) {
    if (!drivers_.empty() || !orders_.empty() || !sessions_.empty()) return false;  // a fresh core only
    const uint8_t* p = data;
    const uint8_t* end = data + len;
    uint32_t magic = 0, version = 0;
    if (!get(p, end, magic) || magic != kMagic || !get(p, end, version) || version < 1 || version > kVersion)
        return false;
    uint8_t ticked = 0;
    if (!get(p, end, now_) || !get(p, end, ticked) || !get(p, end, next_nearby_ns_) || !get(p, end, next_stats_ns_) ||
        !get(p, end, next_order_id_) || !get(p, end, batch_due_ns_) || !get(p, end, counters_.orders_created) ||
        !get(p, end, counters_.orders_matched) || !get(p, end, counters_.orders_completed) ||
        !get(p, end, online_count_))
        return false;
    ticked_ = ticked != 0;

    uint32_t n = 0;
    if (!get_count(p, end, n, 4 + sizeof(DriverFixed))) return false;
    for (uint32_t i = 0; i < n; ++i) {
        std::string id;
        DriverFixed f;
        if (!get_str(p, end, id) || id.empty() || !get(p, end, f)) return false;
        const IdKey k = IdKey::of(id);
        if (find_driver(k) != nullptr) return false;
        Driver& d = driver(k, id.data());
        d.pos = f.pos;
        d.heading = f.heading;
        d.speed_kmh = f.speed_kmh;
        d.grace_deadline_ns = f.grace_deadline_ns;
        d.offer = f.offer;
        d.trip = f.trip;
        d.has_pos = f.has_pos;
        d.online = f.online;
        d.connected = f.connected;
        if (f.indexed) index_put(d);  // in creation order; the index answers the same whatever the order
    }

    if (!get_count(p, end, n, sizeof(OrderFixed) + 12)) return false;
    for (uint32_t i = 0; i < n; ++i) {
        OrderFixed f;
        if (!get(p, end, f) || f.state > static_cast<uint8_t>(OrderState::NoDriver)) return false;
        Order& o = orders_[f.id];
        o.id = f.id;
        o.pickup = f.pickup;
        o.dropoff = f.dropoff;
        o.created_ns = f.created_ns;
        o.search_deadline_ns = f.search_deadline_ns;
        o.offer_deadline_ns = f.offer_deadline_ns;
        o.retry_ns = f.retry_ns;
        o.exhausted_deadline_ns = f.exhausted_deadline_ns;
        o.last_estimate_ns = f.last_estimate_ns;
        o.idem_key = f.idem_key;
        o.finished_ns = f.finished_ns;
        o.state = static_cast<OrderState>(f.state);
        o.estimate_sent = (f.flags & kEstimateSent) != 0;
        o.matched = version >= 3 ? (f.flags & kMatched) != 0 : has_trip(o.state) || o.state == OrderState::Completed;
        uint32_t tried = 0;
        if (!get_str(p, end, o.passenger) || !get_str(p, end, o.driver) || !get_count(p, end, tried, 4)) return false;
        for (uint32_t t = 0; t < tried; ++t) {
            std::string id;
            if (!get_str(p, end, id)) return false;
            o.tried.insert(o.tried.end(), std::move(id));
        }
        if (!is_terminal(o.state)) live_by_passenger_[o.passenger].insert(o.id);
    }

    if (!get_count(p, end, n, 8)) return false;
    for (uint32_t i = 0; i < n; ++i) {
        uint64_t id = 0;
        if (!get(p, end, id)) return false;
        auto it = orders_.find(id);
        if (it == orders_.end()) return false;
        searching_.emplace_hint(searching_.end(), id, it->second.pickup);
    }

    if (!get_count(p, end, n, 20)) return false;
    for (uint32_t i = 0; i < n; ++i) {
        std::string passenger;
        uint64_t key = 0, order = 0;
        if (!get_str(p, end, passenger) || !get(p, end, key) || !get(p, end, order)) return false;
        idem_.emplace_hint(idem_.end(), std::make_pair(std::move(passenger), key), order);
    }

    if (!get_count(p, end, n, version >= 2 ? 20 : 12)) return false;
    for (uint32_t i = 0; i < n; ++i) {
        uint8_t role = 0, open = 0;
        std::string id;
        Session s;
        if (!get(p, end, role) || !get_str(p, end, id) || !get(p, end, s.worker) || !get(p, end, s.conn) ||
            !get(p, end, open) || (version >= 2 && !get(p, end, s.opened_ns)))
            return false;
        s.open = open != 0;
        sessions_[{role, std::move(id)}] = s;  // Driver::session caches refill on the next location
    }

    if (!get_count(p, end, n, 28)) return false;
    for (uint32_t i = 0; i < n; ++i) {
        std::string passenger;
        NearbySub sub{};
        if (!get_str(p, end, passenger) || !get(p, end, sub.center) || !get(p, end, sub.radius_m)) return false;
        nearby_.emplace_hint(nearby_.end(), std::move(passenger), sub);
    }

    if (!get_timers(p, end, offer_timers_) || !get_timers(p, end, search_timers_) ||
        !get_timers(p, end, exhausted_timers_) || !get_timers(p, end, retry_timers_))
        return false;
    if (!get_count(p, end, n, 12)) return false;
    for (uint32_t i = 0; i < n; ++i) {
        uint64_t at = 0;
        std::string id;
        if (!get(p, end, at) || !get_str(p, end, id)) return false;
        grace_timers_.emplace_hint(grace_timers_.end(), at, std::move(id));
    }
    if (!get_count(p, end, n, 16)) return false;
    for (uint32_t i = 0; i < n; ++i) {
        uint64_t at = 0, id = 0;
        if (!get(p, end, at) || !get(p, end, id)) return false;
        finished_.emplace_back(at, id);
    }
    if (!delivery_.load(p, end)) return false;
    if (p != end) return false;
    // Every reference the core follows with .at() must resolve: a loaded core never throws later.
    for (const Driver& d : drivers_)
        if ((d.offer != 0 && !orders_.count(d.offer)) || (d.trip != 0 && !orders_.count(d.trip))) return false;
    for (const auto* timers : {&offer_timers_, &search_timers_, &exhausted_timers_, &retry_timers_})
        for (const auto& [at, id] : *timers)
            if (!orders_.count(id)) return false;
    return true;
}

uint64_t Core::digest() const {
    std::string bytes;
    save(bytes);
    return io::hash64(bytes.data(), bytes.size());
}

std::vector<uint16_t> Core::workers_with_open_sessions() const {
    std::vector<uint16_t> w;
    for (const auto& [k, s] : sessions_)
        if (s.open && std::find(w.begin(), w.end(), s.worker) == w.end()) w.push_back(s.worker);
    std::sort(w.begin(), w.end());
    return w;
}

}  // namespace dgdo
