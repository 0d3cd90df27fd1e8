// One ring segment the engine creates and owns: an anonymous memfd, mapped, formatted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace dgdo {

// The segment has no name in any namespace: it exists while its fd is open or it is mapped,
// here or in the sidecar that received the fd (include/dgdo/control.h). So no kill -9 of
// anything can leave it behind, and no later engine ever finds a leftover to judge or clean.
class ShmSegment {
public:
    ShmSegment() = default;
    ShmSegment(const ShmSegment&) = delete;
    ShmSegment& operator=(const ShmSegment&) = delete;
    ~ShmSegment() { destroy(); }

    // Creates a close-on-exec memfd labelled `label` (what /proc/<pid>/fd shows), sizes it for
    // `capacity` data bytes, seals its size (a peer can then never make our mapping SIGBUS by
    // shrinking it), maps and formats it. Returns 0 or a negative errno / dgdo_ring_status.
    int create(const std::string& label, uint64_t capacity, uint64_t epoch);
    // Unmaps and closes (idempotent). A peer's own mapping stays valid until it unmaps.
    void destroy();

    void* base() const { return base_; }
    int fd() const { return fd_; }
    const std::string& label() const { return label_; }

private:
    std::string label_;
    int fd_ = -1;
    void* base_ = nullptr;
    size_t size_ = 0;
};

}  // namespace dgdo
