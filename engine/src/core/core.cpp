#include "core/core.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <type_traits>

#include "core/geo.hpp"
#include "core/hungarian.hpp"

namespace dgdo {

namespace {

template <class T>
std::optional<InputEvent> decode_as(const uint8_t* body, uint32_t len) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (len != sizeof(T)) return std::nullopt;
    T rec;
    std::memcpy(&rec, body, sizeof rec);
    return InputEvent{rec};
}

// 1-36 chars of [A-Za-z0-9_.:-], NUL-padded.
std::optional<std::string> parse_id(const dgdo_id& id) {
    size_t n = 0;
    while (n < sizeof id.chars && id.chars[n] != '\0') {
        const char c = id.chars[n];
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                        c == '.' || c == ':' || c == '-';
        if (!ok) return std::nullopt;
        ++n;
    }
    if (n == 0 || n > DGDO_ID_MAX) return std::nullopt;
    return std::string(id.chars, n);
}

// parse_id without the string: the id's bytes as a table key.
bool parse_key(const dgdo_id& id, IdKey& key) {
    size_t n = 0;
    while (n < sizeof id.chars && id.chars[n] != '\0') {
        const char c = id.chars[n];
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                        c == '.' || c == ':' || c == '-';
        if (!ok) return false;
        ++n;
    }
    if (n == 0 || n > DGDO_ID_MAX) return false;
    key = IdKey::of(id.chars, n);
    return true;
}

std::string actor_of(const dgdo_in_meta& m) { return parse_id(m.actor).value_or(std::string()); }

void put_id(dgdo_id& dst, const std::string& src) {
    std::memset(dst.chars, 0, sizeof dst.chars);
    std::memcpy(dst.chars, src.data(), std::min(src.size(), static_cast<size_t>(DGDO_ID_MAX)));
}

// A retried request carries the very numbers it carried the first time.
bool same_point(dgdo_point a, dgdo_point b) { return a.lat == b.lat && a.lon == b.lon; }

template <class T>
T blank() {
    T rec;
    std::memset(&rec, 0, sizeof rec);  // padding included: output bytes must be deterministic
    return rec;
}

}  // namespace

std::optional<InputEvent> decode_inbound(int32_t type, const uint8_t* body, uint32_t len) {
    switch (type) {
    case DGDO_IN_SESSION_OPEN: {
        if (len != sizeof(dgdo_in_session)) return std::nullopt;
        SessionOpen e;
        std::memcpy(&e.rec, body, sizeof e.rec);
        return InputEvent{e};
    }
    case DGDO_IN_SESSION_CLOSE: {
        if (len != sizeof(dgdo_in_session)) return std::nullopt;
        SessionClose e;
        std::memcpy(&e.rec, body, sizeof e.rec);
        return InputEvent{e};
    }
    case DGDO_IN_DRIVER_LOCATION: return decode_as<dgdo_in_driver_location>(body, len);
    case DGDO_IN_DRIVER_STATUS: return decode_as<dgdo_in_driver_status>(body, len);
    case DGDO_IN_RIDE_REQUEST: return decode_as<dgdo_in_ride_request>(body, len);
    case DGDO_IN_ORDER_COMMAND: return decode_as<dgdo_in_order_command>(body, len);
    case DGDO_IN_NEARBY: return decode_as<dgdo_in_nearby>(body, len);
    default: return std::nullopt;
    }
}

Core::Core(Config cfg, std::unique_ptr<DriverIndex> index)
    : cfg_(cfg),
      index_(index ? std::move(index) : std::make_unique<GridIndex>(cfg.cell_m, cfg.ref_lat)),
      delivery_(cfg.history_depth) {}

void Core::apply(const InputEvent& ev, std::vector<OutRecord>& out) {
    out_ = &out;
    std::visit(
        [this](const auto& e) {
            using T = std::decay_t<decltype(e)>;
            if constexpr (std::is_same_v<T, SessionOpen> || std::is_same_v<T, SessionClose>) {
            } else if constexpr (std::is_same_v<T, dgdo_in_driver_location>) {
                // learn_route inside on(): the hot path parses the id once
            } else if constexpr (requires { e.meta; }) {
                learn_route(e.meta);
            }
            on(e);
        },
        ev);
    match_freed();
    out_ = nullptr;
}

uint64_t Core::ns(double seconds) const {
    // At least 1 ns so a timer set now never fires in the tick that set it.
    const double v = seconds * 1e9;
    return v < 1.0 ? 1 : static_cast<uint64_t>(v);
}

const Order* Core::find_order(uint64_t id) const {
    auto it = orders_.find(id);
    return it == orders_.end() ? nullptr : &it->second;
}

const Driver* Core::find_driver(const std::string& id) const {
    const IdKey k = IdKey::of(id);
    const uint32_t i = driver_ids_.find(k.hash(), [&](uint32_t v) { return drivers_[v].key == k; });
    return i == IdTable::kNone ? nullptr : &drivers_[i];
}

Driver* Core::find_driver(const IdKey& k) {
    const uint32_t i = driver_ids_.find(k.hash(), [&](uint32_t v) { return drivers_[v].key == k; });
    return i == IdTable::kNone ? nullptr : &drivers_[i];
}

// O(1): it runs every stats tick, and walking 100k drivers and every retained order took milliseconds.
CoreStats Core::stats() const {
    CoreStats s = counters_;
    s.drivers_online = online_count_;
    s.drivers_available = static_cast<uint32_t>(index_->size());  // the index holds exactly the available
    s.active_orders = static_cast<uint32_t>(orders_.size() - finished_.size());  // finished_: the terminal ones kept
    return s;
}

// ---- validation ------------------------------------------------------------

uint8_t Core::check_actor(const dgdo_in_meta& m, uint8_t role) const {
    if (m.role != role) return DGDO_RESULT_FORBIDDEN;
    if (!parse_id(m.actor)) return DGDO_RESULT_BAD_MESSAGE;
    return DGDO_RESULT_OK;
}

