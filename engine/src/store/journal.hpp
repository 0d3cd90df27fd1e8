// The engine's journal: every input the core applies, in order, before it is applied.
//
// Files: <state-dir>/journal/<index of the first record, 20 digits>.dgj, each starting
// with a 32-byte segment header, then records. A segment is closed and the next one
// begun once it passes segment_bytes (and at every snapshot, so whole segments can go).
//
// Segment header:  0 u64 magic "DGDOJRN1" | 8 u32 version | 12 u32 header size (32)
//                 16 u64 index of its first record | 24 u64 zero
//
// Record (little-endian), 8-byte aligned:
//
//    0                   1                   2                   3
//    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//   |               length (header + payload, unpadded)             |
//   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//   |              CRC-32C of bytes 8 .. length                     |
//   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//   |                       index (u64): +1 per record              |
//   +                                                               +
//   |                                                               |
//   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//   |   type: an inbound ring type (events.h) or a JournalType      |
//   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//   |                          zero                                 |
//   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//   |   payload: the ring record's body as received, or the input  ...
//   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// A record is good when its length fits the file, its CRC matches and its index is
// the one expected. Reading stops at the first record that is not. When that is the
// end of the last segment with no good record after it, it is the tail of a write a
// crash cut short, which recovery cuts off. Anywhere else (a bad record with good ones
// after it, a bad earlier segment, a segment missing) it is damage: nothing is cut and
// recovery refuses, for the records after it may hold committed orders. The index makes
// a stale record left in a reused block impossible to mistake for the next one.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/core.hpp"

namespace dgdo {

enum JournalType : int32_t {
    JOURNAL_TICK = 1000,             // payload u64 now_ns
    JOURNAL_WORKER_DETACHED = 1001,  // payload u16 worker, 6 bytes zero
    JOURNAL_RECOVERED = 1002,        // payload u64 gap (Recovered: the first record after a recovery)
    JOURNAL_COMMITTED = 1003,        // payload u64 real_ns, u64 upto (Committed: when records went out)
};

inline constexpr uint64_t kJournalMagic = 0x314E524A4F444744ull;  // "DGDOJRN1"
inline constexpr uint32_t kJournalVersion = 1;
inline constexpr uint32_t kSegmentHeader = 32;
inline constexpr uint32_t kRecordHeader = 24;
inline constexpr uint32_t kMaxPayload = 1u << 20;  // larger than any input; a bigger length is corruption

enum class FsyncPolicy : uint8_t {
    Never,     // page cache only: survives a process crash, not a power loss
    Interval,  // a background thread fdatasyncs every interval_ms: at most that much lost on power loss
    Batch,     // fdatasync before a batch's outputs are published: nothing acknowledged is lost
};

const char* to_string(FsyncPolicy p);
std::optional<FsyncPolicy> parse_fsync(const std::string& s);

// Encodes an input as (type, payload); decodes one back. The loop journals ring records
// with the bytes it received; these serve the inputs the loop makes itself, and replay.
void encode_input(const InputEvent& ev, int32_t& type, std::string& payload);
std::optional<InputEvent> decode_input(int32_t type, const uint8_t* payload, uint32_t len);

struct JournalSegment {
    uint64_t first = 0;
    std::string path;
};
// The segments of `dir`, oldest first (by the index in their names).
std::vector<JournalSegment> list_segments(const std::string& dir);
std::string segment_name(uint64_t first);

// Where reading stopped.
struct JournalEnd {
    uint64_t next_index = 0;   // index the next record gets
    std::string path;          // segment to append to ("" = none yet)
    uint64_t offset = 0;       // good bytes in it
    uint64_t records = 0;      // records handed to the callback
    bool cut = false;          // a torn tail was found (and removed when repairing)
    uint64_t cut_bytes = 0;    // bytes after the last good record of the last segment
    std::string problem;       // what was wrong, for the log; or a gap that stops recovery
    bool gap = false;          // no record `from` where one must be: the journal cannot continue the state
    bool newer = false;        // a segment of a newer format (a newer engine wrote it): nothing read, nothing cut
    bool damaged = false;      // a bad record that is not a torn tail (problem: file and byte): nothing cut
    bool unreadable = false;   // a segment we may not open or map (permissions): nothing read past it, nothing cut
};

using RecordFn = std::function<void(uint64_t index, int32_t type, const uint8_t* payload, uint32_t len)>;

// Reads every good record with index >= from, in order, up to the first bad one. With
// `repair`, a torn tail is cut: the last segment is truncated after its last good record
// (removed if not even its header is whole). Damage (`damaged`) is never cut, whatever
// `repair` says. `from` must be an index the journal holds (or its end).
JournalEnd read_journal(const std::string& dir, uint64_t from, const RecordFn& fn, bool repair);

struct JournalOptions {
    std::string dir;  // <state-dir>/journal
    FsyncPolicy fsync = FsyncPolicy::Interval;
    uint64_t fsync_interval_ms = 100;
    uint64_t segment_bytes = 64ull << 20;
};

// Appends batches. Not thread-safe except for its own sync thread.
class JournalWriter {
public:
    explicit JournalWriter(JournalOptions opt);
    ~JournalWriter();
    JournalWriter(const JournalWriter&) = delete;
    JournalWriter& operator=(const JournalWriter&) = delete;

    // Continues where read_journal(repair) stopped. 0 or -errno.
    int open(const JournalEnd& end);

    // Adds a record to the current batch; returns its index.
    uint64_t add(int32_t type, const void* payload, uint32_t len);
    uint64_t add(const InputEvent& ev);
    size_t batch_records() const { return batch_n_; }

    // Writes the batch with one write() (rotating first when the segment is full, or when the file
    // size limit refuses it in a segment that already holds records: EFBIG).
    // 0 or -errno; on an error nothing of the batch may be applied: the file is as it was before
    // the call and the batch is kept, so commit() may be called again (more add()s first, too).
    int commit();
    // FsyncPolicy::Batch: fdatasync now, before the batch's outputs go out. Others: nothing.
    int sync_before_publish();
    // fdatasync now, whatever the policy (and the directory: the segment may be new). The
    // record of a recovery's jump must survive a second power loss before anything goes out.
    int sync_now();
    // Closes the current segment and starts one at next_index() (snapshots do, so the
    // segments before them can be removed whole).
    int rotate();

    uint64_t next_index() const { return next_index_; }
    uint64_t bytes_written() const { return bytes_written_; }
    const JournalOptions& options() const { return opt_; }

private:
    int start_segment();
    // A new segment for the batch, named after its first index (a rotation between add() and commit()).
    int start_batch_segment();
    void sync_loop();

    JournalOptions opt_;
    int fd_ = -1;
    uint64_t seg_bytes_ = 0;
    uint64_t next_index_ = 0;
    uint64_t bytes_written_ = 0;
    std::string batch_;
    size_t batch_n_ = 0;
    bool dirty_ = false;  // written since the last fdatasync (Batch policy)

    // Interval policy: the sync thread fdatasyncs fd_ under mu_ (rotate() swaps fd_ under it).
    std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    std::atomic<bool> unsynced_{false};
    std::thread syncer_;
};

// fsyncs a directory (after a create, rename or unlink in it). 0 or -errno.
int fsync_dir(const std::string& dir);

}  // namespace dgdo
