// A ring segment in process memory, formatted, with both ends attached.
#pragma once

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "dgdo/ring.h"

struct RingFixture {
    explicit RingFixture(uint64_t capacity, uint64_t epoch = 42) : size(dgdo_ring_segment_size(capacity)) {
        mem.reset(static_cast<uint8_t*>(std::aligned_alloc(4096, size)));
        std::memset(mem.get(), 0, size);
        format_rc = dgdo_ring_format(mem.get(), capacity, epoch);
        if (format_rc == DGDO_RING_OK) {
            dgdo_ring_producer_init(&prod, mem.get(), 1);
            dgdo_ring_consumer_init(&cons, mem.get(), 2);
        }
    }
    dgdo_ring_header* hdr() { return reinterpret_cast<dgdo_ring_header*>(mem.get()); }
    uint8_t* data() { return mem.get() + DGDO_RING_HEADER_SIZE; }

    struct Free {
        void operator()(uint8_t* p) const { std::free(p); }
    };
    size_t size;
    std::unique_ptr<uint8_t, Free> mem;
    int format_rc = 0;
    dgdo_ring_producer prod{};
    dgdo_ring_consumer cons{};
};

struct Received {
    int32_t type;
    std::vector<uint8_t> body;
};

inline void collect(void* ctx, int32_t type, const uint8_t* body, uint32_t len) {
    static_cast<std::vector<Received>*>(ctx)->push_back(Received{type, std::vector<uint8_t>(body, body + len)});
}
