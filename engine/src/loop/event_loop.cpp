#include "loop/event_loop.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>

#include "loop/control_server.hpp"

namespace dgdo {

namespace {

// epoll keys: kind in the top byte, an attachment serial below.
enum Kind : uint64_t { kListen = 1, kTimer, kSignal, kHello, kControl, kDoorbell, kBeat };
constexpr uint64_t key(Kind k, uint64_t serial = 0) { return (static_cast<uint64_t>(k) << 56) | serial; }
constexpr Kind kind_of(uint64_t key) { return static_cast<Kind>(key >> 56); }
constexpr uint64_t serial_of(uint64_t key) { return key & ((1ull << 56) - 1); }

constexpr uint32_t kBatch = 256;     // records per ring per drain: bounds the time one worker holds the loop
constexpr size_t kMatchWindow = 1024;
// Order records one worker may have waiting behind its full out ring before it counts as wedged
// (write_out()): ~250k records, minutes of a busy city's traffic for one stalled sidecar.
constexpr size_t kMaxPendingBytes = 64u << 20;

uint64_t clock_ns(clockid_t id) {
    timespec ts{};
    clock_gettime(id, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// A control socket whose sidecar is still there: no hang-up, no error, no EOF pending.
bool peer_alive(int fd) {
    pollfd p{fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) < 0) return true;  // cannot tell: keep the holder
    if (p.revents & (POLLHUP | POLLRDHUP | POLLERR)) return false;
    if (p.revents & POLLIN) {
        char c;
        return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) != 0;  // 0: EOF
    }
    return true;
}

// Records the admin views (sidecar/session/admin_feed.py) are built from, besides FLEET.
bool watched_by_admins(int32_t type) {
    return type == DGDO_OUT_ORDER_UPDATE || type == DGDO_OUT_NEW_ORDER || type == DGDO_OUT_CANCEL_ORDER ||
           type == DGDO_OUT_ESTIMATE_UPDATE;
}

void close_fd(int& fd) {
    if (fd >= 0) close(fd);
    fd = -1;
}

// The tail of a throttled line (LogThrottle): how many like it were left out before it.
std::string left_out_note(uint64_t n) {
    return n == 0 ? std::string() : " (" + std::to_string(n) + " more like this left out before)";
}

void add_fd(int epoll_fd, int fd, uint64_t k) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = k;
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) std::fprintf(stderr, "dgdo-engine: ! epoll add: %s\n", std::strerror(errno));
}

}  // namespace

EventLoop::Worker::~Worker() {
    close_fd(ctl_fd);
    close_fd(engine_bell);
    close_fd(worker_bell);
}

EventLoop::EventLoop(const Options& opt, uint64_t epoch)
    : opt_(opt),
      epoch_(epoch),
      core_(opt.core),
      persist_(opt.persist),
      notify_(SdNotify::from_env()),
      notify_schedule_(notify_.watchdog_ns()) {}

EventLoop::~EventLoop() {
    workers_.clear();  // unmaps and closes every segment (a worker's own mapping stays its own)
    for (auto& [serial, fd] : hello_wait_) close(fd);
    if (listen_fd_ >= 0) {
        close_fd(listen_fd_);
        unlink_control(opt_.control);
    }
    close_fd(timer_fd_);
    close_fd(beat_fd_);
    close_fd(signal_fd_);
    close_fd(epoll_fd_);
}

int EventLoop::init() {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) return -errno;
    signal(SIGPIPE, SIG_IGN);
    // A file size limit (LimitFSIZE=, ulimit -f) is a write the disk refuses (EFBIG), which the
    // loop holds on like a full disk, not a reason to die.
    signal(SIGXFSZ, SIG_IGN);
    signal_fd_ = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    beat_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (signal_fd_ < 0 || epoll_fd_ < 0 || timer_fd_ < 0 || beat_fd_ < 0) return -errno;
    auto every = [](int fd, uint64_t ms) {
        itimerspec period{};
        period.it_interval.tv_sec = static_cast<time_t>(ms / 1000);
        period.it_interval.tv_nsec = static_cast<long>((ms % 1000) * 1000000);
        period.it_value = period.it_interval;
        return timerfd_settime(fd, 0, &period, nullptr);
    };
    if (every(timer_fd_, opt_.tick_ms) != 0 || every(beat_fd_, DGDO_CTL_HEARTBEAT_MS) != 0) return -errno;
    // Ring segments are memfds (ShmSegment): there are no leftovers of an earlier run to look
    // for. A live engine on our control socket is the one thing that refuses the start.
    if (const int rc = probe_control(opt_.control); rc != 0) return rc;
    listen_fd_ = listen_control(opt_.control);
    if (listen_fd_ < 0) {
        const int err = listen_fd_;
        listen_fd_ = -1;
        return err;
    }
    // After the refusals above: a second engine must not touch our state directory.
    const uint64_t mono = clock_ns(CLOCK_MONOTONIC);
    if (const int rc = persist_.start(core_, opt_.core, mono); rc != 0) {
        state_refused_ = true;
        return rc;
    }
    if (const int rc = persist_.jump_error(); rc != 0) {  // held from the start: nothing may go before it
        unapplied_.push_back(Recovered{kRecoveryGap});
        stall(rc, mono);
    }
    // On the same boot the monotonic clock went on while we were down, so offers and timers
    // resume on it; after a reboot it restarted below the recovered time: continue from there.
    if (mono < core_.now_ns()) clock_offset_ = core_.now_ns() - mono;
    add_fd(epoll_fd_, listen_fd_, key(kListen));
    add_fd(epoll_fd_, timer_fd_, key(kTimer));
    add_fd(epoll_fd_, beat_fd_, key(kBeat));
    add_fd(epoll_fd_, signal_fd_, key(kSignal));
    match_ns_.reserve(kMatchWindow);
    return 0;
}

