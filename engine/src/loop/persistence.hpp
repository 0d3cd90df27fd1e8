// What the loop needs to be crash-safe: recovery at start, the journal writer, the
// snapshot schedule, and the filter for records a sidecar sends again after our restart.
// Without a state directory every call is a no-op and the engine is not durable.
#pragma once

#include <sys/file.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/core.hpp"
#include "store/journal.hpp"
#include "store/recovery.hpp"
#include "store/snapshot.hpp"

namespace dgdo {

struct PersistOptions {
    std::string state_dir;  // "" = no journal
    FsyncPolicy fsync = FsyncPolicy::Interval;
    uint64_t fsync_interval_ms = 100;
    double snapshot_every_s = 60;
    uint64_t snapshot_every_records = 1000000;
    uint64_t snapshot_keep = 10;  // snapshots kept, and the journal since the oldest: replay's history
    uint64_t segment_bytes = 64ull << 20;
    // The running kernel's boot id ("" = unknown): while one kernel runs, everything an engine
    // wrote to the state directory is readable again (the page cache holds what is not yet on
    // disk), so a restart on the same boot has lost nothing and makes no id jump.
    std::string boot_id;
};

// This boot's id: $DGDO_BOOT_ID (the systemd unit passes %b: its ProcSubset=pid hides /proc/sys),
// else /proc/sys/kernel/random/boot_id, else "" (every start on a used directory then jumps).
std::string current_boot_id();

class Persistence {
public:
    explicit Persistence(PersistOptions opt);
    ~Persistence();

    bool enabled() const { return !opt_.state_dir.empty(); }

    // Locks the state directory, recovers `core` from it and opens the journal for appending.
    // Logs one line with what was recovered. 0, or -errno with the reason logged.
    int start(Core& core, const Config& cfg, uint64_t mono_now_ns);

    // Journal a record into the current batch (no-op when disabled).
    void add(int32_t type, const uint8_t* body, uint32_t len) {
        if (journal_) journal_->add(type, body, len);
    }
    void add(const InputEvent& ev) {
        if (journal_) journal_->add(ev);
    }
    // Writes the batch. 0, or -errno: it could not be journaled, so it must not be applied yet; the
    // batch is kept and a later commit() writes it (the loop says what is wrong and retries).
    int commit();
    // The first start after a reboot could not write its jump of ids and seqs (-errno; 0: it
    // could, or none was due). The jump is then the first record of the journal's batch, and the
    // loop holds (nothing applied, nothing answered) until commit() writes it; then settle_jump()
    // syncs it and records this boot (0, or -errno: not on disk, stop), and the loop applies it.
    int jump_error() const { return jump_error_; }
    int settle_jump();
    // Before the batch's outputs go out (FsyncPolicy::Batch syncs here). false: the batch is
    // not on disk, so its outputs must not go out (logged): under Batch an answer promises it is.
    bool before_publish();
    // After a batch: takes a snapshot when one is due. A forked child serializes and writes it
    // (copy-on-write: the loop stalls only for the fork); if fork fails, it is serialized here
    // and written by a thread.
    void after_batch(const Core& core, uint64_t mono_now_ns);
    // Waits for a snapshot still being written (the forked writer or the thread), so that its
    // log line comes before the engine's last one and nothing of ours outlives the engine.
    void finish();

    // True for a command (ride request, order command) the journal already holds that a sidecar
    // sent again: it salvages what we had not released when we died, and we journal a batch
    // before releasing it. Other records are never skipped: a sidecar re-announces those with
    // the same bytes, as new inputs (persistence.cpp, runs_once).
    // Checked only for a while after a recovery. Such a record is not applied again, but its
    // sender still waits for its answer (the dead engine died before publishing it): its
    // COMMAND_RESULT as the replay produced it, if it had one, is appended to `answers`.
    bool already_journaled(int32_t type, const uint8_t* body, uint32_t len, uint64_t mono_now_ns,
                           std::vector<OutRecord>& answers);
    // The rings are read again after a hold (a journal the disk refused: EventLoop::stall): what
    // the sidecars salvaged waited there unread, so the window for recognising it starts now.
    void recent_from(uint64_t mono_now_ns);

    // Waits for a snapshot being written (forked child or thread), so that its log line comes
    // before the loop's last one ("shutting down").
    void settle();

    uint64_t records() const { return journal_ ? journal_->next_index() : 0; }
    double last_stall_ms() const { return last_stall_ms_; }

private:
    PersistOptions opt_;
    StateDir dir_;
    int lock_fd_ = -1;
    std::unique_ptr<JournalWriter> journal_;
    std::unique_ptr<SnapshotWriter> snapshots_;
    uint64_t last_snapshot_index_ = 0;
    uint64_t last_snapshot_ns_ = 0;
    double last_stall_ms_ = 0;
    pid_t child_ = -1;  // the snapshot writer, while it runs
    uint64_t child_index_ = 0;
    bool reap(bool wait);
    // Fingerprints of the inbound records at the journal's end -> the COMMAND_RESULT the replay gave
    // each (type 0: none).
    std::unordered_map<uint64_t, OutRecord> recent_;
    uint64_t recent_until_ns_ = 0;
    std::string scratch_;
    int jump_error_ = 0;
};

}  // namespace dgdo
