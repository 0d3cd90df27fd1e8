// Single-threaded ring behaviour: framing, wrap, full, limits, park/wake, format checks.
#undef NDEBUG
#include <gtest/gtest.h>

#include <numeric>

#include "ring_fixture.hpp"

namespace {

std::vector<uint8_t> bytes(size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    std::iota(v.begin(), v.end(), seed);
    return v;
}

int32_t type_at(RingFixture& r, uint64_t index) {
    int32_t t;
    std::memcpy(&t, r.data() + index + DGDO_RECORD_TYPE_OFFSET, sizeof t);
    return t;
}

int32_t length_at(RingFixture& r, uint64_t index) {
    int32_t l;
    std::memcpy(&l, r.data() + index + DGDO_RECORD_LENGTH_OFFSET, sizeof l);
    return l;
}

TEST(Ring, WrittenRecordReadsBackWithTypeAndBody) {
    RingFixture r(1024);
    const auto body = bytes(13, 5);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 77, body.data(), 13), DGDO_RING_OK);
    EXPECT_EQ(length_at(r, 0), 21);  // header + body, unaligned
    std::vector<Received> got;
    EXPECT_EQ(dgdo_ring_read(&r.cons, collect, &got, 10), 1u);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].type, 77);
    EXPECT_EQ(got[0].body, body);
    EXPECT_EQ(r.hdr()->head.load(), 24u);  // advanced by the aligned length
    EXPECT_EQ(dgdo_ring_depth(r.hdr()), 0u);
}

TEST(Ring, ConsumedRecordIsZeroedSoTheSlotReadsUncommitted) {
    RingFixture r(1024);
    const auto body = bytes(16, 1);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 1, body.data(), 16), DGDO_RING_OK);
    std::vector<Received> got;
    dgdo_ring_read(&r.cons, collect, &got, 10);
    for (int i = 0; i < 24; ++i) EXPECT_EQ(r.data()[i], 0) << i;
    EXPECT_FALSE(dgdo_ring_pending(&r.cons));
}

TEST(Ring, EmptyBodyRoundTrips) {
    RingFixture r(256);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 9, nullptr, 0), DGDO_RING_OK);
    std::vector<Received> got;
    ASSERT_EQ(dgdo_ring_read(&r.cons, collect, &got, 10), 1u);
    EXPECT_EQ(got[0].type, 9);
    EXPECT_TRUE(got[0].body.empty());
}

TEST(Ring, PaddingRecordIsInsertedAtWrapAndSkippedByTheReader) {
    RingFixture r(256);  // max_record 32: a 16-byte body makes a 24-byte record
    const auto body = bytes(16, 3);
    std::vector<Received> got;
    for (int i = 0; i < 10; ++i) ASSERT_EQ(dgdo_ring_write(&r.prod, i, body.data(), 16), DGDO_RING_OK);
    ASSERT_EQ(dgdo_ring_read(&r.cons, collect, &got, 100), 10u);  // head = 240, 16 bytes to the end
    ASSERT_EQ(dgdo_ring_write(&r.prod, 10, body.data(), 16), DGDO_RING_OK);
    EXPECT_EQ(type_at(r, 240), DGDO_RING_PADDING);
    EXPECT_EQ(length_at(r, 240), 16);
    EXPECT_EQ(type_at(r, 0), 10);
    EXPECT_EQ(r.hdr()->tail.load(), 240u + 16u + 24u);
    got.clear();
    ASSERT_EQ(dgdo_ring_read(&r.cons, collect, &got, 100), 1u);  // the padding is not counted
    EXPECT_EQ(got[0].type, 10);
    EXPECT_EQ(got[0].body, body);
    EXPECT_EQ(r.hdr()->head.load(), 280u);
}

TEST(Ring, RecordThatExactlyFillsTheEndNeedsNoPadding) {
    RingFixture r(256);
    const auto body = bytes(24, 9);  // 32-byte records: eight fill the data area exactly
    std::vector<Received> got;
    for (int i = 0; i < 8; ++i) {
        ASSERT_EQ(dgdo_ring_write(&r.prod, i, body.data(), 24), DGDO_RING_OK);
        ASSERT_EQ(dgdo_ring_read(&r.cons, collect, &got, 10), 1u);
    }
    EXPECT_EQ(r.hdr()->tail.load(), 256u);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 8, body.data(), 24), DGDO_RING_OK);
    EXPECT_EQ(type_at(r, 0), 8);  // straight at index 0, no padding record before it
    EXPECT_EQ(r.hdr()->tail.load(), 288u);
    ASSERT_EQ(dgdo_ring_read(&r.cons, collect, &got, 10), 1u);
    EXPECT_EQ(got.size(), 9u);
}