int EventLoop::run() {
    tick();  // the core's clock starts now, before any order can be timed
    // Sessions open in the recovered state died with the old process; their sidecars
    // re-announce them when they attach. Until then their drivers are in their grace period,
    // which starts now, after the tick that brought the clock past the outage: detached at the
    // recovered time, an outage longer than the grace (a watchdog kill takes 10 s) ended it
    // before any sidecar could attach, and drivers that never left lost their offers.
    for (const uint16_t w : core_.workers_with_open_sessions()) input(WorkerDetached{w});
    // Ready: listening, state recovered, the loop about to turn. The first watchdog ping and
    // status go with it; beat() sends the next ones from this same loop, so a wedged loop
    // stops them and systemd restarts us (WatchdogSec=).
    notify_.send("READY=1\n" + notify_schedule_.due(clock_ns(CLOCK_MONOTONIC), status_line()));
    const uint64_t spin_ns = opt_.spin_us * 1000;
    uint64_t busy_at = clock_ns(CLOCK_MONOTONIC);
    epoll_event events[64];
    while (!stop_) {
        const size_t n = drain_all();
        if (stop_) break;  // the journal failed: out now, not after the next wake-up
        const uint64_t now = clock_ns(CLOCK_MONOTONIC);
        if (n > 0) busy_at = now;
        int timeout = 0;
        bool parked = false;
        if (n == 0 && now - busy_at >= spin_ns) {
            if (!park_all()) continue;  // a record slipped in while parking
            parked = true;
            timeout = any_pending() ? 1 : -1;  // a full out ring has no doorbell back to us: poll it
        }
        const int k = epoll_wait(epoll_fd_, events, 64, timeout);
        if (parked) unpark_all();
        if (k < 0 && errno != EINTR) {
            std::fprintf(stderr, "dgdo-engine: ! epoll_wait: %s\n", std::strerror(errno));
            return 1;
        }
        for (int i = 0; i < k; ++i) handle(events[i]);
        if (k > 0) busy_at = clock_ns(CLOCK_MONOTONIC);
    }
    // Said before the wait for a snapshot being written (a big one takes seconds): systemd shows the
    // unit deactivating from the moment we stop taking input, not from the last line.
    notify_.send("STOPPING=1\nSTATUS=shutting down: finishing the snapshot being written, syncing the journal\n");
    persist_.finish();
    if (stalled_)
        std::fprintf(stderr,
                     "dgdo-engine: ! stopping with the journal still not writable: %zu input(s) never applied; what "
                     "the sidecars sent of them is still in their rings, and they send it to the next engine\n",
                     unapplied_.size());
    std::fprintf(stderr, "dgdo-engine: x shutting down\n");
    return failed_ ? 1 : 0;
}

void EventLoop::handle(const epoll_event& ev) {
    const uint64_t k = ev.data.u64;
    switch (kind_of(k)) {
    case kListen: accept_all(); return;
    case kTimer: {
        uint64_t expirations;
        if (read(timer_fd_, &expirations, sizeof expirations) > 0) tick();
        return;
    }
    case kBeat: {
        uint64_t expirations;
        if (read(beat_fd_, &expirations, sizeof expirations) > 0) beat();
        return;
    }
    case kSignal: {
        signalfd_siginfo si;
        if (read(signal_fd_, &si, sizeof si) > 0) stop_ = true;
        return;
    }
    case kHello: on_hello(serial_of(k)); return;
    case kControl: {
        Worker* w = by_serial(serial_of(k));
        if (!w) return;  // a stale event for an attachment already replaced
        char buf[64];
        const ssize_t n = recv(w->ctl_fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) || (ev.events & (EPOLLHUP | EPOLLERR)))
            detach(w->id, "control socket closed");
        return;
    }
    case kDoorbell: {
        Worker* w = by_serial(serial_of(k));
        uint64_t v;
        if (w && read(w->engine_bell, &v, sizeof v) < 0 && errno != EAGAIN)
            std::fprintf(stderr, "dgdo-engine: ! doorbell read: %s\n", std::strerror(errno));
        return;  // the next drain_all() reads the ring
    }
    }
}

void EventLoop::accept_all() {
    for (;;) {
        const int fd = accept_control(listen_fd_);
        if (fd == -EPERM) {
            std::fprintf(stderr, "dgdo-engine: ! refused a control connection from another user\n");
            continue;
        }
        if (fd < 0) return;
        const uint64_t serial = next_serial_++;
        hello_wait_[serial] = fd;
        add_fd(epoll_fd_, fd, key(kHello, serial));
    }
}