void Core::reply(const dgdo_in_meta& m, uint8_t status, uint64_t order_id) {
    if (m.corr == 0) return;
    auto r = blank<dgdo_out_command_result>();
    r.meta.to_conn = m.conn;
    r.meta.to_worker = m.worker;
    r.meta.to_role = m.role;
    if (auto id = parse_id(m.actor)) put_id(r.meta.to_id, *id);
    r.corr = m.corr;
    r.order_id = order_id;
    r.status = status;
    emit(DGDO_OUT_COMMAND_RESULT, r);
}

// ---- sessions ----------------------------------------------------------------

void Core::on(const SessionOpen& e) {
    const dgdo_in_meta& m = e.rec.meta;
    const auto id = parse_id(m.actor);
    const bool role_ok = m.role == DGDO_ROLE_DRIVER || m.role == DGDO_ROLE_PASSENGER || m.role == DGDO_ROLE_ADMIN;
    if (!role_ok || (!id && m.role != DGDO_ROLE_ADMIN)) return reply(m, DGDO_RESULT_BAD_MESSAGE);
    reply(m, DGDO_RESULT_OK);
    const std::string who = id.value_or(std::string());
    Session& s = sessions_[{m.role, who}];
    // This very connection's open again (its upgrade time says so): its sidecar carried the first
    // over from a dead engine's ring, then re-announced the session. It is open, and its welcome
    // and snapshot went out with the first: say where it stands, with nothing to replay (resumed:
    // the last seq handed out, as resume() says it, not the counter above a recovery's jump).
    if (s.open && s.worker == m.worker && s.conn == m.conn && s.opened_ns == m.recv_ns) {
        auto st = blank<dgdo_out_session>();
        st.meta = to(m.role, who);
        st.meta.to_conn = m.conn;
        st.seq = delivery_.issued({m.role, who});
        st.resumed = 1;
        st.online = driver_online(m.role, who);
        emit(DGDO_OUT_SESSION_STATE, st);
        return;
    }
    // One app id on one connection: the older one is told to close (4001) wherever it is. The
    // sidecar closes a same-worker one by itself as well; for another worker this is the only news.
    // Older by when the sidecars took the upgrades (recv_ns, the host's CLOCK_MONOTONIC, read
    // before the 101 went out), not by arrival: two workers' rings are read in turn, so an app
    // that reconnects at once can have its new connection's open arrive first. That late open
    // is the one told to close; it must not take the session from the connection the app is on.
    if (s.open && (s.worker != m.worker || s.conn != m.conn) && !who.empty()) {
        const bool late = m.recv_ns < s.opened_ns;
        auto r = blank<dgdo_out_session_replaced>();
        r.meta.to_conn = late ? m.conn : s.conn;
        r.meta.to_worker = late ? m.worker : s.worker;
        r.meta.to_role = m.role;
        put_id(r.meta.to_id, who);
        r.by_worker = late ? s.worker : m.worker;
        emit(DGDO_OUT_SESSION_REPLACED, r);
        if (late) return;  // no welcome: its sidecar closes it (4001), and its close is ignored
        // What the replaced connection subscribed to ends with it, as at its close: the new one
        // (perhaps another device) asked for nothing yet.
        if (m.role == DGDO_ROLE_PASSENGER) nearby_.erase(who);
    }
    s = Session{m.worker, m.conn, true, m.recv_ns};
    resume(e.rec, who);
    if (m.role != DGDO_ROLE_DRIVER) return;
    Driver& d = driver(who);
    if (!d.connected) {
        grace_timers_.erase({d.grace_deadline_ns, d.id});
        d.connected = true;
        d.grace_deadline_ns = 0;
        sync_index(d);
    }
}

uint8_t Core::driver_online(uint8_t role, const std::string& who) const {
    if (role != DGDO_ROLE_DRIVER) return 0;
    const Driver* d = find_driver(who);
    return d != nullptr && d->online ? 1 : 0;
}

// Answers an open: SESSION_STATE (the app's welcome), then, to the opening connection,
//  * with last_seq == the latest seq handed out: nothing more (resumed);
//  * with every record after last_seq still held: those records, original seqs and bytes but for
//    an offer's expires_in_s, which says the time left now (resumed);
//    either way its seq is the last one handed out, where the replay ends (below the counter
//    after a recovery's jump, Deliveries::jump);
//  * otherwise: a snapshot as fresh reliable records (not resumed): the final record of each of
//    the actor's orders that ended after last_seq (a completed is never silently lost), then
//    its live orders. Without last_seq, the live orders only.
// A last_seq ahead of the counter is a number this engine never handed out (its state was
// lost): numbering goes on above it, so the app's seqs keep growing, and every ended order
// still retained is included. One within reach that it never handed out (in a recovery's
// jump: the lost journal tail numbered it) gets the snapshot too, numbered above the counter.
void Core::resume(const dgdo_in_session& s, const std::string& who) {
    const dgdo_in_meta& m = s.meta;
    const Deliveries::Key key{m.role, who};
    const bool has_last = (s.flags & DGDO_SESSION_HAS_LAST_SEQ) != 0;
    std::vector<OutRecord> missed;
    const bool resumed = has_last && delivery_.since(key, s.last_seq, missed);
    uint64_t ended_after = s.last_seq;
    if (has_last && s.last_seq > delivery_.latest(key)) {
        delivery_.raise(key, s.last_seq);
        ended_after = 0;
    }
    auto st = blank<dgdo_out_session>();
    st.meta = to(m.role, who);
    st.meta.to_conn = m.conn;
    st.seq = resumed ? (missed.empty() ? s.last_seq : seq_of(missed.back())) : delivery_.latest(key);
    st.resumed = resumed ? 1 : 0;
    st.online = driver_online(m.role, who);
    emit(DGDO_OUT_SESSION_STATE, st);
    const size_t first = out_->size();
    if (resumed) {
        for (OutRecord& r : missed) {
            // An offer's clock kept running while the app was away: say the time left now, as a
            // snapshot does (0 once the offer is gone; what ended it follows in the replay).
            if (r.type == DGDO_OUT_NEW_ORDER) {
                auto n = blank<dgdo_out_new_order>();
                std::memcpy(&n, r.body.data(), std::min(sizeof n, r.body.size()));
                const Order* o = find_order(n.order_id);
                const bool open = o != nullptr && o->state == OrderState::Offered && o->driver == who;
                n.expires_in_s = open && o->offer_deadline_ns > now_
                                     ? static_cast<double>(o->offer_deadline_ns - now_) / 1e9
                                     : 0.0;
                std::memcpy(r.body.data(), &n, std::min(sizeof n, r.body.size()));
            }
            out_->push_back(std::move(r));
        }
    } else {
        snapshot(m.role, who, has_last, ended_after);
    }
    for (size_t i = first; i < out_->size(); ++i) {  // to this connection, wherever the app was before
        dgdo_out_meta meta;
        std::memcpy(&meta, (*out_)[i].body.data(), sizeof meta);
        meta.to_conn = m.conn;
        meta.to_worker = m.worker;
        std::memcpy((*out_)[i].body.data(), &meta, sizeof meta);
    }
}