TEST(Ring, WriteReportsFullWhenFullAndSucceedsAfterConsumption) {
    RingFixture r(256);
    const auto body = bytes(24, 0);
    int written = 0;
    while (dgdo_ring_write(&r.prod, 1, body.data(), 24) == DGDO_RING_OK) ++written;
    EXPECT_EQ(written, 8);
    EXPECT_EQ(dgdo_ring_write(&r.prod, 1, body.data(), 24), DGDO_RING_FULL);
    EXPECT_EQ(r.hdr()->tail.load(), 256u);  // a FULL write changes nothing
    std::vector<Received> got;
    ASSERT_EQ(dgdo_ring_read(&r.cons, collect, &got, 1), 1u);
    EXPECT_EQ(dgdo_ring_write(&r.prod, 1, body.data(), 24), DGDO_RING_OK);
}

TEST(Ring, FullWhenOnlyTheTailEndIsFreeAndTheRecordMustWrap) {
    RingFixture r(256);
    const auto body = bytes(16, 0);
    std::vector<Received> got;
    for (int i = 0; i < 10; ++i) ASSERT_EQ(dgdo_ring_write(&r.prod, 1, body.data(), 16), DGDO_RING_OK);
    EXPECT_EQ(dgdo_ring_write(&r.prod, 1, body.data(), 16), DGDO_RING_FULL);  // 16 free at the end, 24 needed
    EXPECT_EQ(r.hdr()->tail.load(), 240u);  // and no padding was written either
    EXPECT_EQ(length_at(r, 240), 0);
    ASSERT_EQ(dgdo_ring_read(&r.cons, collect, &got, 1), 1u);  // frees 0..24: padding 16 + record 24 fit
    EXPECT_EQ(dgdo_ring_write(&r.prod, 1, body.data(), 16), DGDO_RING_OK);
    EXPECT_EQ(r.hdr()->tail.load(), 280u);
}

TEST(Ring, RecordLongerThanMaxRecordIsTooLarge) {
    RingFixture r(1024);
    const uint32_t max_body = r.hdr()->max_record - DGDO_RECORD_HEADER;
    const auto body = bytes(max_body + 1, 0);
    EXPECT_EQ(dgdo_ring_write(&r.prod, 1, body.data(), max_body + 1), DGDO_RING_TOO_LARGE);
    EXPECT_EQ(dgdo_ring_write(&r.prod, 1, body.data(), max_body), DGDO_RING_OK);
}

TEST(Ring, ReadStopsAtTheLimitAndReleasesHeadOnce) {
    RingFixture r(1024);
    for (int i = 0; i < 5; ++i) ASSERT_EQ(dgdo_ring_write(&r.prod, i, nullptr, 0), DGDO_RING_OK);
    std::vector<Received> got;
    EXPECT_EQ(dgdo_ring_read(&r.cons, collect, &got, 3), 3u);
    EXPECT_EQ(r.hdr()->head.load(), 24u);
    EXPECT_EQ(dgdo_ring_read(&r.cons, collect, &got, 3), 2u);
    EXPECT_EQ(got.back().type, 4);
}

TEST(Ring, DrainCopyEmitsFramedRecordsPaddedToEightBytes) {
    RingFixture r(1024);
    const auto body = bytes(5, 1);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 3, body.data(), 5), DGDO_RING_OK);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 4, body.data(), 5), DGDO_RING_OK);
    uint8_t out[64];
    std::memset(out, 0xee, sizeof out);
    ASSERT_EQ(dgdo_ring_drain_copy(&r.cons, out, 20, 10), 16u);  // only one fits in 20 bytes
    int32_t len, type;
    std::memcpy(&len, out, 4);
    std::memcpy(&type, out + 4, 4);
    EXPECT_EQ(len, 13);
    EXPECT_EQ(type, 3);
    EXPECT_EQ(std::memcmp(out + 8, body.data(), 5), 0);
    EXPECT_EQ(out[13], 0);  // alignment padding is zeroed
    EXPECT_TRUE(dgdo_ring_pending(&r.cons));
}