void EventLoop::on_hello(uint64_t serial) {
    auto it = hello_wait_.find(serial);
    if (it == hello_wait_.end()) return;
    const int fd = it->second;
    dgdo_ctl_hello hello{};
    const HelloRead r = recv_hello(fd, &hello);
    if (r == HelloRead::Again) return;
    hello_wait_.erase(it);
    if (r == HelloRead::Ok) return attach(fd, hello.worker, hello.pid);
    if (r == HelloRead::Bad) {
        if (hello.magic == DGDO_CTL_MAGIC)
            std::fprintf(stderr,
                         "dgdo-engine: ! worker %u (pid %d) refused: it speaks control version %u, this engine %u "
                         "(run an engine and sidecars of one release)\n",
                         hello.worker, hello.pid, hello.version, DGDO_CTL_VERSION);
        else
            std::fprintf(stderr, "dgdo-engine: ! a hello that is not a DG Do sidecar's (bad magic), closing\n");
        return refuse(fd, 0, static_cast<int32_t>(getpid()), -EPROTO);
    }
    close(fd);
}

// An attach reply with no descriptors, then the connection closed: the sidecar reads why.
void EventLoop::refuse(int fd, uint16_t worker_id, int32_t pid, int32_t status) {
    dgdo_ctl_attach no{};
    no.magic = DGDO_CTL_MAGIC;
    no.version = DGDO_CTL_VERSION;
    no.worker = worker_id;
    no.pid = pid;
    no.status = status;
    send_attach(fd, no, nullptr, 0);
    close(fd);
}

// One attachment per worker id. A live holder keeps it: the newcomer is refused (-EBUSY, with
// the holder's pid) rather than taking it over, or two sidecars given the same --worker would
// take it from each other forever. A holder whose sidecar died is detached here, even when its
// hang-up is still queued behind this hello in the same epoll batch.
void EventLoop::attach(int fd, uint16_t worker_id, int32_t pid) {
    if (worker_id == 0) {  // 0 means "no worker" in dgdo_out_meta.to_worker
        std::fprintf(stderr, "dgdo-engine: ! hello with worker id 0 refused (ids are 1-65535)\n");
        return refuse(fd, 0, static_cast<int32_t>(getpid()), -EINVAL);
    }
    if (auto it = workers_.find(worker_id); it != workers_.end()) {
        if (peer_alive(it->second->ctl_fd)) {
            std::fprintf(stderr, "dgdo-engine: ! worker %u refused: already attached (pid %d); new one is pid %d\n",
                         worker_id, it->second->pid, pid);
            return refuse(fd, worker_id, it->second->pid, -EBUSY);  // the holder's pid, for the sidecar's line
        }
        detach(worker_id, "control socket closed");
    }
    auto w = std::make_unique<Worker>();
    w->id = worker_id;
    w->pid = pid;
    w->serial = next_serial_++;
    w->ctl_fd = fd;
    dgdo_ctl_attach reply{};
    reply.magic = DGDO_CTL_MAGIC;
    reply.version = DGDO_CTL_VERSION;
    reply.worker = worker_id;
    reply.pid = static_cast<int32_t>(getpid());
    reply.epoch = epoch_;
    reply.in_capacity = opt_.ring_capacity;
    reply.out_capacity = opt_.ring_capacity;
    const std::string label = "dgdo." + opt_.instance + ".w" + std::to_string(worker_id);
    int status = w->in.create(label + ".in", opt_.ring_capacity, epoch_);
    if (status == 0) status = w->out.create(label + ".out", opt_.ring_capacity, epoch_);
    if (status == 0) {
        w->engine_bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        w->worker_bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (w->engine_bell < 0 || w->worker_bell < 0) status = -errno;
    }
    reply.status = status;
    if (status != 0) {
        std::fprintf(stderr, "dgdo-engine: ! attach of worker %u failed: %d\n", worker_id, status);
        send_attach(fd, reply, nullptr, 0);
        return;  // ~Worker closes fd and what was created
    }
    dgdo_ring_consumer_init(&w->cons, w->in.base(), static_cast<int32_t>(getpid()));
    dgdo_ring_producer_init(&w->prod, w->out.base(), static_cast<int32_t>(getpid()));
    // Beat at once, not at the next beat: the worker judges our liveness by the out ring's
    // producer heartbeat from its first look.
    const uint64_t now = clock_ns(CLOCK_MONOTONIC);
    if (!stalled_) {  // (stalled: silent from the start, so the worker refuses commands at once)
        dgdo_ring_consumer_heartbeat(&w->cons, now);
        dgdo_ring_producer_heartbeat(&w->prod, now);
    } else {
        stats_sent_ns_ = 0;  // and told why at the next beat
    }
    int fds[DGDO_CTL_NFDS];
    fds[DGDO_CTL_FD_ENGINE_BELL] = w->engine_bell;
    fds[DGDO_CTL_FD_WORKER_BELL] = w->worker_bell;
    fds[DGDO_CTL_FD_IN_RING] = w->in.fd();
    fds[DGDO_CTL_FD_OUT_RING] = w->out.fd();
    if (int rc = send_attach(fd, reply, fds, DGDO_CTL_NFDS); rc != 0) {
        std::fprintf(stderr, "dgdo-engine: ! attach reply to worker %u failed: %s\n", worker_id, std::strerror(-rc));
        return;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = key(kControl, w->serial);
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev);
    add_fd(epoll_fd_, w->engine_bell, key(kDoorbell, w->serial));
    std::fprintf(stderr, "dgdo-engine: = worker %u attached (memfds %s.in, %s.out)\n", worker_id, label.c_str(),
                 label.c_str());
    workers_[worker_id] = std::move(w);
    notify_fleet(worker_id, DGDO_FLEET_WORKER_ATTACHED);
    if (publish()) ring_doorbells();
}

