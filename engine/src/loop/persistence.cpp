#include "loop/persistence.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>

#include "core/state_io.hpp"
#include "loop/journal_log.hpp"

namespace dgdo {

namespace {

constexpr size_t kRecentRecords = 8192;        // more than a sidecar's unreleased ring can hold in practice
constexpr uint64_t kRecentWindowNs = 60'000'000'000ull;  // sidecars re-attach within seconds of a restart

// The records a sidecar's salvage may send again that must not run twice: commands. Every other
// inbound record sets state (a session open or close, a driver's status or position, a nearby
// subscription), and a sidecar that re-attaches re-announces each live session with its latest
// status, position and subscription, byte for byte as it sent them first (an open keeps its
// upgrade time: Core::on(SessionOpen)). Such a re-announcement is a new input: taken for a salvage
// and skipped, it left the session closed by the restart (a driver offered nothing, a passenger's
// nearby subscription gone). Applied twice, a salvaged one of these is harmless: the same state
// set again after the restart's WorkerDetached.
bool runs_once(int32_t type) { return type == DGDO_IN_RIDE_REQUEST || type == DGDO_IN_ORDER_COMMAND; }

uint64_t fingerprint(int32_t type, const uint8_t* body, uint32_t len) {
    return io::hash64(body, len) ^ (static_cast<uint64_t>(static_cast<uint32_t>(type)) * 0x9E3779B97F4A7C15ull);
}

// The boot id the last start wrote in the state directory ("" if none: a directory from before
// the file existed, or one an engine never started on).
std::string stored_boot_id(const std::string& path) {
    std::ifstream f(path);
    std::string id;
    std::getline(f, id);
    return id;
}

// Written whole or not at all (a temp file renamed over it), and synced: 0 or -errno.
int store_boot_id(const std::string& path, const std::string& id) {
    const std::string tmp = path + ".tmp";
    const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    const std::string line = id + "\n";
    int rc = write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) ? 0 : (errno ? -errno : -EIO);
    if (rc == 0 && fdatasync(fd) != 0) rc = -errno;
    close(fd);
    if (rc == 0 && rename(tmp.c_str(), path.c_str()) != 0) rc = -errno;
    if (rc != 0) return rc;
    return fsync_dir(path.substr(0, path.rfind('/')));
}

// What to do about a state directory we are kept out of: said with every such refusal, since the
// usual cause is a copy put back as root or a unit whose User= changed.
std::string ownership_hint(const std::string& root) {
    return "the engine runs as uid " + std::to_string(getuid()) +
           ": the state directory and every file in it must be that user's (under systemd: chown -R dgdo:dgdo " +
           root + ")";
}

bool access_error(int err) { return err == EACCES || err == EPERM || err == EROFS; }

}  // namespace

std::string current_boot_id() {
    if (const char* v = std::getenv("DGDO_BOOT_ID"); v != nullptr && *v != '\0') return v;
    // The kernel writes it as a UUID; systemd's %b is the same 128 bits without the dashes.
    std::string id = stored_boot_id("/proc/sys/kernel/random/boot_id");
    id.erase(std::remove(id.begin(), id.end(), '-'), id.end());
    return id;
}

Persistence::Persistence(PersistOptions opt) : opt_(std::move(opt)), dir_{opt_.state_dir} {}

Persistence::~Persistence() {
    finish();
    snapshots_.reset();
    journal_.reset();
    if (lock_fd_ >= 0) close(lock_fd_);
}

