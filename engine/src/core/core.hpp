// dgdo::Core — the dispatch state machine (business-logic-processor shape).
//
// apply(input) appends output records and returns; nothing else leaves the
// core. Time enters only as Tick; the core reads no clock and does no I/O,
// so the same input sequence always yields the same output bytes.
//
// What each input produces (a COMMAND_RESULT first whenever meta.corr != 0):
//   SESSION_OPEN/CLOSE  routing; a driver's close starts the grace timer. An open for a role + id
//                       whose session is open on another connection (any worker): SESSION_REPLACED
//                       to that older one first (its sidecar closes it 4001). Every open: SESSION_STATE
//                       to the opening connection, then (see resume()) the reliable records after
//                       its last_seq, or a snapshot: the final record of each of the actor's orders
//                       that ended since last_seq, ORDER_UPDATE for each live one (and NEW_ORDER
//                       for a driver's open offer)
//   DRIVER_LOCATION     first one after an accept: ORDER_UPDATE arriving to both sides; then
//                       DRIVER_POSITION (+ throttled ESTIMATE_UPDATE) to the passenger of its trip
//   DRIVER_STATUS       online: may trigger NEW_ORDER; offline: withdraws its offer
//   (any input that leaves a driver newly available: NEW_ORDER to it for the oldest
//    waiting order in reach, after the input's own outputs)
//   RIDE_REQUEST        ORDER_UPDATE searching, then NEW_ORDER to the nearest driver
//   ORDER_COMMAND       ORDER_UPDATE to passenger and driver; CANCEL_ORDER / NEW_ORDER as needed
//   NEARBY              a NEARBY_DRIVERS snapshot now and about once a second
//   Tick                offer expiry, search timeout, exhausted wait, grace expiry, due retries, the batch
//                       (batched mode), pruning of finished orders, stats
//
// Matching. Greedy (default): an order is offered to the nearest available
// driver within radius_m, else wide_radius_m, as soon as it is searching.
// Batched: searching orders wait for the window (batch_window_s from the first
// one); then one min-cost assignment (Hungarian, cost = pickup distance) over
// each order's batch_candidates nearest available drivers (radius_m, else
// wide_radius_m) decides every offer at once, in solves of at most
// batch_max_orders; the unmatched wait for the next.
//   WorkerDetached      SESSION_CLOSE for every session on that worker
//   Recovered           nothing: the next order id and every seq counter move up by its gap
//   Committed           nothing: the kept copies of what went out carry its publish time
//
// Reliable records (ORDER_UPDATE, NEW_ORDER, CANCEL_ORDER) carry a seq per recipient and are
// kept for resume in delivery_ (core/delivery.hpp), as deterministic as the rest.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "core/config.hpp"
#include "core/delivery.hpp"
#include "core/driver_index.hpp"
#include "core/id_table.hpp"
#include "core/insertion_map.hpp"
#include "core/order.hpp"
#include "core/trace.hpp"
#include "core/out_record.hpp"
#include "dgdo/events.h"