void EventLoop::detach(uint16_t worker_id, const char* why) {
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) return;
    Worker& w = *it->second;
    do {  // what the worker sent before it went still counts
        if (w.held) {  // its answers are dropped with it below, as every record it has pending
            dgdo_ring_release(&w.cons, w.peek_end);
            w.held = false;
        }
    } while (drain({&w}) > 0);
    if (!it->second->pending.empty())
        std::fprintf(stderr, "dgdo-engine: ! worker %u: %zu unwritten records dropped\n", worker_id,
                     it->second->pending.size());
    workers_.erase(it);
    std::fprintf(stderr, "dgdo-engine: x worker %u detached: %s\n", worker_id, why);
    notify_fleet(worker_id, DGDO_FLEET_WORKER_DETACHED);  // published with the detach's outputs
    input(WorkerDetached{worker_id});
}

// The other workers' admin feeds hear of a worker's attach or detach (events.h, FLEET `notice`):
// a detached one's drivers leave their maps now, not when they have gone unheard of long enough,
// and one that attached gets their drivers at once, even when their ENGINE_STATS never showed
// the count of workers change (a worker killed and started again between two of them).
void EventLoop::notify_fleet(uint16_t worker_id, uint32_t notice) {
    if (workers_.empty() || (workers_.size() == 1 && workers_.count(worker_id) == 1)) return;  // nobody to tell
    dgdo_fleet head{};
    head.meta.to_worker = worker_id;
    head.meta.to_role = DGDO_ROLE_ADMIN;
    head.notice = notice;
    OutRecord rec{DGDO_OUT_FLEET, std::vector<uint8_t>(sizeof head)};
    std::memcpy(rec.body.data(), &head, sizeof head);
    out_.push_back(std::move(rec));
}

EventLoop::Worker* EventLoop::by_serial(uint64_t serial) {
    for (auto& [id, w] : workers_)
        if (w->serial == serial) return w.get();
    return nullptr;
}

// ---- data path ---------------------------------------------------------------

void EventLoop::on_record(void* ctx, int32_t type, const uint8_t* body, uint32_t len) {
    auto* self = static_cast<EventLoop*>(ctx);
    self->take(*self->peeking_, type, body, len);
}

// One peeked record: decoded, filtered, added to the journal batch (nothing applied yet).
void EventLoop::take(Worker& w, int32_t type, const uint8_t* body, uint32_t len) {
    if (type == DGDO_IN_FLEET) return relay_fleet(w, body, len);
    auto ev = decode_inbound(type, body, len);
    if (!ev) {
        uint64_t left_out = 0;
        if (bad_inbound_log_.allow(clock_ns(CLOCK_MONOTONIC), &left_out))
            std::fprintf(stderr, "dgdo-engine: ! skipped inbound record type %d length %u from worker %u%s\n", type, len,
                         w.id, left_out_note(left_out).c_str());
        return;
    }
    // Its answer (a COMMAND_RESULT, if it had one) goes out with this batch: its sender still waits.
    if (persist_.already_journaled(type, body, len, clock_ns(CLOCK_MONOTONIC), out_)) {
        if (resent_++ == 0)
            std::fprintf(stderr, "dgdo-engine: = worker %u sent again records the journal holds; skipping them\n", w.id);
        return;
    }
    // The dates of what went out so far come before it, so that a resume in this batch replays its
    // copies dated; with nothing to journal after them, they wait (for this or the next tick's batch).
    if (!undated_.empty()) journal_dates(batch_);
    persist_.add(type, body, len);
    batch_.push_back(std::move(*ev));
}

void EventLoop::journal_dates(std::vector<InputEvent>& into) {
    for (const Committed& c : undated_) {
        persist_.add(InputEvent{c});
        into.push_back(c);
    }
    undated_.clear();
}

void EventLoop::input(const InputEvent& ev) {
    std::vector<InputEvent> evs;
    journal_dates(evs);
    persist_.add(ev);
    evs.push_back(ev);
    if (stalled_) {  // journaled behind the held batch, applied after it
        unapplied_.insert(unapplied_.end(), evs.begin(), evs.end());
        return;
    }
    if (const int rc = persist_.commit(); rc != 0) {
        unapplied_.insert(unapplied_.end(), evs.begin(), evs.end());
        stall(rc, clock_ns(CLOCK_MONOTONIC));
        return;
    }
    for (const InputEvent& e : evs) apply(e);
    if (publish()) ring_doorbells();
}

void EventLoop::apply(const InputEvent& ev) {
    const size_t before = out_.size();
    const uint64_t t0 = clock_ns(CLOCK_MONOTONIC);
    core_.apply(ev, out_);
    const bool offered = std::any_of(out_.begin() + static_cast<std::ptrdiff_t>(before), out_.end(),
                                     [](const OutRecord& r) { return r.type == DGDO_OUT_NEW_ORDER; });
    if (!offered) return;
    const uint64_t took = clock_ns(CLOCK_MONOTONIC) - t0;
    match_hist_.add(took);
    if (match_ns_.size() < kMatchWindow)
        match_ns_.push_back(took);
    else
        match_ns_[match_next_++ % kMatchWindow] = took;
}