TEST(Ring, ParkReturnsZeroWhenARecordIsPending) {
    RingFixture r(256);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 1, nullptr, 0), DGDO_RING_OK);
    EXPECT_EQ(dgdo_ring_park(&r.cons), 0);
    EXPECT_EQ(r.hdr()->parked.load(), 0u);
}

TEST(Ring, ParkReturnsOneWhenEmpty) {
    RingFixture r(256);
    EXPECT_EQ(dgdo_ring_park(&r.cons), 1);
    EXPECT_EQ(r.hdr()->parked.load(), 1u);
    dgdo_ring_unpark(&r.cons);
    EXPECT_EQ(r.hdr()->parked.load(), 0u);
}

TEST(Ring, ShouldWakeOnlyWhenParkedAndOnlyOnce) {
    RingFixture r(256);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 1, nullptr, 0), DGDO_RING_OK);
    EXPECT_FALSE(dgdo_ring_producer_should_wake(&r.prod));  // consumer awake: no syscall owed
    std::vector<Received> got;
    dgdo_ring_read(&r.cons, collect, &got, 10);
    ASSERT_EQ(dgdo_ring_park(&r.cons), 1);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 2, nullptr, 0), DGDO_RING_OK);
    EXPECT_TRUE(dgdo_ring_producer_should_wake(&r.prod));
    ASSERT_EQ(dgdo_ring_write(&r.prod, 3, nullptr, 0), DGDO_RING_OK);
    EXPECT_FALSE(dgdo_ring_producer_should_wake(&r.prod));  // one doorbell per park
}

TEST(Ring, FormatRejectsACapacityThatIsNotAPowerOfTwo) {
    std::vector<uint8_t> seg(dgdo_ring_segment_size(4096));
    EXPECT_EQ(dgdo_ring_format(seg.data(), 3000, 1), DGDO_RING_BAD_CAPACITY);
    EXPECT_EQ(dgdo_ring_format(seg.data(), 128, 1), DGDO_RING_BAD_CAPACITY);  // below the minimum
    EXPECT_EQ(dgdo_ring_format(seg.data(), 0, 1), DGDO_RING_BAD_CAPACITY);
}

TEST(Ring, CheckRejectsAnUnformattedSegment) {
    std::vector<uint8_t> seg(dgdo_ring_segment_size(256));
    EXPECT_EQ(dgdo_ring_check(seg.data(), seg.size(), 0), DGDO_RING_BAD_MAGIC);
    EXPECT_EQ(dgdo_ring_check(seg.data(), 100, 0), DGDO_RING_BAD_MAGIC);  // shorter than the header
}

TEST(Ring, CheckRejectsAnotherRunsEpochButAcceptsAnyWithZero) {
    RingFixture r(256, 1234);
    EXPECT_EQ(dgdo_ring_check(r.mem.get(), r.size, 1234), DGDO_RING_OK);
    EXPECT_EQ(dgdo_ring_check(r.mem.get(), r.size, 0), DGDO_RING_OK);
    EXPECT_EQ(dgdo_ring_check(r.mem.get(), r.size, 999), DGDO_RING_BAD_EPOCH);
}

TEST(Ring, CheckRejectsCorruptedCapacityVersionAndShortMapping) {
    RingFixture r(256);
    EXPECT_EQ(dgdo_ring_check(r.mem.get(), r.size - 1, 0), DGDO_RING_BAD_SIZE);
    r.hdr()->capacity = 300;
    EXPECT_EQ(dgdo_ring_check(r.mem.get(), r.size, 0), DGDO_RING_BAD_CAPACITY);
    r.hdr()->capacity = 256;
    r.hdr()->version = 2;
    EXPECT_EQ(dgdo_ring_check(r.mem.get(), r.size, 0), DGDO_RING_BAD_VERSION);
}

TEST(Ring, ProducerInitResumesAtTheSharedTail) {
    RingFixture r(256);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 1, nullptr, 0), DGDO_RING_OK);
    dgdo_ring_producer again;
    dgdo_ring_producer_init(&again, r.mem.get(), 3);
    EXPECT_EQ(again.tail, 8u);
    EXPECT_EQ(r.hdr()->producer_pid, 3);
}

}  // namespace