// The state of what the app is part of, as fresh reliable records.
void Core::snapshot(uint8_t role, const std::string& who, bool with_ended, uint64_t ended_after) {
    if (with_ended) {
        std::vector<OutRecord> again;
        delivery_.ended_since({role, who}, ended_after, again);
        for (OutRecord& r : again) {
            const uint64_t was = seq_of(r);
            dgdo_out_meta meta = to(role, who);
            std::memcpy(&meta.commit_real_ns, r.body.data() + offsetof(dgdo_out_meta, commit_real_ns),
                        sizeof meta.commit_real_ns);  // when it ended, not when it is sent again
            std::memcpy(r.body.data(), &meta, sizeof meta);
            delivery_.stamp(r);
            delivery_.resent_final(r, was);  // an app that loses this copy is sent it again
            out_->push_back(std::move(r));
        }
    }
    if (role == DGDO_ROLE_PASSENGER) {
        auto it = live_by_passenger_.find(who);
        if (it == live_by_passenger_.end()) return;
        for (uint64_t id : it->second) {
            const uint64_t at = delivery_.changed_at({role, who}, id);
            order_update(orders_.at(id), DGDO_ROLE_PASSENGER, who);
            delivery_.date_as(out_->back(), at);
        }
        return;
    }
    if (role != DGDO_ROLE_DRIVER) return;
    const Driver* d = find_driver(who);
    if (d == nullptr) return;
    if (d->trip != 0) {
        const uint64_t at = delivery_.changed_at({role, who}, d->trip);
        order_update(orders_.at(d->trip), DGDO_ROLE_DRIVER, who);
        delivery_.date_as(out_->back(), at);
    }
    if (d->offer != 0) {
        const Order& o = orders_.at(d->offer);
        const double distance = d->has_pos ? haversine_m(d->pos, o.pickup) : 0.0;
        const uint64_t at = delivery_.changed_at({role, who}, d->offer);
        new_order(o, Candidate{who, d->pos, distance});
        delivery_.date_as(out_->back(), at);
    }
}

void Core::on(const SessionClose& e) {
    const dgdo_in_meta& m = e.rec.meta;
    const SessionKey key{m.role, actor_of(m)};
    auto it = sessions_.find(key);
    // A replacing connection may have opened before the old one's close arrived.
    const bool current = it != sessions_.end() && it->second.open && it->second.worker == m.worker &&
                         it->second.conn == m.conn;
    reply(m, DGDO_RESULT_OK);
    if (current) close_session(key);
}

void Core::on(const Recovered& e) {
    next_order_id_ += e.gap;
    delivery_.jump(e.gap);
}

void Core::on(const WorkerDetached& e) {
    std::vector<SessionKey> gone;
    for (const auto& [key, s] : sessions_)
        if (s.open && s.worker == e.worker) gone.push_back(key);
    for (const auto& key : gone) close_session(key);
}

// Without an open session, the worker a command came through is the best route back.
void Core::learn_route(const dgdo_in_meta& m) {
    if (m.role != DGDO_ROLE_DRIVER && m.role != DGDO_ROLE_PASSENGER) return;
    const auto id = parse_id(m.actor);
    if (!id) return;
    Session& s = sessions_[{m.role, *id}];
    if (!s.open) s.worker = m.worker;
}

void Core::close_session(const SessionKey& key) {
    sessions_[key].open = false;  // keep the worker: the best route if the app comes back there
    if (key.first == DGDO_ROLE_PASSENGER) nearby_.erase(key.second);
    if (key.first != DGDO_ROLE_DRIVER) return;
    Driver& d = driver(key.second);
    if (!d.connected) return;
    d.connected = false;
    sync_index(d);
    d.grace_deadline_ns = now_ + ns(cfg_.grace_s);
    grace_timers_.insert({d.grace_deadline_ns, d.id});
}

// ---- drivers ---------------------------------------------------------------

Driver& Core::driver(const std::string& id) { return driver(IdKey::of(id), id.data()); }

// `chars` holds the key's len bytes.
Driver& Core::driver(const IdKey& k, const char* chars) {
    const uint64_t h = k.hash();
    const uint32_t i = driver_ids_.find(h, [&](uint32_t v) { return drivers_[v].key == k; });
    if (i != IdTable::kNone) return drivers_[i];
    Driver& d = drivers_.emplace_back();
    d.id.assign(chars, k.len);
    d.key = k;
    driver_ids_.insert(h, static_cast<uint32_t>(drivers_.size() - 1));
    return d;
}

// Into the index at d.pos; a driver already indexed moves by its handle.
void Core::index_put(Driver& d) {
    if (d.index_handle != UINT32_MAX) return index_->move(d.index_handle, d.pos);
    index_->upsert(d.id, d.pos);
    d.indexed = true;
    d.index_handle = index_->handle(d.id);
}

void Core::index_drop(Driver& d) {
    if (!d.indexed) return;
    index_->erase(d.id);
    d.indexed = false;
    d.index_handle = UINT32_MAX;
}

void Core::sync_index(Driver& d) {
    if (!available(d)) return index_drop(d);
    if (d.indexed) return;
    index_put(d);
    freed_.push_back(&d);
}