uint64_t EventLoop::match_percentile(unsigned p) const {
    if (match_ns_.empty()) return 0;
    std::vector<uint64_t> v = match_ns_;
    const size_t idx = (v.size() * p) / 100;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(idx), v.end());
    return v[idx];
}

// One batch: peek each worker's ring, journal everything peeked with one write, apply it,
// publish, then release it from the rings. A record leaves its ring only once journaled and
// answered (its answers written to the out ring, on disk first as the fsync policy promises), so
// a kill -9 at any point loses nothing and leaves no command unanswered: the sidecar reads what we
// published and salvages what we had not released, and what was journaled as well is, for a
// command, recognised and skipped after our restart and answered with the result its replay gave
// (already_journaled); anything else is applied again, harmlessly.
size_t EventLoop::drain(const std::vector<Worker*>& from) {
    if (stalled_) return 0;  // the rings keep what they hold until the journal takes the held batch
    size_t n = 0;
    batch_.clear();
    for (Worker* w : from) {
        if (w->held) continue;
        peeking_ = w;
        n += dgdo_ring_peek(&w->cons, &EventLoop::on_record, this, kBatch, &w->peek_end);
    }
    peeking_ = nullptr;
    if (n == 0) return 0;
    if (const int rc = persist_.commit(); rc != 0) {  // nothing applied, nothing released: held
        for (Worker* w : from)
            if (!w->held) unreleased_.push_back(w->serial);
        unapplied_.insert(unapplied_.end(), batch_.begin(), batch_.end());
        batch_.clear();
        stall(rc, clock_ns(CLOCK_MONOTONIC));
        return 0;
    }
    for (const InputEvent& ev : batch_) apply(ev);
    if (!publish()) return 0;  // not on disk: nothing answered, nothing released
    for (Worker* w : from) release(*w);
    return n;
}

// Its batch's answers to w are in w's out ring unless some wait behind a full one (pending): then
// the batch is held until flush_pending() has written them. Only answers hold it: an app whose
// answer is lost is told to retry, while what else waits (order updates, positions) is reliable
// delivery's, replayed after a restart from the seqs the sidecar re-announces. (An answer goes to
// its sender's worker: only w's own pending can hold w's records.)
void EventLoop::release(Worker& w) {
    if (w.held) return;  // nothing peeked this turn
    if (w.answers_end > w.pending_base)
        w.held = w.peek_end != w.cons.head;
    else
        dgdo_ring_release(&w.cons, w.peek_end);
}

// A worker's view of its drivers for the other workers' admins (events.h, FLEET): no input to
// dispatch, so neither journaled nor applied; queued with this batch's outputs for publish(),
// which writes it to every worker but the sender. Sent again after our restart (salvage), it
// is relayed again: harmless, each entry says where a driver is now.
void EventLoop::relay_fleet(Worker& w, const uint8_t* body, uint32_t len) {
    dgdo_fleet head;
    if (len < sizeof head) return;
    std::memcpy(&head, body, sizeof head);
    if (len != sizeof head + static_cast<uint64_t>(head.count) * sizeof(dgdo_fleet_entry)) {
        uint64_t left_out = 0;
        if (bad_fleet_log_.allow(clock_ns(CLOCK_MONOTONIC), &left_out))
            std::fprintf(stderr, "dgdo-engine: ! skipped fleet record of length %u from worker %u%s\n", len, w.id,
                         left_out_note(left_out).c_str());
        return;
    }
    if (workers_.size() < 2) return;  // nobody to tell
    OutRecord rec{DGDO_OUT_FLEET, std::vector<uint8_t>(body, body + len)};
    auto meta = dgdo_out_meta{};
    meta.to_worker = w.id;
    meta.to_role = DGDO_ROLE_ADMIN;
    std::memcpy(rec.body.data(), &meta, sizeof meta);
    out_.push_back(std::move(rec));
}

size_t EventLoop::drain_all() {
    std::vector<Worker*> all;
    all.reserve(workers_.size());
    for (auto& [id, w] : workers_) {
        flush_pending(*w);
        all.push_back(w.get());
    }
    const size_t n = stop_ ? 0 : drain(all);
    ring_doorbells();
    detach_wedged();
    if (n > 0) snapshot_if_due(clock_ns(CLOCK_MONOTONIC));
    return n;
}

// Not while a worker's batch is held: its commands are applied but still in its ring, and a kill
// now sends them again (the sidecar's salvage) to the next engine, which recognises a command sent
// again only among the records it replays after its snapshot (Persistence::already_journaled). A
// snapshot that covered them would make the next engine apply them twice: a cancel answered
// `conflict`, a ride_request without an id a second order. A held batch is released as soon as the
// out ring takes its answers, or its worker is detached as wedged: the snapshot waits that long.
// Nor while stalled: the held inputs have their indexes but are neither written nor applied (one
// can stall us between drain() and here: detach_wedged()'s WorkerDetached), and a snapshot at
// next_index() would skip them, and name the segment it starts after an index not yet written.
void EventLoop::snapshot_if_due(uint64_t now) {
    if (stalled_) return;
    for (const auto& [id, w] : workers_)
        if (w->held) return;
    persist_.after_batch(core_, now);
}

