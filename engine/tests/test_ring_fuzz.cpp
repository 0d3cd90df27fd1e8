// Two threads, one ring: every record arrives once, in order, intact.
#undef NDEBUG
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "ring_fixture.hpp"

namespace {

constexpr uint64_t kRecords = 1'000'000;
constexpr uint32_t kMaxPayload = 200;

uint32_t payload_len(uint64_t seq) { return static_cast<uint32_t>((seq * 7919) % (kMaxPayload + 1)); }

struct Checker {
    uint64_t expected = 0;
    uint64_t errors = 0;
};

void check(void* ctx, int32_t type, const uint8_t* body, uint32_t len) {
    auto* c = static_cast<Checker*>(ctx);
    uint64_t seq = ~0ull;
    if (len >= 8) std::memcpy(&seq, body, 8);
    bool ok = type == 7 && seq == c->expected && len == 8 + payload_len(seq);
    for (uint32_t i = 0; ok && i < len - 8; ++i) ok = body[8 + i] == static_cast<uint8_t>(seq + i);
    c->errors += !ok;
    ++c->expected;
}

TEST(RingFuzz, MillionRecordsOfRandomSizeCrossTwoThreadsInOrderAndIntact) {
    RingFixture r(1 << 16);
    std::thread producer([&] {
        std::mt19937 rng(7);
        std::vector<uint8_t> body(8 + kMaxPayload);
        for (uint64_t seq = 0; seq < kRecords; ++seq) {
            const uint32_t n = payload_len(seq);
            std::memcpy(body.data(), &seq, 8);
            for (uint32_t i = 0; i < n; ++i) body[8 + i] = static_cast<uint8_t>(seq + i);
            while (dgdo_ring_write(&r.prod, 7, body.data(), 8 + n) == DGDO_RING_FULL) std::this_thread::yield();
            if (rng() % 4096 == 0) std::this_thread::yield();  // vary the interleaving
        }
    });
    Checker c;
    while (c.expected < kRecords) {
        if (dgdo_ring_read(&r.cons, check, &c, 256) == 0) std::this_thread::yield();
    }
    producer.join();
    EXPECT_EQ(c.errors, 0u);
    EXPECT_EQ(c.expected, kRecords);
    EXPECT_FALSE(dgdo_ring_pending(&r.cons));
    EXPECT_EQ(dgdo_ring_depth(r.hdr()), 0u);
}

}  // namespace