namespace dgdo {

struct Tick {
    uint64_t now_ns;
};
struct WorkerDetached {
    uint16_t worker;
};
// The engine recovered from its state directory, on its first start since the machine restarted
// (Persistence::start: the state directory's boot file). Under --fsync interval or never a power loss
// takes the journal's unsynced tail with it: the order ids and seqs that tail handed out would
// be handed out again, to other orders and messages. So the next order id and every seq
// counter move up by `gap` (kRecoveryGap) before anything else: journaled (and synced) like any
// input, so that a replay jumps where the live engine did.
struct Recovered {
    uint64_t gap;
};
// Above anything a lost tail can have handed out. Under `never` the kernel writes back dirty
// pages after ~30 s (dirty_expire_centisecs) + 5 s; under `interval`, 100 ms + one fdatasync,
// seconds at worst. The engine takes at most a few 100k inputs/s (README: ~200k/s ingest per
// host), each making at most one order id and a few reliable records: 35 s x 200k/s x 10 =
// 7e7 < 2^32 / 60. Room: order ids stay below 2^53 (exact as JSON numbers in every client)
// for 2^21 recoveries, and seqs below the router's 18-digit last_seq bound for 2^27; systemd
// holds a crash loop to 5 starts per 120 s (StartLimitBurst), i.e. at most ~3600 a day.
inline constexpr uint64_t kRecoveryGap = uint64_t{1} << 32;

// The reliable records stamped up to Deliveries::stamped() == `upto` went out at wall-clock
// `real_ns` (the loop's publish): their kept copies carry that time, so that a replay or a
// snapshot says when the change happened. Journaled ahead of the next input (a batch or a tick), so that a replay of the
// journal dates what the live engine dated.
struct Committed {
    uint64_t real_ns;
    uint64_t upto;
};

struct SessionOpen {
    dgdo_in_session rec;
};
struct SessionClose {
    dgdo_in_session rec;
};

using InputEvent = std::variant<SessionOpen, SessionClose, dgdo_in_driver_location, dgdo_in_driver_status,
                                dgdo_in_ride_request, dgdo_in_order_command, dgdo_in_nearby, Tick, WorkerDetached,
                                Recovered, Committed>;

// Decodes one inbound ring record; nullopt for an unknown type or a body whose
// length is not exactly the struct's size.
std::optional<InputEvent> decode_inbound(int32_t type, const uint8_t* body, uint32_t len);

struct Driver {
    std::string id;
    IdKey key;  // id's bytes: the key of Core's driver table
    dgdo_point pos{};
    bool has_pos = false;
    float heading = 0;
    float speed_kmh = 0;
    bool online = false;
    bool connected = true;  // false between a SESSION_CLOSE and the next SESSION_OPEN
    uint64_t grace_deadline_ns = 0;
    uint64_t offer = 0;  // order offered to this driver, 0 = none
    uint64_t trip = 0;   // order this driver is bound to, 0 = none
    bool indexed = false;                // in the index, which holds exactly the available drivers
    uint32_t index_handle = UINT32_MAX;  // its DriverIndex handle while indexed (if the index has handles)
    void* session = nullptr;             // cached &sessions_[{driver, id}] (never erased, so stable)
};

struct CoreStats {
    uint32_t drivers_online = 0;
    uint32_t drivers_available = 0;
    uint32_t active_orders = 0;
    uint64_t orders_created = 0;
    uint64_t orders_matched = 0;
    uint64_t orders_completed = 0;
};

class Core {
public:
    explicit Core(Config cfg = {}, std::unique_ptr<DriverIndex> index = nullptr);

    void apply(const InputEvent& ev, std::vector<OutRecord>& out);

    // Read-only views (tests, gauges).
    const Order* find_order(uint64_t id) const;
    const Driver* find_driver(const std::string& id) const;
    CoreStats stats() const;
    // An ENGINE_STATS record of the state as it is (the loop fills in its own fields), without
    // applying anything: what the loop sends while the journal holds it (no tick is taken then).
    OutRecord stats_record() const;
    uint64_t now_ns() const { return now_; }
    std::size_t order_count() const { return orders_.size(); }
    std::size_t idem_count() const { return idem_.size(); }
    const Deliveries& deliveries() const { return delivery_; }
    const Config& config() const { return cfg_; }
    uint64_t next_order_id() const { return next_order_id_; }

    // Snapshots (state_io.cpp). save() writes every member that matters, in an order that
    // depends only on the inputs applied, so equal states give equal bytes; digest() is a
    // hash of those bytes. load() fills a freshly constructed core (same Config) and rebuilds
    // what is derived (id table, spatial index); false on malformed bytes (discard the core).
    void save(std::string& out) const;
    bool load(const uint8_t* data, size_t len);
    uint64_t digest() const;
    // Workers that had open sessions: after a restart their sessions are gone with the old
    // process, so recovery applies a WorkerDetached for each.
    std::vector<uint16_t> workers_with_open_sessions() const;

    // Decision observer for offline replay (trace.hpp); null (the default) costs one branch.
    void set_trace(CoreTrace* t) { trace_ = t; }

private:
    struct Session {
        uint16_t worker = 0;
        uint32_t conn = 0;
        bool open = false;
        uint64_t opened_ns = 0;  // its SESSION_OPEN's recv_ns: when its sidecar took the upgrade
    };
    struct NearbySub {
        dgdo_point center;
        double radius_m;
    };
    using SessionKey = std::pair<uint8_t, std::string>;  // (role, id)
    struct SessionKeyHash {
        std::size_t operator()(const SessionKey& k) const noexcept {
            return std::hash<std::string>{}(k.second) * 31u + k.first;
        }
    };
    using Timer = std::pair<uint64_t, uint64_t>;         // (deadline ns, order id)

    void on(const SessionOpen& e);
    void resume(const dgdo_in_session& s, const std::string& who);
    void snapshot(uint8_t role, const std::string& who, bool with_ended, uint64_t ended_after);
    void on(const SessionClose& e);
    void on(const dgdo_in_driver_location& e);
    void on(const dgdo_in_driver_status& e);
    void on(const dgdo_in_ride_request& e);
    void on(const dgdo_in_order_command& e);
    void on(const dgdo_in_nearby& e);
    void on(const Tick& e);
    void on(const WorkerDetached& e);
    void on(const Recovered& e);
    void on(const Committed& e) { delivery_.dated(e.real_ns, e.upto); }