bool EventLoop::publish() {
    if (!persist_.before_publish()) {  // not on disk: nothing of the batch may be answered
        out_.clear();
        stop_ = failed_ = true;
        return false;
    }
    if (out_.empty()) return true;
    const uint64_t mono = clock_ns(CLOCK_MONOTONIC);
    const uint64_t real = clock_ns(CLOCK_REALTIME);
    for (OutRecord& rec : out_) {
        dgdo_out_meta meta;
        std::memcpy(&meta, rec.body.data(), sizeof meta);
        meta.commit_mono_ns = mono;
        // A replay or a snapshot keeps the time its change was first published (Deliveries).
        if (meta.commit_real_ns == 0) meta.commit_real_ns = real;
        std::memcpy(rec.body.data(), &meta, sizeof meta);
        if (rec.type == DGDO_OUT_ENGINE_STATS) fill_stats(rec);
        auto it = workers_.find(meta.to_worker);
        if (rec.type == DGDO_OUT_FLEET) {
            for (auto& [id, w] : workers_)
                if (id != meta.to_worker) write_out(*w, rec);
            continue;
        }
        if (meta.to_role == DGDO_ROLE_ADMIN && (meta.to_worker == 0 || it == workers_.end())) {
            for (auto& [id, w] : workers_) write_out(*w, rec);
            continue;
        }
        // Admins on every worker watch every order: a live change (not a replay to one
        // connection) also goes to the other workers, whose sidecars feed it to their admins
        // only (to_worker names the recipient's worker, not theirs).
        // Also when the recipient's worker is gone, though only one worker is left: that one's
        // admins are the only ones left to see it.
        if (meta.to_conn == 0 && (workers_.size() > 1 || it == workers_.end()) && watched_by_admins(rec.type)) {
            for (auto& [id, w] : workers_)
                if (id != meta.to_worker) write_out(*w, rec);
        }
        if (it != workers_.end()) {
            write_out(*it->second, rec);
        } else if (dropped_++ % 1000 == 0) {  // rate-limited: a gone worker can mean many of these
            std::fprintf(stderr, "dgdo-engine: ! record type %d for gone worker %u dropped (%llu so far)\n", rec.type,
                         meta.to_worker, static_cast<unsigned long long>(dropped_));
        }
    }
    out_.clear();
    if (const uint64_t stamped = core_.deliveries().stamped(); stamped > dated_upto_) {
        undated_.push_back(Committed{real, stamped});
        dated_upto_ = stamped;
    }
    return true;
}

// The loop's fields of an ENGINE_STATS: offer decision times, workers, the journal's state.
void EventLoop::fill_stats(OutRecord& rec) const {
    if (rec.body.size() != sizeof(dgdo_out_engine_stats)) return;
    uint8_t* body = rec.body.data();
    const uint64_t p99 = match_percentile(99), p50 = match_percentile(50);
    std::memcpy(body + offsetof(dgdo_out_engine_stats, match_p99_ns), &p99, sizeof p99);
    std::memcpy(body + offsetof(dgdo_out_engine_stats, match_p50_ns), &p50, sizeof p50);
    const auto n = static_cast<uint32_t>(workers_.size());
    std::memcpy(body + offsetof(dgdo_out_engine_stats, workers), &n, sizeof n);
    match_hist_.write_to(body);
    const auto err = static_cast<uint32_t>(stalled_ ? stall_err_ : 0);
    const auto held = static_cast<uint32_t>(stalled_ ? std::min<size_t>(unapplied_.size(), UINT32_MAX) : 0);
    const uint64_t since = stalled_ ? stalled_since_ns_ : 0;
    std::memcpy(body + offsetof(dgdo_out_engine_stats, journal_errno), &err, sizeof err);
    std::memcpy(body + offsetof(dgdo_out_engine_stats, held_inputs), &held, sizeof held);
    std::memcpy(body + offsetof(dgdo_out_engine_stats, held_since_ns), &since, sizeof since);
}

// An ENGINE_STATS sent by the loop itself, not the core's tick: while the journal holds the
// engine (no tick is taken, nothing is published), so that the sidecars can say why it is silent,
// and once more when the hold ends, so that they stop saying so at once. It goes out without
// publish()'s sync: its figures are the core's, which holds only inputs already journaled (and,
// under fsync batch, synced before their own outputs went out). It writes records only: the
// heartbeats stay as they are, so no sidecar takes it for a sign of life.
void EventLoop::send_stats_now(uint64_t now) {
    stats_sent_ns_ = now;
    if (workers_.empty()) return;
    OutRecord rec = core_.stats_record();
    dgdo_out_meta meta;
    std::memcpy(&meta, rec.body.data(), sizeof meta);
    meta.commit_mono_ns = now;
    meta.commit_real_ns = clock_ns(CLOCK_REALTIME);
    std::memcpy(rec.body.data(), &meta, sizeof meta);
    fill_stats(rec);
    for (auto& [id, w] : workers_) write_out(*w, rec);
    ring_doorbells();
}