int Persistence::start(Core& core, const Config& cfg, uint64_t mono_now_ns) {
    if (!enabled()) {
        std::fprintf(stderr, "dgdo-engine: ! no --state-dir: running without a journal; a restart loses every order\n");
        return 0;
    }
    if (const int rc = make_state_dir(dir_); rc != 0) {
        std::fprintf(stderr, "dgdo-engine: ! state dir %s: %s%s\n", dir_.root.c_str(), std::strerror(-rc),
                     access_error(-rc) ? ("; " + ownership_hint(dir_.root)).c_str() : "");
        return rc;
    }
    // One engine per state directory: a second writer would interleave two journals.
    const std::string lock_path = dir_.root + "/lock";
    lock_fd_ = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd_ < 0) {
        const int err = errno;
        std::fprintf(stderr, "dgdo-engine: ! cannot open %s: %s%s\n", lock_path.c_str(), std::strerror(err),
                     access_error(err) ? ("; " + ownership_hint(dir_.root)).c_str() : "");
        return -err;
    }
    if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        std::fprintf(stderr, "dgdo-engine: ! state dir %s is in use by another engine (%s)\n", dir_.root.c_str(),
                     std::strerror(err));
        return err == EWOULDBLOCK ? -EBUSY : -err;
    }

    if (const size_t n = remove_partial_snapshots(dir_.snapshots()))
        std::fprintf(stderr, "dgdo-engine: = removed %zu unfinished snapshot file(s) of an engine killed while writing\n", n);

    std::deque<std::pair<uint64_t, OutRecord>> recent;
    const ReplayFn remember = [&](uint64_t, int32_t type, const uint8_t* payload, uint32_t len, const InputEvent&,
                                  const std::vector<OutRecord>& out) {
        if (!runs_once(type)) return;  // (the loop's own records are never sent again by a sidecar)
        // An input with a corr answers it first (core.hpp): kept to answer it again if it is sent again.
        const bool answered = !out.empty() && out.front().type == DGDO_OUT_COMMAND_RESULT;
        recent.emplace_back(fingerprint(type, payload, len), answered ? out.front() : OutRecord{});
        if (recent.size() > kRecentRecords) recent.pop_front();
    };
    // An engine ran here before: a journal segment (it is made, and synced, at the first start)
    // or a snapshot. Even one whose every record was lost handed out ids and seqs.
    const bool used = !list_segments(dir_.journal()).empty() || !list_snapshots(dir_.snapshots()).empty();
    RecoverOptions ro;
    ro.each = &remember;
    const Recovery r = recover(core, cfg, dir_, ro);
    for (const auto& why : r.rejected) std::fprintf(stderr, "dgdo-engine: ! snapshot passed over: %s\n", why.c_str());
    if (r.end.cut)
        std::fprintf(stderr, "dgdo-engine: ! journal tail cut at record %" PRIu64 ": %s (%" PRIu64 " bytes dropped)\n",
                     r.end.next_index, r.end.problem.c_str(), r.end.cut_bytes);
    if (!r.ok && r.end.newer) {
        std::fprintf(stderr,
                     "dgdo-engine: ! cannot recover from %s: %s. A newer engine wrote this state; refusing to "
                     "start, nothing changed: run that version again (or move the state directory aside to "
                     "start empty).\n",
                     dir_.root.c_str(), r.end.problem.c_str());
        return -EIO;
    }
    if (!r.ok && r.end.damaged) {
        std::fprintf(stderr,
                     "dgdo-engine: ! cannot recover from %s: journal damaged: %s. Only a torn tail at the end of "
                     "the last segment is cut by itself; records after this damage may hold committed orders, so "
                     "refusing to start, nothing changed. See \"Recovery\" in the README: keep a copy of the "
                     "state directory, then restore that segment from a backup, or cut it at that byte and move "
                     "the segments after it aside.\n",
                     dir_.root.c_str(), r.end.problem.c_str());
        return -EIO;
    }
    if (!r.ok && r.end.unreadable) {
        std::fprintf(stderr,
                     "dgdo-engine: ! cannot recover from %s: %s; refusing to start, nothing changed: %s, then start "
                     "again.\n",
                     dir_.root.c_str(), r.end.problem.c_str(), ownership_hint(dir_.root).c_str());
        return -EACCES;
    }
    if (!r.ok && !r.rejected.empty()) {
        // The journal continues a snapshot we could not load: started empty (the usual advice for a
        // hole) it would lose every order, so the advice is the snapshot back.
        std::fprintf(stderr,
                     "dgdo-engine: ! cannot recover from %s: %s, and the snapshot(s) passed over above are what it "
                     "continues. Refusing to start, nothing changed: keep a copy of the state directory, put back a "
                     "good copy of the newest snapshot from a backup, and start again (moving the directory aside "
                     "starts with no orders at all).\n",
                     dir_.root.c_str(), r.end.problem.c_str());
        return -EIO;
    }
    if (!r.ok) {
        std::fprintf(stderr,
                     "dgdo-engine: ! cannot recover from %s: %s. Refusing to start on a state with a hole in it; "
                     "put the missing segments back from a backup, or move the state directory aside to start "
                     "empty.\n",
                     dir_.root.c_str(), r.end.problem.c_str());
        return -EIO;
    }
    for (auto& [fp, answer] : recent) recent_.emplace(fp, std::move(answer));
    recent_until_ns_ = mono_now_ns + kRecentWindowNs;

    JournalOptions jo;
    jo.dir = dir_.journal();
    jo.fsync = opt_.fsync;
    jo.fsync_interval_ms = opt_.fsync_interval_ms;
    jo.segment_bytes = opt_.segment_bytes;
    journal_ = std::make_unique<JournalWriter>(jo);
    if (const int rc = journal_->open(r.end); rc != 0) {
        std::fprintf(stderr, "dgdo-engine: ! journal %s: %s%s\n", jo.dir.c_str(), std::strerror(-rc),
                     access_error(-rc) ? ("; " + ownership_hint(dir_.root)).c_str() : "");
        return rc;
    }
    // A state directory used before, last by an engine under another kernel (or one we cannot
    // tell): the journal's tail may have been lost (power loss or panic under interval or never)
    // with the order ids and seqs it handed out. Jump past them before anything goes out, and put
    // the jump on disk first whatever the policy: a second loss must not take it back. On the same
    // boot (a crash, kill -9, a restart) nothing written was lost: no jump. A fresh directory
    // needs none either, but its first segment must outlive a power loss (whatever the policy), or
    // the next start would take the directory for a fresh one.
    const std::string boot_path = dir_.root + "/boot";
    const std::string last_boot = stored_boot_id(boot_path);
    if (!used) {
        if (const int rc = journal_->sync_now(); rc != 0) {
            std::fprintf(stderr, "dgdo-engine: ! journal %s: %s\n", jo.dir.c_str(), std::strerror(-rc));
            return rc;
        }
    } else if (opt_.boot_id.empty() || last_boot != opt_.boot_id) {
        const Recovered jump{kRecoveryGap};
        journal_->add(jump);
        if (const int rc = journal_->commit(); rc != 0) {
            // A disk that refuses it (full, at the first start after a reboot): exiting would restart
            // into the same disk until systemd gives up. The loop holds it as any batch the disk
            // refuses (EventLoop::stalled_), with nothing applied or answered before it, and
            // settle_jump() finishes this once it is written.
            jump_error_ = rc;
            std::fprintf(stderr, "dgdo-engine: ! journal %s: the recovery's id jump cannot be written yet: %s\n",
                         jo.dir.c_str(), std::strerror(-rc));
        } else if (const int synced = settle_jump(); synced != 0) {
            return synced;
        } else {
            std::vector<OutRecord> none;  // it makes none
            core.apply(jump, none);
        }
    }
    // A fresh directory's boot file (after a jump, settle_jump() writes it).
    if (!used && !opt_.boot_id.empty() && last_boot != opt_.boot_id)
        if (const int rc = store_boot_id(boot_path, opt_.boot_id); rc != 0)
            std::fprintf(stderr, "dgdo-engine: ! %s: %s (the next start jumps ids again)\n", boot_path.c_str(),
                         std::strerror(-rc));
    snapshots_ = std::make_unique<SnapshotWriter>(dir_.snapshots(), dir_.journal(), opt_.snapshot_keep);
    last_snapshot_index_ = r.snapshot.empty() ? 1 : r.snapshot_index;
    last_snapshot_ns_ = mono_now_ns;

    const CoreStats s = core.stats();
    std::fprintf(stderr,
                 "dgdo-engine: = recovered %s: %u live orders, %zu drivers online, time %.3f s, next record %" PRIu64
                 ", next order %" PRIu64 ", digest %016" PRIx64 " (snapshot %s + %" PRIu64 " records, %.1f ms); fsync %s\n",
                 dir_.root.c_str(), s.active_orders, static_cast<size_t>(s.drivers_online), core.now_ns() / 1e9,
                 r.end.next_index, core.next_order_id(), r.digest, r.snapshot.empty() ? "none" : r.snapshot.c_str(),
                 r.replayed, r.ms, to_string(opt_.fsync));
    return 0;
}