// After the input's own effects, so a freed driver's NEW_ORDER follows them.
void Core::match_freed() {
    for (size_t i = 0; i < freed_.size(); ++i) {  // offers only take drivers: freed_ cannot grow here
        const Driver& d = *freed_[i];
        if (!available(d) || searching_.empty()) continue;
        if (cfg_.matching == Matching::Batched)
            arm_batch();
        else
            offer_freed(d);
    }
    freed_.clear();
}

// One more driver can only change the outcome for waiting orders within its
// reach that have not tried it; the oldest of them gets the first chance.
void Core::offer_freed(const Driver& d) {
    const double reach = cfg_.wide_radius_m * 1.01 + 1.0;  // equirectangular vs haversine slack
    const double lon_m = kMetresPerDegree * std::cos(d.pos.lat * kPi / 180.0);
    std::vector<uint64_t> near;
    for (const auto& [id, pickup] : searching_) {
        const double dy = (pickup.lat - d.pos.lat) * kMetresPerDegree, dx = (pickup.lon - d.pos.lon) * lon_m;
        if (dy * dy + dx * dx <= reach * reach && !orders_.at(id).tried.count(d.id)) near.push_back(id);
    }
    for (uint64_t id : near) {
        if (!available(d)) break;
        try_offer(orders_.at(id));
    }
}

bool Core::available(const Driver& d) const {
    return d.online && d.connected && d.has_pos && d.offer == 0 && d.trip == 0;
}

void Core::set_online(Driver& d, bool online) {
    if (d.online != online) online_count_ += online ? 1u : -1u;
    d.online = online;
    sync_index(d);
}

// The hot path: apply() leaves learn_route to this handler, which does the same
// with one parse of the id and one driver-table lookup (the session is cached
// on the driver), and moves an indexed driver by its handle.
void Core::on(const dgdo_in_driver_location& e) {
    const dgdo_in_meta& m = e.meta;
    IdKey k;
    if (m.role != DGDO_ROLE_DRIVER || !parse_key(m.actor, k)) {
        learn_route(m);
        return reply(m, check_actor(m, DGDO_ROLE_DRIVER));  // never OK here
    }
    Driver* known = find_driver(k);
    Session* s = known != nullptr ? static_cast<Session*>(known->session) : nullptr;
    if (s == nullptr) {
        s = &sessions_[{m.role, std::string(m.actor.chars, k.len)}];
        if (known != nullptr) known->session = s;
    }
    if (!s->open) s->worker = m.worker;
    if (!valid_point(e.pos)) return reply(m, DGDO_RESULT_BAD_MESSAGE);
    reply(m, DGDO_RESULT_OK);
    Driver& d = known != nullptr ? *known : driver(k, m.actor.chars);
    d.session = s;
    d.pos = e.pos;
    d.has_pos = true;
    d.heading = e.heading;
    d.speed_kmh = e.speed_kmh;
    if (d.indexed)
        index_put(d);
    else
        sync_index(d);  // its first position may make it available
    if (d.trip != 0) {
        Order& o = orders_.at(d.trip);
        if (o.state == OrderState::Accepted) {  // on the way: the passenger hears it before the position
            o.state = OrderState::Arriving;
            update_both(o);
        }
    }
    track(d);
}

// While a trip is bound to the driver, its positions go to the passenger.
void Core::track(const Driver& d) {
    if (d.trip == 0) return;
    Order& o = orders_.at(d.trip);
    if (!has_trip(o.state)) return;
    auto p = blank<dgdo_out_driver_position>();
    p.meta = to(DGDO_ROLE_PASSENGER, o.passenger);
    p.order_id = o.id;
    put_id(p.driver_id, d.id);
    p.pos = d.pos;
    p.heading = d.heading;
    p.speed_kmh = d.speed_kmh;
    emit(DGDO_OUT_DRIVER_POSITION, p);

    if (o.state == OrderState::Arrived) return;  // at the pickup: nothing to estimate until the trip starts
    if (o.estimate_sent && now_ - o.last_estimate_ns < ns(cfg_.estimate_interval_s)) return;
    auto est = blank<dgdo_out_estimate_update>();
    est.meta = to(DGDO_ROLE_PASSENGER, o.passenger);
    est.order_id = o.id;
    if (o.state == OrderState::Accepted || o.state == OrderState::Arriving) {
        est.distance_m = haversine_m(d.pos, o.pickup);
        est.eta_s = drive_s(est.distance_m, cfg_.detour, cfg_.speed_kmh) + cfg_.pickup_overhead_s;
    } else {
        est.distance_m = haversine_m(d.pos, o.dropoff);
        est.eta_s = drive_s(est.distance_m, cfg_.detour, cfg_.speed_kmh);
    }
    emit(DGDO_OUT_ESTIMATE_UPDATE, est);
    o.estimate_sent = true;
    o.last_estimate_ns = now_;
}

void Core::on(const dgdo_in_driver_status& e) {
    if (uint8_t r = check_actor(e.meta, DGDO_ROLE_DRIVER)) return reply(e.meta, r);
    if (e.status != DGDO_DRIVER_ONLINE && e.status != DGDO_DRIVER_OFFLINE)
        return reply(e.meta, DGDO_RESULT_BAD_MESSAGE);
    reply(e.meta, DGDO_RESULT_OK);
    Driver& d = driver(actor_of(e.meta));
    const bool online = e.status == DGDO_DRIVER_ONLINE;
    if (d.online == online) return;
    set_online(d, online);
    if (online) return;
    if (d.offer != 0) {
        Order& o = orders_.at(d.offer);
        withdraw_offer(o, DGDO_REASON_DRIVER_OFFLINE);
        try_offer(o);
    }
}

// ---- orders ----------------------------------------------------------------