// Full "out" ring. The core cannot wait (one loop serves every worker), so what the ring does
// not take waits in w.pending, in order, and goes first at the next turn:
// * driver positions are latest-wins: a newer one for the same recipient, driver and order
//   replaces the queued one in place (a hash map finds it), so positions take at most one slot
//   per such key however long the sidecar stalls;
// * everything else (order updates, offers, results...) is never dropped while the worker is
//   attached. Its queue is bounded by kMaxPendingBytes: a worker that lets that much pile up is
//   wedged, and it is detached (logged, its control socket closed). That is loud, not silent:
//   its sidecar sees EOF, re-attaches and re-announces its sessions, and its apps resync from
//   snapshots (`resumed = false`), as after any engine restart.
void EventLoop::write_out(Worker& w, const OutRecord& rec) {
    if (w.wedged) return;  // detached at the end of this turn; detach() reports what it drops
    if (w.pending.empty()) {
        const int rc = dgdo_ring_write(&w.prod, rec.type, rec.body.data(), static_cast<uint32_t>(rec.body.size()));
        if (rc == DGDO_RING_OK) {
            w.wrote = true;
            return;
        }
        if (rc != DGDO_RING_FULL) {
            std::fprintf(stderr, "dgdo-engine: ! record type %d not written: %d\n", rec.type, rc);
            return;
        }
    }
    if (rec.type == DGDO_OUT_DRIVER_POSITION && rec.body.size() == sizeof(dgdo_out_driver_position)) {
        dgdo_out_driver_position pos;
        std::memcpy(&pos, rec.body.data(), sizeof pos);
        // Recipient (connection, role, id), driver, order: the fields that make two positions the same stream.
        std::string k(reinterpret_cast<const char*>(&pos.meta.to_conn), sizeof pos.meta.to_conn);
        k.push_back(static_cast<char>(pos.meta.to_role));
        k.append(reinterpret_cast<const char*>(&pos.meta.to_id), sizeof pos.meta.to_id);
        k.append(reinterpret_cast<const char*>(&pos.driver_id), sizeof pos.driver_id);
        k.append(reinterpret_cast<const char*>(&pos.order_id), sizeof pos.order_id);
        auto [it, fresh] = w.position_at.try_emplace(k, w.pending_base + w.pending.size());
        if (!fresh) {
            w.pending[it->second - w.pending_base].rec.body = rec.body;  // same size: pending_bytes unchanged
            ++w.coalesced;
            return;
        }
        w.pending_bytes += rec.body.size();
        w.pending.push_back({rec, std::move(k)});
        return;
    }
    if (w.pending_bytes + rec.body.size() > kMaxPendingBytes) {
        std::fprintf(stderr,
                     "dgdo-engine: ! worker %u wedged: its out ring stayed full with %zu records (%zu bytes) waiting; "
                     "detaching it\n",
                     w.id, w.pending.size(), w.pending_bytes);
        w.wedged = true;
        return;
    }
    w.pending_bytes += rec.body.size();
    w.pending.push_back({rec, {}});
    if (rec.type == DGDO_OUT_COMMAND_RESULT) w.answers_end = w.pending_base + w.pending.size();
}

void EventLoop::flush_pending(Worker& w) {
    while (!w.pending.empty()) {
        const Worker::Queued& q = w.pending.front();
        const OutRecord& rec = q.rec;
        const int rc = dgdo_ring_write(&w.prod, rec.type, rec.body.data(), static_cast<uint32_t>(rec.body.size()));
        if (rc == DGDO_RING_FULL) break;
        if (rc == DGDO_RING_OK) w.wrote = true;
        if (!q.position_key.empty()) w.position_at.erase(q.position_key);  // newer ones now queue afresh
        w.pending_bytes -= rec.body.size();
        w.pending.pop_front();
        ++w.pending_base;
    }
    if (w.held && w.pending_base >= w.answers_end) {  // the held batch's answers are all in the ring now
        dgdo_ring_release(&w.cons, w.peek_end);
        w.held = false;
    }
    if (w.pending.empty() && w.coalesced) {
        std::fprintf(stderr, "dgdo-engine: = worker %u caught up; %llu positions coalesced while its ring was full\n",
                     w.id, static_cast<unsigned long long>(w.coalesced));
        w.coalesced = 0;
    }
}

void EventLoop::detach_wedged() {
    std::vector<uint16_t> wedged;
    for (auto& [id, w] : workers_)
        if (w->wedged) wedged.push_back(id);
    for (const uint16_t id : wedged) detach(id, "wedged: out ring full too long");
}

// Once per batch, and only for a consumer that said it sleeps.
void EventLoop::ring_doorbells() {
    for (auto& [id, w] : workers_) {
        if (!w->wrote) continue;
        w->wrote = false;
        if (!dgdo_ring_producer_should_wake(&w->prod)) continue;
        const uint64_t one = 1;
        if (write(w->worker_bell, &one, sizeof one) < 0 && errno != EAGAIN)
            std::fprintf(stderr, "dgdo-engine: ! worker %u doorbell: %s\n", id, std::strerror(errno));
    }
}

bool EventLoop::park_all() {
    if (stalled_) return true;  // its unreleased records would keep us awake: the beat timer wakes us to retry
    for (auto& [id, w] : workers_) {
        if (w->held) continue;  // its unreleased records would keep us awake; any_pending() polls meanwhile
                                // (held: an answer of its batch is still pending)
        if (!dgdo_ring_park(&w->cons)) {
            unpark_all();
            return false;
        }
        w->parked = true;
    }
    return true;
}