    // Validation helpers: return a dgdo_result (OK = proceed).
    uint8_t check_actor(const dgdo_in_meta& m, uint8_t role) const;
    void reply(const dgdo_in_meta& m, uint8_t status, uint64_t order_id = 0);

    // Effects.
    Driver& driver(const std::string& id);
    Driver* find_driver(const IdKey& k);
    Driver& driver(const IdKey& k, const char* chars);
    void index_put(Driver& d);
    void index_drop(Driver& d);
    // Call after anything that may change available(d): keeps the index equal to the
    // available drivers and queues a newly available one for the waiting orders.
    void sync_index(Driver& d);
    void match_freed();
    void offer_freed(const Driver& d);
    bool available(const Driver& d) const;
    void set_online(Driver& d, bool online);
    uint8_t driver_online(uint8_t role, const std::string& who) const;  // SESSION_STATE's `online`
    void learn_route(const dgdo_in_meta& m);
    void close_session(const SessionKey& key);
    void try_offer(Order& o);
    void make_offer(Order& o, const Candidate& c);
    void schedule_retry(Order& o);
    void clear_search_timers(Order& o);
    void retry_due();
    void arm_batch();
    void run_batch();
    struct BatchRow {
        uint64_t order;
        std::vector<Candidate> cands;  // nearest first
    };
    std::vector<Candidate> batch_candidates(const Order& o) const;
    void solve_batch(const std::vector<BatchRow>& rows);
    void finish(Order& o);
    void prune_finished();
    bool eligible_for(const Order& o, const std::string& driver_id) const;
    void enter_searching(Order& o);
    // Takes the offer back from o.driver (if any), excludes that driver, notifies it with `reason` (0 = silent).
    void withdraw_offer(Order& o, uint8_t reason);
    void expire_graces();
    void expire_searches();
    // Nobody left to offer o to: start its exhausted wait (or end it now when the wait is 0).
    void exhaust(Order& o);
    void expire_exhausted();
    void end_no_driver(Order& o);
    void expire_offers();
    void send_nearby(const std::string& passenger, const NearbySub& sub);
    void send_stats();
    void track(const Driver& d);

    // Output builders (one record per recipient).
    dgdo_out_meta to(uint8_t role, const std::string& id) const;
    // `assigned` false: the order never had an accepted driver (its o.driver only held an offer).
    void order_update(const Order& o, uint8_t role, const std::string& id, uint8_t reason = DGDO_REASON_NONE,
                      bool assigned = true);
    void update_both(const Order& o, uint8_t reason = DGDO_REASON_NONE);
    void cancel_order(const Order& o, const std::string& driver_id, uint8_t reason);
    void new_order(const Order& o, const Candidate& c);
    template <class T>
    void emit(int32_t type, const T& rec, size_t len = sizeof(T));

    uint64_t ns(double seconds) const;
    void trace_search(const Order& o, const std::string& picked) const;  // trace.cpp

    Config cfg_;
    std::unique_ptr<DriverIndex> index_;
    Deliveries delivery_;  // seq and history of reliable records, per recipient
    std::vector<OutRecord>* out_ = nullptr;
    uint64_t now_ = 0;
    bool ticked_ = false;
    uint64_t next_nearby_ns_ = 0;
    uint64_t next_stats_ns_ = 0;
    uint64_t next_order_id_ = 1001;
    uint64_t batch_due_ns_ = 0;  // 0 = no batch pending

    std::deque<Driver> drivers_;  // dense, never erased, stable references; never iterated in an order that reaches outputs
    IdTable driver_ids_;          // id -> index into drivers_
    std::map<uint64_t, Order> orders_;
    std::map<std::string, std::set<uint64_t>> live_by_passenger_;  // orders not yet terminal, for snapshots
    std::map<uint64_t, dgdo_point> searching_;  // orders in Searching with no offer out -> pickup
    std::vector<Driver*> freed_;                 // became available during this apply(), in that order
    std::map<std::pair<std::string, uint64_t>, uint64_t> idem_;  // (passenger, idem_key) -> live order
    InsertionMap<SessionKey, Session, SessionKeyHash> sessions_;  // never erased; iterates in first-seen order
    std::map<std::string, NearbySub> nearby_;
    std::set<Timer> offer_timers_;
    std::set<Timer> search_timers_;
    std::set<Timer> exhausted_timers_;
    std::set<Timer> retry_timers_;
    std::set<std::pair<uint64_t, std::string>> grace_timers_;
    std::deque<std::pair<uint64_t, uint64_t>> finished_;  // (finished ns, order id), oldest first
    CoreStats counters_;
    uint32_t online_count_ = 0;
    CoreTrace* trace_ = nullptr;
};

}  // namespace dgdo