void Core::on(const dgdo_in_ride_request& e) {
    if (uint8_t r = check_actor(e.meta, DGDO_ROLE_PASSENGER)) return reply(e.meta, r);
    if (!valid_point(e.pickup) || !valid_point(e.dropoff)) return reply(e.meta, DGDO_RESULT_BAD_MESSAGE);
    const std::string passenger = actor_of(e.meta);
    if (e.idem_key != 0) {  // a retry of a live request: the same order; the key names nothing else
        auto it = idem_.find({passenger, e.idem_key});
        if (it != idem_.end()) {
            const Order& o = orders_.at(it->second);
            if (same_point(o.pickup, e.pickup) && same_point(o.dropoff, e.dropoff))
                return reply(e.meta, DGDO_RESULT_OK, o.id);
            return reply(e.meta, DGDO_RESULT_CONFLICT);  // the id is in use by a different live request
        }
    }
    const uint64_t id = next_order_id_++;
    Order& o = orders_[id];
    o.id = id;
    o.passenger = passenger;
    o.pickup = e.pickup;
    o.dropoff = e.dropoff;
    o.created_ns = now_;
    o.idem_key = e.idem_key;
    if (e.idem_key != 0) idem_[{passenger, e.idem_key}] = id;
    live_by_passenger_[passenger].insert(id);
    ++counters_.orders_created;
    reply(e.meta, DGDO_RESULT_OK, id);
    enter_searching(o);
    order_update(o, DGDO_ROLE_PASSENGER, o.passenger);
    try_offer(o);
}

void Core::on(const dgdo_in_order_command& e) {
    const dgdo_in_meta& m = e.meta;
    if (e.command < DGDO_CMD_ACCEPT || e.command > DGDO_CMD_CANCEL) return reply(m, DGDO_RESULT_BAD_MESSAGE, e.order_id);
    const auto actor = parse_id(m.actor);
    if (!actor) return reply(m, DGDO_RESULT_BAD_MESSAGE, e.order_id);
    auto it = orders_.find(e.order_id);
    if (it == orders_.end()) return reply(m, DGDO_RESULT_NOT_FOUND, e.order_id);
    Order& o = it->second;

    Party party;
    if (m.role == DGDO_ROLE_ADMIN) {
        // An operator ends live orders, nothing more: one that has ended is nothing to it.
        if (e.command != DGDO_CMD_CANCEL) return reply(m, DGDO_RESULT_FORBIDDEN, o.id);
        if (is_terminal(o.state)) return reply(m, DGDO_RESULT_NOT_FOUND, o.id);
        party = Party::Operator;
    } else if (m.role == DGDO_ROLE_PASSENGER && *actor == o.passenger)
        party = Party::Passenger;
    else if (m.role == DGDO_ROLE_DRIVER && !o.driver.empty() && *actor == o.driver)
        party = Party::CurrentDriver;
    else if (m.role == DGDO_ROLE_DRIVER && o.tried.count(*actor))
        party = Party::FormerDriver;
    else
        return reply(m, DGDO_RESULT_FORBIDDEN, o.id);

    const auto next = next_state(o.state, e.command, party);
    if (!next) return reply(m, DGDO_RESULT_CONFLICT, o.id);
    reply(m, DGDO_RESULT_OK, o.id);

    const OrderState prev = o.state;
    switch (e.command) {
    case DGDO_CMD_ACCEPT: {
        Driver& d = driver(o.driver);
        offer_timers_.erase({o.offer_deadline_ns, o.id});
        search_timers_.erase({o.search_deadline_ns, o.id});
        d.offer = 0;
        d.trip = o.id;
        o.state = *next;
        o.estimate_sent = false;
        // Once per order: one its driver gave up and the next accepted is one order matched.
        if (!o.matched) ++counters_.orders_matched;
        o.matched = true;
        update_both(o);
        return;
    }
    case DGDO_CMD_ARRIVED:
        o.state = *next;
        update_both(o);
        return;
    case DGDO_CMD_START:
        o.state = *next;
        o.estimate_sent = false;  // the last estimate was to the pickup: the next position brings the dropoff's at once
        update_both(o);
        return;
    case DGDO_CMD_COMPLETE: {
        Driver& d = driver(o.driver);
        d.trip = 0;
        o.state = *next;
        finish(o);
        ++counters_.orders_completed;
        update_both(o);
        sync_index(d);
        return;
    }
    default: break;
    }

    // REJECT or CANCEL.
    if (party == Party::Passenger || party == Party::Operator) {  // the order ends
        const uint8_t reason =
            party == Party::Operator ? DGDO_REASON_OPERATOR_CANCELED : DGDO_REASON_PASSENGER_CANCELED;
        const std::string bound = o.driver;
        search_timers_.erase({o.search_deadline_ns, o.id});
        offer_timers_.erase({o.offer_deadline_ns, o.id});
        searching_.erase(o.id);
        o.state = *next;  // o.driver stays: the record of who held the order
        finish(o);
        order_update(o, DGDO_ROLE_PASSENGER, o.passenger, reason, has_trip(prev));
        if (!bound.empty()) {
            Driver& d = driver(bound);
            if (has_trip(prev)) order_update(o, DGDO_ROLE_DRIVER, bound, reason);
            cancel_order(o, bound, reason);
            d.offer = 0;
            d.trip = 0;
            sync_index(d);
        }
        return;
    }
    if (prev == OrderState::Offered) {  // the driver declines its offer
        // A cancel gets the same reliable cancel_order as one after accept (a reject is answered by its ack).
        withdraw_offer(o, e.command == DGDO_CMD_CANCEL ? DGDO_REASON_DRIVER_CANCELED : DGDO_REASON_NONE);
        try_offer(o);
        return;
    }
    // The driver gives up an accepted trip: back to search without it.
    Driver& d = driver(o.driver);
    d.trip = 0;
    o.tried.insert(d.id);
    sync_index(d);
    const std::string gone = o.driver;
    o.driver.clear();
    enter_searching(o);
    cancel_order(o, gone, DGDO_REASON_DRIVER_CANCELED);
    order_update(o, DGDO_ROLE_PASSENGER, o.passenger, DGDO_REASON_DRIVER_CANCELED);
    try_offer(o);
}

void Core::enter_searching(Order& o) {
    o.state = OrderState::Searching;
    search_timers_.erase({o.search_deadline_ns, o.id});
    o.search_deadline_ns = now_ + ns(cfg_.search_timeout_s);
    search_timers_.insert({o.search_deadline_ns, o.id});
    searching_.emplace(o.id, o.pickup);
}