// Two-phase read: what a peek hands out stays committed (a dead consumer's producer salvages it)
// until the release retires it.
TEST(RingPeek, PeekedRecordsStayCommittedUntilReleased) {
    RingFixture r(1024);
    const auto body = bytes(16, 7);
    for (int i = 0; i < 3; ++i) ASSERT_EQ(dgdo_ring_write(&r.prod, 10 + i, body.data(), 16), DGDO_RING_OK);
    std::vector<Received> got;
    uint64_t end = 0;
    ASSERT_EQ(dgdo_ring_peek(&r.cons, collect, &got, 2, &end), 2u);
    EXPECT_EQ(end, 48u);
    EXPECT_EQ(length_at(r, 0), 24);  // still committed
    EXPECT_EQ(r.hdr()->head.load(), 0u);
    got.clear();
    ASSERT_EQ(dgdo_ring_peek(&r.cons, collect, &got, 2, &end), 2u);  // the same two again
    EXPECT_EQ(got[0].type, 10);
    EXPECT_EQ(got[1].body, body);
    dgdo_ring_release(&r.cons, end);
    EXPECT_EQ(r.hdr()->head.load(), 48u);
    for (int i = 0; i < 48; ++i) EXPECT_EQ(r.data()[i], 0) << i;
    EXPECT_EQ(type_at(r, 48), 12);  // the third is untouched
    got.clear();
    ASSERT_EQ(dgdo_ring_read(&r.cons, collect, &got, 10), 1u);
    EXPECT_EQ(got[0].type, 12);
}

TEST(RingPeek, ReleaseRetiresAPaddingRecordAtTheWrap) {
    RingFixture r(256);
    const auto body = bytes(16, 3);
    std::vector<Received> got;
    for (int i = 0; i < 10; ++i) ASSERT_EQ(dgdo_ring_write(&r.prod, i, body.data(), 16), DGDO_RING_OK);
    ASSERT_EQ(dgdo_ring_read(&r.cons, collect, &got, 100), 10u);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 10, body.data(), 16), DGDO_RING_OK);  // padding at 240, record at 0
    got.clear();
    uint64_t end = 0;
    ASSERT_EQ(dgdo_ring_peek(&r.cons, collect, &got, 10, &end), 1u);
    EXPECT_EQ(end, 280u);
    EXPECT_EQ(length_at(r, 240), 16);
    dgdo_ring_release(&r.cons, end);
    EXPECT_EQ(length_at(r, 240), 0);
    EXPECT_EQ(length_at(r, 0), 0);
    EXPECT_EQ(r.hdr()->head.load(), 280u);
    EXPECT_FALSE(dgdo_ring_pending(&r.cons));
    ASSERT_EQ(dgdo_ring_write(&r.prod, 11, body.data(), 16), DGDO_RING_OK);  // the slots are reusable
    EXPECT_TRUE(dgdo_ring_pending(&r.cons));
}

// A completely full ring: nothing is retired during a peek, so one capacity past head lies the
// first record again. The peek must stop after one lap, not read it twice.
TEST(RingPeek, APeekOfAFullRingStopsAfterOneLap) {
    RingFixture r(256);
    const auto body = bytes(24, 1);  // 32-byte records: eight fill the data area exactly
    for (int i = 0; i < 8; ++i) ASSERT_EQ(dgdo_ring_write(&r.prod, 100 + i, body.data(), 24), DGDO_RING_OK);
    ASSERT_EQ(dgdo_ring_write(&r.prod, 200, body.data(), 24), DGDO_RING_FULL);
    std::vector<Received> got;
    uint64_t end = 0;
    ASSERT_EQ(dgdo_ring_peek(&r.cons, collect, &got, 1000, &end), 8u);
    EXPECT_EQ(end, 256u);
    EXPECT_EQ(got.back().type, 107);
    dgdo_ring_release(&r.cons, end);
    for (int i = 0; i < 8; ++i) ASSERT_EQ(dgdo_ring_write(&r.prod, 300 + i, body.data(), 24), DGDO_RING_OK);  // again, one lap on
    got.clear();
    ASSERT_EQ(dgdo_ring_read(&r.cons, collect, &got, 1000), 8u);
    EXPECT_EQ(got.front().type, 300);
}
