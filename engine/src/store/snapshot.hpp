// Snapshots of the core: <state-dir>/snapshots/<journal index, 20 digits>.snap.
//
// The index is the journal record the state does not include yet: loading the
// snapshot and replaying records >= index gives the state after the last record.
//
// Header (64 bytes, little-endian), then `length` bytes of Core::save():
//    0 u64 magic "DGDOSNP1"    8 u32 version     12 u32 header size (64)
//   16 u64 journal index      24 u64 length      32 u64 digest (io::hash64 of the payload)
//   40 u32 CRC-32C of payload 44 u32 zero        48 u64 written at (CLOCK_REALTIME ns)
//   56 u32 zero               60 u32 CRC-32C of bytes 0..60
//
// A snapshot is written to a temp name, fsynced, renamed into place and its directory
// fsynced: a crash leaves the old snapshot or the new one, never half of one.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace dgdo {

inline constexpr uint64_t kSnapshotMagic = 0x31504E534F444744ull;  // "DGDOSNP1"
// 2: Core::save() version 2 inside; 3: version 3 (a recovery's jump, an order's matched);
// 4: its Deliveries at version 3 (each kept record's publish time), which an older engine
// would take for damage: the header says it first, so that one refuses the file whole.
// Versions 1..kSnapshotVersion are read; a newer one is refused whole.
inline constexpr uint32_t kSnapshotVersion = 4;
inline constexpr uint32_t kSnapshotHeader = 64;

struct SnapshotFile {
    uint64_t index = 0;
    std::string path;
};
// Newest first.
std::vector<SnapshotFile> list_snapshots(const std::string& dir);

// Temp + fsync + rename + directory fsync. 0 or -errno.
int write_snapshot(const std::string& dir, uint64_t index, uint64_t digest, const std::string& payload);

struct SnapshotRead {
    uint64_t index = 0;
    uint64_t digest = 0;
    uint64_t written_real_ns = 0;
    std::string payload;
    std::string problem;  // empty when good
    bool newer = false;   // a newer engine's format: not damage, and not to be passed over
    bool unreadable = false;  // there, but we may not open it (permissions): not damage either
};
SnapshotRead read_snapshot(const std::string& path);

// Removes the temp files of snapshots never finished (a writer killed before its rename): the
// lock holder's business, at start. Returns how many.
size_t remove_partial_snapshots(const std::string& dir);

// After a good snapshot: keeps the newest `keep` snapshots and removes the journal segments
// wholly before the oldest one kept (so that one still has its tail, as a fallback).
void prune_state(const std::string& snapshot_dir, const std::string& journal_dir, size_t keep = 2);

// Writes snapshots on a background thread, one at a time.
class SnapshotWriter {
public:
    SnapshotWriter(std::string snapshot_dir, std::string journal_dir, size_t keep = 2);
    ~SnapshotWriter();
    SnapshotWriter(const SnapshotWriter&) = delete;
    SnapshotWriter& operator=(const SnapshotWriter&) = delete;

    bool busy() const;
    // Hands over the bytes; false (and nothing done) while the previous one is still being written.
    bool submit(uint64_t index, uint64_t digest, std::string&& payload);
    // Waits until nothing is being written (tests, shutdown).
    void wait_idle();

private:
    void run();

    std::string snap_dir_, journal_dir_;
    size_t keep_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false, has_job_ = false, writing_ = false;
    uint64_t index_ = 0, digest_ = 0;
    std::string payload_;
    std::thread thread_;
};

}  // namespace dgdo
