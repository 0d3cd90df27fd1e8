// The I/O loop around the core: rings in, core.apply, rings out, doorbells.
// It makes no dispatch decision; it only moves bytes and time.
#pragma once

#include <sys/epoll.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/core.hpp"
#include "dgdo/ring.h"
#include "loop/cli.hpp"
#include "loop/latency_histogram.hpp"
#include "loop/log_throttle.hpp"
#include "loop/persistence.hpp"
#include "loop/sd_notify.hpp"
#include "loop/shm_segment.hpp"

namespace dgdo {

class EventLoop {
public:
    EventLoop(const Options& opt, uint64_t epoch);
    ~EventLoop();
    EventLoop(const EventLoop&) = delete;
    EventLoop& operator=(const EventLoop&) = delete;

    // Listens and sets up epoll, the tick timer and the signal fd. 0 or -errno.
    int init();
    // Runs until SIGINT/SIGTERM; returns the exit code.
    int run();
    // init() failed on the state directory, and said why (what to do) itself: nothing to add.
    bool state_refused() const { return state_refused_; }

private:
    struct Worker {
        uint16_t id = 0;
        int32_t pid = 0;  // as its hello said: named when another worker asks for the same id
        uint64_t serial = 0;  // epoll key; a re-attached worker gets a new one
        int ctl_fd = -1;
        int engine_bell = -1;  // the sidecar rings it when our "in" consumer is parked
        int worker_bell = -1;  // we ring it when the worker's "out" consumer is parked
        ShmSegment in, out;  // memfds, passed to the worker at attach
        dgdo_ring_consumer cons{};
        dgdo_ring_producer prod{};
        // Behind a full "out" ring (see write_out()): every record in order, a driver position
        // replaced in place by a newer one for the same recipient, driver and order.
        struct Queued {
            OutRecord rec;
            std::string position_key;  // empty unless a coalescable driver position
        };
        std::deque<Queued> pending;
        uint64_t pending_base = 0;                            // sequence number of pending.front()
        std::unordered_map<std::string, uint64_t> position_at;  // position key -> its sequence number
        size_t pending_bytes = 0;
        uint64_t coalesced = 0;
        bool wedged = false;  // its order records passed kMaxPendingBytes: detached at the next turn
        bool wrote = false;
        bool parked = false;
        uint64_t peek_end = 0;  // ring position after the records peeked for the current batch
        uint64_t answers_end = 0;  // sequence number just past the last COMMAND_RESULT queued in pending
        // The batch up to peek_end is journaled and applied, but some of its answers (COMMAND_RESULTs)
        // wait in `pending`: it stays in the ring, so a kill now leaves it to the sidecar's salvage,
        // and flush_pending() releases it once they are written. The ring is not peeked meanwhile:
        // a peek starts at the unreleased head and would hand us the same records again.
        bool held = false;
        ~Worker();
    };

    void handle(const epoll_event& ev);
    void accept_all();
    void on_hello(uint64_t serial);
    void attach(int fd, uint16_t worker_id, int32_t pid);
    void refuse(int fd, uint16_t worker_id, int32_t pid, int32_t status);
    void detach(uint16_t worker_id, const char* why);
    size_t drain(const std::vector<Worker*>& from);
    size_t drain_all();
    // A loop-made input (tick, detach): journaled, applied, its outputs published.
    void input(const InputEvent& ev);
    void apply(const InputEvent& ev);
    // Words as the sidecar uses them (sidecar/session/core.py): publish = put records into a ring
    // for the other process; deliver = the delivery contract (seq, history: core/delivery.hpp);
    // send = a frame on an app's socket (the sidecar's job). publish() stamps the commit times
    // of this batch's outputs and writes each to its worker's out ring, once the batch is on disk
    // as the fsync policy promises; false (nothing published, the loop stopping) if it is not.
    bool publish();
    void write_out(Worker& w, const OutRecord& rec);  // publish one record to one worker's out ring
    void fill_stats(OutRecord& rec) const;
    void send_stats_now(uint64_t now);
    void flush_pending(Worker& w);
    void release(Worker& w);  // after publish(): w's batch leaves its ring, or is held (Worker::held)
    void detach_wedged();
    void ring_doorbells();
    bool park_all();
    void unpark_all();
    void tick();
    void beat();
    // A snapshot if one is due (Persistence::after_batch), but never while a batch is held (see the .cpp).
    void snapshot_if_due(uint64_t now);
    // The journal refused a write (rc -errno): see stalled_.
    void stall(int rc, uint64_t now);
    // While stalled: writes the held batch if the journal takes it now, then applies, publishes
    // and releases it, and the loop goes on as before.
    void retry_journal(uint64_t now);
    // The one-line status systemd shows (`systemctl status`): workers, drivers, orders.
    std::string status_line() const;
    bool any_pending() const;
    uint64_t match_percentile(unsigned p) const;
    Worker* by_serial(uint64_t serial);