void Core::withdraw_offer(Order& o, uint8_t reason) {
    if (o.state != OrderState::Offered) return;
    Driver& d = driver(o.driver);
    offer_timers_.erase({o.offer_deadline_ns, o.id});
    if (reason != DGDO_REASON_NONE) cancel_order(o, d.id, reason);
    d.offer = 0;
    o.tried.insert(d.id);
    sync_index(d);
    o.driver.clear();
    o.state = OrderState::Searching;
    searching_.emplace(o.id, o.pickup);
}

bool Core::eligible_for(const Order& o, const std::string& driver_id) const {
    const Driver* d = find_driver(driver_id);
    return d != nullptr && available(*d) && !o.tried.count(driver_id);
}

void Core::try_offer(Order& o) {
    if (o.state != OrderState::Searching) return;
    if (cfg_.matching == Matching::Batched) return arm_batch();
    auto eligible = [this, &o](const std::string& id) { return eligible_for(o, id); };
    // One search: the nearest within wide_radius_m is the nearest within radius_m whenever
    // one is there, so "radius_m, else wide_radius_m" needs no second scan.
    const auto c = index_->nearest(o.pickup, std::max(cfg_.radius_m, cfg_.wide_radius_m), eligible);
    if (trace_) trace_search(o, c ? c->id : std::string());
    if (c) return make_offer(o, *c);
    schedule_retry(o);
    exhaust(o);
}

void Core::schedule_retry(Order& o) {
    if (o.retry_ns != 0) return;
    // Up to a quarter interval later by order id, so a burst of failures does not retry in one tick.
    const uint64_t every = ns(cfg_.retry_interval_s);
    const uint64_t spread = ((o.id * 0x9E3779B97F4A7C15ull) >> 56) * (every / 4) / 256;
    o.retry_ns = now_ + every + spread;
    retry_timers_.insert({o.retry_ns, o.id});
}

void Core::retry_due() {
    for (uint32_t n = 0; n < cfg_.retries_per_tick && !retry_timers_.empty() && retry_timers_.begin()->first <= now_;
         ++n) {
        const uint64_t id = retry_timers_.begin()->second;
        retry_timers_.erase(retry_timers_.begin());
        Order& o = orders_.at(id);
        o.retry_ns = 0;
        try_offer(o);
    }
}

void Core::exhaust(Order& o) {
    if (o.exhausted_deadline_ns != 0) return;  // already waiting: a retry that finds nobody does not extend it
    if (cfg_.exhausted_wait_s <= 0) return end_no_driver(o);
    o.exhausted_deadline_ns = now_ + ns(cfg_.exhausted_wait_s);
    if (trace_) trace_->note(o.id, "nobody left in reach: waits " + std::to_string(cfg_.exhausted_wait_s) + " s for a new driver");
    exhausted_timers_.insert({o.exhausted_deadline_ns, o.id});
}

// An order that stops searching (offered or finished) leaves the retry and exhausted-wait queues.
void Core::clear_search_timers(Order& o) {
    exhausted_timers_.erase({o.exhausted_deadline_ns, o.id});
    o.exhausted_deadline_ns = 0;
    retry_timers_.erase({o.retry_ns, o.id});
    o.retry_ns = 0;
}

void Core::make_offer(Order& o, const Candidate& c) {
    Driver& d = driver(c.id);
    d.offer = o.id;
    sync_index(d);
    clear_search_timers(o);
    o.state = OrderState::Offered;
    o.driver = d.id;
    // The search timeout ends the order, offer or not (expire_searches): an offer made near it
    // gets only what is left, so that expires_in_s tells the driver the time it really has.
    o.offer_deadline_ns = std::min(now_ + ns(cfg_.offer_timeout_s), o.search_deadline_ns);
    offer_timers_.insert({o.offer_deadline_ns, o.id});
    searching_.erase(o.id);
    new_order(o, c);
}

void Core::arm_batch() {
    if (batch_due_ns_ == 0) batch_due_ns_ = now_ + ns(cfg_.batch_window_s);
}

// The batch_candidates nearest eligible drivers within radius_m, else within
// wide_radius_m. Nearest-first, so the ones within radius_m are a prefix of the
// wide search: one scan answers both.
std::vector<Candidate> Core::batch_candidates(const Order& o) const {
    auto eligible = [this, &o](const std::string& d) { return eligible_for(o, d); };
    auto c = index_->nearest_k(o.pickup, std::max(cfg_.radius_m, cfg_.wide_radius_m), cfg_.batch_candidates, eligible);
    if (!c.empty() && c.front().distance_m <= cfg_.radius_m)
        c.erase(std::find_if(c.begin(), c.end(), [this](const Candidate& x) { return x.distance_m > cfg_.radius_m; }),
                c.end());
    return c;
}

// Min-cost assignments over the waiting orders and their nearest available
// drivers, at most batch_max_orders per solve (Hungarian is O(n² m)). Orders
// whose nearest driver is closest are solved first; a later solve sees only
// the drivers earlier ones left. Rows are ordered by (nearest distance, order
// id), columns by driver id: the same state always gives the same offers.
void Core::run_batch() {
    batch_due_ns_ = 0;
    std::vector<BatchRow> rows;
    std::vector<uint64_t> none_left;
    for (const auto& [id, pickup] : searching_) {
        auto c = batch_candidates(orders_.at(id));
        if (trace_) trace_search(orders_.at(id), std::string());  // the solve picks; NEW_ORDER says whom
        if (c.empty())
            none_left.push_back(id);
        else
            rows.push_back(BatchRow{id, std::move(c)});
    }
    std::stable_sort(rows.begin(), rows.end(), [](const BatchRow& a, const BatchRow& b) {
        return a.cands.front().distance_m < b.cands.front().distance_m;
    });
    const size_t cap = std::max<size_t>(1, cfg_.batch_max_orders);
    for (size_t from = 0; from < rows.size(); from += cap) {
        std::vector<BatchRow> chunk(  // rows are not read again: move, not copy, the candidates
            std::make_move_iterator(rows.begin() + static_cast<std::ptrdiff_t>(from)),
            std::make_move_iterator(rows.begin() + static_cast<std::ptrdiff_t>(std::min(rows.size(), from + cap))));
        if (from > 0) {
            for (BatchRow& r : chunk) {
                const Order& o = orders_.at(r.order);
                std::erase_if(r.cands, [this, &o](const Candidate& c) { return !eligible_for(o, c.id); });
                if (r.cands.empty()) r.cands = batch_candidates(o);
            }
            std::erase_if(chunk, [](const BatchRow& r) { return r.cands.empty(); });  // outbid: next window
        }
        solve_batch(chunk);
    }
    for (uint64_t id : none_left) exhaust(orders_.at(id));  // after the loop: this may end orders
    if (!searching_.empty()) arm_batch();  // the unmatched wait for the next window
}