void EventLoop::unpark_all() {
    for (auto& [id, w] : workers_) {
        if (w->parked) dgdo_ring_unpark(&w->cons);
        w->parked = false;
    }
}

bool EventLoop::any_pending() const {
    for (const auto& [id, w] : workers_)
        if (!w->pending.empty()) return true;
    return false;
}

// The worker reads the out ring's producer heartbeat to tell a hung engine from a busy one
// (a control socket stays open under SIGSTOP). It has its own timer, not the tick's: the tick
// period is the core's setting (up to a minute), the heartbeat period is the protocol's.
void EventLoop::beat() {
    const uint64_t now = clock_ns(CLOCK_MONOTONIC);
    if (stalled_) retry_journal(now);
    if (stalled_ && now - stats_sent_ns_ >= static_cast<uint64_t>(opt_.core.stats_interval_s * 1e9))
        send_stats_now(now);
    if (!stalled_) {  // silent while stalled: the sidecars then refuse commands at once (stalled_)
        for (auto& [id, w] : workers_) {
            dgdo_ring_consumer_heartbeat(&w->cons, now);
            dgdo_ring_producer_heartbeat(&w->prod, now);
        }
    }
    if (notify_.enabled()) notify_.send(notify_schedule_.due(now, status_line()));
}

void EventLoop::stall(int rc, uint64_t now) {
    if (stalled_) return;
    stalled_ = true;
    stall_err_ = -rc;
    stalled_since_ns_ = stall_said_ns_ = now;
    stats_sent_ns_ = 0;  // the next beat tells the sidecars why
    std::fprintf(stderr,
                 "dgdo-engine: ! journal write failed: %s; nothing is applied until it is written: %zu input(s) held, "
                 "the rings are not read and fall silent (the sidecars refuse commands with engine_unavailable, "
                 "/healthz 503). Retrying every %u ms: free space on the state directory's disk (or make it "
                 "writable again) and the engine goes on by itself.\n",
                 std::strerror(stall_err_), unapplied_.size(), DGDO_CTL_HEARTBEAT_MS);
    notify_.send("STATUS=" + status_line() + "\n");
}

void EventLoop::retry_journal(uint64_t now) {
    if (const int rc = persist_.commit(); rc != 0) {
        constexpr uint64_t kRemindNs = 60'000'000'000ull;  // one line a minute, not one per retry
        if (now - stall_said_ns_ >= kRemindNs || -rc != stall_err_) {
            stall_said_ns_ = now;
            stall_err_ = -rc;
            std::fprintf(stderr, "dgdo-engine: ! journal still not writable after %.0f s: %s; %zu input(s) held\n",
                         static_cast<double>(now - stalled_since_ns_) / 1e9, std::strerror(stall_err_),
                         unapplied_.size());
        }
        return;
    }
    if (persist_.jump_error() != 0 && persist_.settle_jump() != 0) {  // written, not synced: stop
        stop_ = failed_ = true;
        return;
    }
    stalled_ = false;
    persist_.recent_from(now);  // (a hold at the first start: the salvage is read only from now)
    std::fprintf(stderr, "dgdo-engine: = journal written again after %.1f s; applying the %zu input(s) held\n",
                 static_cast<double>(now - stalled_since_ns_) / 1e9, unapplied_.size());
    std::vector<InputEvent> held;
    held.swap(unapplied_);
    for (const InputEvent& ev : held) apply(ev);
    std::vector<uint64_t> serials;
    serials.swap(unreleased_);
    if (!publish()) return;  // (fsync batch: the sync failed, stopping)
    for (const uint64_t serial : serials)
        if (Worker* w = by_serial(serial)) release(*w);  // (one detached meanwhile took its ring with it)
    send_stats_now(now);  // the sidecars stop saying the journal is not writable now, not at the next stats
    ring_doorbells();
    snapshot_if_due(now);
}

std::string EventLoop::status_line() const {
    const CoreStats s = core_.stats();
    std::string stalled;
    if (stalled_)
        stalled = "JOURNAL NOT WRITABLE (" + std::string(std::strerror(stall_err_)) + ") for " +
                  std::to_string((clock_ns(CLOCK_MONOTONIC) - stalled_since_ns_) / 1000000000ull) + " s, " +
                  std::to_string(unapplied_.size()) + " input(s) held | ";
    std::string workers;
    for (const auto& [id, w] : workers_) workers += (workers.empty() ? "" : ",") + std::to_string(id);
    return stalled + "workers " + (workers.empty() ? std::string("none") : workers) + " | drivers online " +
           std::to_string(s.drivers_online) + " available " + std::to_string(s.drivers_available) +
           " | orders active " + std::to_string(s.active_orders) + " created " + std::to_string(s.orders_created) +
           " completed " + std::to_string(s.orders_completed);
}

void EventLoop::tick() {
    if (stalled_) return;  // time stands still for the core until its inputs can be journaled again
    const uint64_t now = clock_ns(CLOCK_MONOTONIC);
    input(Tick{now + clock_offset_});
    snapshot_if_due(now);
}

}  // namespace dgdo