    static void on_record(void* ctx, int32_t type, const uint8_t* body, uint32_t len);
    void take(Worker& w, int32_t type, const uint8_t* body, uint32_t len);
    void relay_fleet(Worker& w, const uint8_t* body, uint32_t len);
    void notify_fleet(uint16_t worker_id, uint32_t notice);

    const Options opt_;
    const uint64_t epoch_;
    Core core_;
    Persistence persist_;
    uint64_t clock_offset_ = 0;        // added to CLOCK_MONOTONIC so the core's time never runs back after a restart
    std::vector<InputEvent> batch_;    // peeked, journaled, then applied
    // Publishes whose wall-clock time the core has not been told yet (Committed): journaled
    // ahead of the next input (a peeked record or the next tick), never alone: a write of
    // their own would cost a sync per publish under --fsync batch. Lost in a crash before
    // then, a replay stamps those few copies with the time they are sent again.
    std::vector<Committed> undated_;
    uint64_t dated_upto_ = 0;  // Deliveries::stamped() at the latest publish
    Worker* peeking_ = nullptr;
    uint64_t resent_ = 0;
    std::vector<OutRecord> out_;
    void journal_dates(std::vector<InputEvent>& into);
    int epoll_fd_ = -1, listen_fd_ = -1, timer_fd_ = -1, beat_fd_ = -1, signal_fd_ = -1;
    bool stop_ = false;
    bool state_refused_ = false;
    bool failed_ = false;  // the journal could not be synced (fsync batch): exit non-zero
    // The journal could not be written (a full disk; a read-only or failing one). Nothing unjournaled
    // is ever applied, and exiting would only start a crash loop on the same full disk, so the loop
    // holds: what it had peeked stays unreleased in its rings (unreleased_: their workers' serials),
    // the inputs it made itself wait in unapplied_, no ring is read, no tick is taken, and the rings'
    // heartbeats stop, so that every sidecar refuses commands at once with engine_unavailable and
    // answers /healthz 503. Every beat tries the write again; once the disk takes it, all of it is
    // applied in order and the loop goes on. Systemd's watchdog is still pinged: the loop is fine.
    bool stalled_ = false;
    int stall_err_ = 0;
    uint64_t stalled_since_ns_ = 0;
    uint64_t stall_said_ns_ = 0;
    std::vector<InputEvent> unapplied_;
    std::vector<uint64_t> unreleased_;
    uint64_t next_serial_ = 1;
    std::map<uint16_t, std::unique_ptr<Worker>> workers_;
    std::map<uint64_t, int> hello_wait_;  // serial -> accepted fd that has not said hello yet
    std::vector<uint64_t> match_ns_;      // recent offer-decision times, for ENGINE_STATS
    size_t match_next_ = 0;
    LatencyHistogram match_hist_;         // every offer-decision time since start, for /metrics
    uint64_t dropped_ = 0;
    uint64_t stats_sent_ns_ = 0;  // the loop's last ENGINE_STATS of its own (send_stats_now())
    // Lines a sidecar can cause with every record it sends: at most one of each kind per 10 s.
    LogThrottle bad_inbound_log_{10'000'000'000ull}, bad_fleet_log_{10'000'000'000ull};
    // systemd (Type=notify): READY when the loop runs, WATCHDOG pings and STATUS from beat().
    SdNotify notify_;
    NotifySchedule notify_schedule_;
};

}  // namespace dgdo