void Core::solve_batch(const std::vector<BatchRow>& rows) {
    if (rows.empty()) return;
    std::map<std::string, int> cols;  // driver id -> column, in id order
    for (const BatchRow& r : rows)
        for (const auto& cand : r.cands) cols.emplace(cand.id, 0);
    int next = 0;
    for (auto& [id, col] : cols) col = next++;
    const int n = static_cast<int>(rows.size());
    const int m = std::max(n, static_cast<int>(cols.size()));  // dummy columns when drivers are short
    // Larger than any sum of real costs: as many orders as possible get a driver, then the least total distance.
    const double no_pair = (cfg_.wide_radius_m + 1.0) * (n + 1);
    std::vector<double> cost(static_cast<size_t>(n) * static_cast<size_t>(m), no_pair);
    for (int i = 0; i < n; ++i)
        for (const auto& cand : rows[static_cast<size_t>(i)].cands)
            cost[static_cast<size_t>(i) * static_cast<size_t>(m) + static_cast<size_t>(cols.at(cand.id))] =
                cand.distance_m;
    const std::vector<int> pick = hungarian(cost, n, m);
    for (int i = 0; i < n; ++i) {
        const BatchRow& r = rows[static_cast<size_t>(i)];
        const int col = pick[static_cast<size_t>(i)];
        for (const auto& cand : r.cands) {
            if (cols.at(cand.id) != col) continue;
            make_offer(orders_.at(r.order), cand);
            break;
        }
    }
}

// Idempotency keys are scoped to the live order: once it ends, the same request id is a new
// request (a new session reusing "r1" never gets an old, finished order back).
void Core::finish(Order& o) {
    clear_search_timers(o);
    if (o.idem_key != 0) {
        auto k = idem_.find({o.passenger, o.idem_key});
        if (k != idem_.end() && k->second == o.id) idem_.erase(k);
    }
    o.finished_ns = now_;
    finished_.emplace_back(now_, o.id);
    auto live = live_by_passenger_.find(o.passenger);
    if (live != live_by_passenger_.end() && live->second.erase(o.id) && live->second.empty())
        live_by_passenger_.erase(live);
}

// Finished orders are kept retention_s, then forgotten: later commands on them are not_found,
// and their delivery state goes (final records; idle recipients' history).
void Core::prune_finished() {
    const uint64_t keep = ns(cfg_.retention_s);
    while (!finished_.empty() && finished_.front().first + keep <= now_) {
        const uint64_t id = finished_.front().second;
        finished_.pop_front();
        auto it = orders_.find(id);
        if (it == orders_.end()) continue;
        orders_.erase(it);
        delivery_.forget_order(id);
    }
}

// ---- nearby ----------------------------------------------------------------

void Core::on(const dgdo_in_nearby& e) {
    if (uint8_t r = check_actor(e.meta, DGDO_ROLE_PASSENGER)) return reply(e.meta, r);
    const std::string passenger = actor_of(e.meta);
    if (!e.subscribe) {
        reply(e.meta, DGDO_RESULT_OK);
        nearby_.erase(passenger);
        return;
    }
    if (!valid_point(e.center) || !std::isfinite(e.radius_m) || e.radius_m < 0 ||
        e.radius_m > cfg_.nearby_max_radius_m)
        return reply(e.meta, DGDO_RESULT_BAD_MESSAGE);
    reply(e.meta, DGDO_RESULT_OK);
    const NearbySub sub{e.center, e.radius_m > 0 ? e.radius_m : cfg_.nearby_default_radius_m};
    nearby_[passenger] = sub;
    send_nearby(passenger, sub);
}

void Core::send_nearby(const std::string& passenger, const NearbySub& sub) {
    auto rec = blank<dgdo_out_nearby_drivers>();
    rec.meta = to(DGDO_ROLE_PASSENGER, passenger);
    const auto found = index_->within(sub.center, sub.radius_m, DGDO_NEARBY_MAX);
    rec.count = static_cast<uint32_t>(found.size());
    for (size_t i = 0; i < found.size(); ++i) {
        put_id(rec.drivers[i].driver_id, found[i].id);
        rec.drivers[i].pos = found[i].pos;
    }
    // Variable length: only `count` entries travel.
    emit(DGDO_OUT_NEARBY_DRIVERS, rec, DGDO_NEARBY_HEAD_SIZE + found.size() * sizeof(dgdo_nearby_entry));
}

// ---- time ------------------------------------------------------------------

void Core::on(const Tick& e) {
    if (e.now_ns < now_) return;  // time never runs backwards inside the core
    now_ = e.now_ns;
    if (!ticked_) {
        ticked_ = true;
        next_nearby_ns_ = now_ + ns(cfg_.nearby_interval_s);
        next_stats_ns_ = now_ + ns(cfg_.stats_interval_s);
    }
    expire_searches();
    expire_exhausted();
    expire_graces();
    expire_offers();
    if (cfg_.matching == Matching::Greedy)
        retry_due();
    else if (!searching_.empty())
        arm_batch();
    if (batch_due_ns_ != 0 && now_ >= batch_due_ns_) run_batch();
    prune_finished();
    if (now_ >= next_nearby_ns_) {
        next_nearby_ns_ = now_ + ns(cfg_.nearby_interval_s);
        for (const auto& [passenger, sub] : nearby_) send_nearby(passenger, sub);
    }
    if (now_ >= next_stats_ns_) {
        next_stats_ns_ = now_ + ns(cfg_.stats_interval_s);
        send_stats();
    }
}

