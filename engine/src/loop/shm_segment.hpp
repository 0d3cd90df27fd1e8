// One POSIX shm ring segment the engine creates, owns and unlinks, and the
// check that tells a leftover of a dead run from a segment a live engine uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace dgdo {

// What a segment already in /dev/shm says about the engine that made it.
// The engine is the consumer of a worker's ".in" ring and the producer of its ".out" ring;
// its pid and heartbeat are the ones that tell whether that engine still runs.
struct SegmentOwner {
    bool exists = false;
    bool valid = false;  // a ring header of this layout (else: garbage, always stale)
    int32_t pid = 0;     // the engine side's pid
    uint64_t epoch = 0;
    uint64_t heartbeat_age_ns = UINT64_MAX;  // UINT64_MAX: never beat
    bool pid_alive = false;
    bool live = false;  // valid, pid alive (and not us), heartbeat younger than the bound
};

// Default bound on the engine-side heartbeat age for a segment to count as live. The
// engine beats every tick (100 ms by default); a stopped or wedged engine goes stale.
constexpr uint64_t kStaleHeartbeatNs = 3'000'000'000ull;

// Reads the header of segment `name` (read-only; nothing is changed).
SegmentOwner inspect_segment(const std::string& name, bool engine_produces, uint64_t now_mono_ns,
                             uint64_t stale_after_ns = kStaleHeartbeatNs);

// "stale segment /x of pid 12 epoch 34 (pid dead), removing" style reason text.
std::string describe_owner(const SegmentOwner& o);

// Clears the way for segment `name`: a leftover whose engine is gone is logged and unlinked
// (0); one a live engine still beats in is logged and left alone (-EBUSY); none at all is 0.
int reclaim_segment(const std::string& name, bool engine_produces, uint64_t now_mono_ns,
                    uint64_t stale_after_ns = kStaleHeartbeatNs);

class ShmSegment {
public:
    ShmSegment() = default;
    ShmSegment(const ShmSegment&) = delete;
    ShmSegment& operator=(const ShmSegment&) = delete;
    ~ShmSegment() { destroy(); }

    // Creates, sizes, maps and formats segment `name`. A leftover of that name is removed
    // (and logged) only when its engine is gone (pid dead or heartbeat older than
    // `stale_after_ns`); one a live engine still beats in gives -EBUSY and is left alone.
    // Returns 0 or a negative errno / dgdo_ring_status.
    int create(const std::string& name, uint64_t capacity, uint64_t epoch, bool engine_produces,
               uint64_t stale_after_ns = kStaleHeartbeatNs);
    // Unmaps and unlinks (idempotent).
    void destroy();

    void* base() const { return base_; }
    const std::string& name() const { return name_; }

private:
    std::string name_;
    void* base_ = nullptr;
    size_t size_ = 0;
};

}  // namespace dgdo