int Persistence::commit() { return journal_ ? journal_->commit() : 0; }

int Persistence::settle_jump() {
    jump_error_ = 0;
    if (const int rc = journal_->sync_now(); rc != 0) {  // not retried: see before_publish()
        std::fprintf(stderr, "dgdo-engine: ! journal %s: the recovery's id jump is not on disk: %s\n",
                     journal_->options().dir.c_str(), std::strerror(-rc));
        return rc;
    }
    std::fprintf(stderr, "dgdo-engine: = first start on this boot: order ids and seqs jump by %" PRIu64 "\n",
                 kRecoveryGap);
    // After the jump is on disk: a boot file that names this boot vouches for everything before.
    // If it cannot be written, the next start on this boot jumps once more: harmless.
    const std::string boot_path = dir_.root + "/boot";
    if (!opt_.boot_id.empty())
        if (const int rc = store_boot_id(boot_path, opt_.boot_id); rc != 0)
            std::fprintf(stderr, "dgdo-engine: ! %s: %s (the next start jumps ids again)\n", boot_path.c_str(),
                         std::strerror(-rc));
    return 0;
}

bool Persistence::before_publish() {
    if (!journal_) return true;
    const int rc = journal_->sync_before_publish();
    if (rc == 0) return true;
    // Not retried: after a failed fdatasync the kernel may have dropped the dirty pages and a
    // second call can succeed with the data gone. Stopping is what keeps the promise.
    std::fprintf(stderr,
                 "dgdo-engine: ! journal fdatasync failed: %s; stopping before the batch's answers go out (fsync batch "
                 "promises nothing acknowledged is lost)\n",
                 std::strerror(-rc));
    return false;
}

