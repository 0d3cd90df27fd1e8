// One POSIX shm ring segment the engine creates, owns and unlinks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace dgdo {

class ShmSegment {
public:
    ShmSegment() = default;
    ShmSegment(const ShmSegment&) = delete;
    ShmSegment& operator=(const ShmSegment&) = delete;
    ~ShmSegment() { destroy(); }

    // Unlinks any leftover of that name, creates, sizes, maps and formats it.
    // Returns 0 or a negative errno / dgdo_ring_status.
    int create(const std::string& name, uint64_t capacity, uint64_t epoch);
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