void Core::expire_searches() {
    while (!search_timers_.empty() && search_timers_.begin()->first <= now_) {
        const uint64_t id = search_timers_.begin()->second;
        search_timers_.erase(search_timers_.begin());
        Order& o = orders_.at(id);
        if (o.state == OrderState::Offered) withdraw_offer(o, DGDO_REASON_OFFER_EXPIRED);
        if (o.state == OrderState::Searching) end_no_driver(o);
    }
}

void Core::expire_exhausted() {
    while (!exhausted_timers_.empty() && exhausted_timers_.begin()->first <= now_) {
        const uint64_t id = exhausted_timers_.begin()->second;
        exhausted_timers_.erase(exhausted_timers_.begin());
        Order& o = orders_.at(id);
        o.exhausted_deadline_ns = 0;
        if (o.state == OrderState::Searching) end_no_driver(o);
    }
}

// Only from Searching: an outstanding offer is withdrawn first by the caller.
void Core::end_no_driver(Order& o) {
    search_timers_.erase({o.search_deadline_ns, o.id});
    searching_.erase(o.id);
    o.state = OrderState::NoDriver;
    finish(o);
    order_update(o, DGDO_ROLE_PASSENGER, o.passenger, DGDO_REASON_NO_DRIVER);
}

void Core::expire_graces() {
    while (!grace_timers_.empty() && grace_timers_.begin()->first <= now_) {
        const std::string id = grace_timers_.begin()->second;
        grace_timers_.erase(grace_timers_.begin());
        Driver& d = driver(id);
        if (d.connected) continue;
        d.grace_deadline_ns = 0;
        if (d.offer != 0) {
            Order& o = orders_.at(d.offer);
            withdraw_offer(o, DGDO_REASON_DRIVER_DISCONNECTED);
            try_offer(o);
        }
        if (d.online) set_online(d, false);
    }
}

void Core::expire_offers() {
    while (!offer_timers_.empty() && offer_timers_.begin()->first <= now_) {
        const auto [deadline, id] = *offer_timers_.begin();
        offer_timers_.erase(offer_timers_.begin());
        Order& o = orders_.at(id);
        if (o.state != OrderState::Offered || o.offer_deadline_ns != deadline) continue;
        withdraw_offer(o, DGDO_REASON_OFFER_EXPIRED);
        try_offer(o);
    }
}

void Core::send_stats() { out_->push_back(stats_record()); }

OutRecord Core::stats_record() const {
    const CoreStats s = stats();
    auto rec = blank<dgdo_out_engine_stats>();
    rec.meta.to_role = DGDO_ROLE_ADMIN;
    rec.drivers_online = s.drivers_online;
    rec.drivers_available = s.drivers_available;
    rec.active_orders = s.active_orders;
    rec.orders_created = s.orders_created;
    rec.orders_matched = s.orders_matched;
    rec.orders_completed = s.orders_completed;
    OutRecord r{DGDO_OUT_ENGINE_STATS, std::vector<uint8_t>(sizeof rec)};  // not reliable: no seq
    std::memcpy(r.body.data(), &rec, sizeof rec);
    return r;
}

// ---- output ----------------------------------------------------------------

dgdo_out_meta Core::to(uint8_t role, const std::string& id) const {
    auto meta = blank<dgdo_out_meta>();
    meta.to_role = role;
    put_id(meta.to_id, id);
    auto it = sessions_.find({role, id});
    if (it != sessions_.end()) meta.to_worker = it->second.worker;
    return meta;  // to_conn 0: the sidecar routes by role + id, which survives reconnects
}

void Core::order_update(const Order& o, uint8_t role, const std::string& id, uint8_t reason, bool assigned) {
    auto u = blank<dgdo_out_order_update>();
    u.meta = to(role, id);
    u.order_id = o.id;
    u.status = app_status(o.state);
    u.reason = reason;
    // The passenger gets driver_id "once assigned" (protocol.md): a driver that only holds an
    // offer (the passenger reads "searching") or held it when the order ended is nobody to it.
    if (role != DGDO_ROLE_PASSENGER || (assigned && o.state != OrderState::Offered)) put_id(u.driver_id, o.driver);
    put_id(u.passenger_id, o.passenger);
    emit(DGDO_OUT_ORDER_UPDATE, u);
    if (is_terminal(o.state)) delivery_.keep_final(out_->back());  // the order's last word to this one
}

void Core::update_both(const Order& o, uint8_t reason) {
    order_update(o, DGDO_ROLE_PASSENGER, o.passenger, reason);
    order_update(o, DGDO_ROLE_DRIVER, o.driver, reason);
}

void Core::cancel_order(const Order& o, const std::string& driver_id, uint8_t reason) {
    auto c = blank<dgdo_out_cancel_order>();
    c.meta = to(DGDO_ROLE_DRIVER, driver_id);
    c.order_id = o.id;
    c.reason = reason;
    emit(DGDO_OUT_CANCEL_ORDER, c);
    delivery_.keep_final(out_->back());  // the end of this driver's part in the order
}

void Core::new_order(const Order& o, const Candidate& c) {
    auto n = blank<dgdo_out_new_order>();
    n.meta = to(DGDO_ROLE_DRIVER, c.id);
    n.order_id = o.id;
    put_id(n.passenger_id, o.passenger);
    n.pickup = o.pickup;
    n.dropoff = o.dropoff;
    n.distance_m = c.distance_m;
    n.eta_s = drive_s(c.distance_m, cfg_.detour, cfg_.speed_kmh) + cfg_.pickup_overhead_s;
    // Time left on the offer: the full timeout when made, less in a snapshot.
    n.expires_in_s = o.offer_deadline_ns > now_ ? static_cast<double>(o.offer_deadline_ns - now_) / 1e9 : 0.0;
    emit(DGDO_OUT_NEW_ORDER, n);
}

// Reliable records get their recipient's next seq here, and a copy is kept for resume.
template <class T>
void Core::emit(int32_t type, const T& rec, size_t len) {
    OutRecord r{type, std::vector<uint8_t>(len)};
    std::memcpy(r.body.data(), &rec, len);
    if (Deliveries::reliable(type)) delivery_.stamp(r);
    out_->push_back(std::move(r));
}

}  // namespace dgdo