void Persistence::after_batch(const Core& core, uint64_t mono_now_ns) {
    if (!journal_) return;
    if (child_ > 0 && !reap(false)) return;  // the last one is still being written
    const uint64_t index = journal_->next_index();
    const uint64_t since = index - last_snapshot_index_;
    const bool due = since >= opt_.snapshot_every_records ||
                     (since > 0 && static_cast<double>(mono_now_ns - last_snapshot_ns_) >= opt_.snapshot_every_s * 1e9);
    if (!due || snapshots_->busy()) return;
    const auto t0 = std::chrono::steady_clock::now();
    // Whole segments before the snapshot can then go.
    if (const int rc = journal_->rotate(); rc != 0)
        std::fprintf(stderr, "dgdo-engine: ! journal rotation failed: %s\n", std::strerror(-rc));
    last_snapshot_index_ = index;
    last_snapshot_ns_ = mono_now_ns;
    const pid_t pid = fork();
    if (pid == 0) {
        // The child: a frozen copy of the core. It touches nothing the parent's threads hold
        // (no stdio: a log line is one write(2)) and leaves with _exit.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        std::string bytes;
        core.save(bytes);
        const uint64_t digest = io::hash64(bytes.data(), bytes.size());
        const int rc = write_snapshot(dir_.snapshots(), index, digest, bytes);
        if (rc == 0) prune_state(dir_.snapshots(), dir_.journal(), opt_.snapshot_keep);
        constexpr size_t kLine = 200;
        char line[kLine + 3];  // and room for its journal priority (loop/journal_log.hpp)
        const int n = rc == 0 ? std::snprintf(line, kLine,
                                              "dgdo-engine: = snapshot at record %" PRIu64 " written (%zu bytes, digest %016" PRIx64 ")\n",
                                              index, bytes.size(), digest)
                              : std::snprintf(line, kLine, "dgdo-engine: ! snapshot at record %" PRIu64 " failed: %s\n",
                                              index, std::strerror(-rc));
        const size_t len = n > 0 ? with_journal_priority(line, std::min(static_cast<size_t>(n), kLine - 1), sizeof line) : 0;
        if (len > 0 && write(STDERR_FILENO, line, len) < 0) _exit(1);
        _exit(rc == 0 ? 0 : 1);
    }
    if (pid > 0) {
        child_ = pid;
        child_index_ = index;
    } else {  // no fork (memory, limits): serialize here, write on the thread
        core.save(scratch_);
        const uint64_t digest = io::hash64(scratch_.data(), scratch_.size());
        snapshots_->submit(index, digest, std::move(scratch_));
        scratch_ = std::string();
    }
    last_stall_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void Persistence::finish() {
    reap(/*wait=*/true);
    if (snapshots_) snapshots_->wait_idle();
}

// True when no snapshot child is left running.
bool Persistence::reap(bool wait) {
    if (child_ <= 0) return true;
    int status = 0;
    const pid_t r = waitpid(child_, &status, wait ? 0 : WNOHANG);
    if (r == 0) return false;
    if (r == child_ && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        std::fprintf(stderr, "dgdo-engine: ! snapshot writer for record %" PRIu64 " died (status %d)\n", child_index_,
                     status);
    child_ = -1;
    return true;
}

void Persistence::recent_from(uint64_t mono_now_ns) {
    if (!recent_.empty()) recent_until_ns_ = std::max(recent_until_ns_, mono_now_ns + kRecentWindowNs);
}

bool Persistence::already_journaled(int32_t type, const uint8_t* body, uint32_t len, uint64_t mono_now_ns,
                                    std::vector<OutRecord>& answers) {
    if (recent_.empty() || !runs_once(type)) return false;
    if (mono_now_ns > recent_until_ns_) {
        recent_.clear();
        return false;
    }
    auto it = recent_.find(fingerprint(type, body, len));
    if (it == recent_.end()) return false;
    if (it->second.type == DGDO_OUT_COMMAND_RESULT) answers.push_back(std::move(it->second));
    recent_.erase(it);
    return true;
}

}  // namespace dgdo
