// The offer-decision histogram the engine sends in ENGINE_STATS: bucket edges, sum, count, layout.
#include <gtest/gtest.h>

#include <vector>

#include "loop/latency_histogram.hpp"

using dgdo::LatencyHistogram;

TEST(LatencyHistogram, BoundsAreInclusiveUpperEdgesLikePrometheusLe) {
    LatencyHistogram h;
    h.add(0);
    h.add(10'000);   // exactly the first bound: first bucket
    h.add(10'001);   // just above: second
    h.add(100'000'000);  // the last bound
    h.add(100'000'001);  // above every bound: the overflow slot
    const auto& b = h.buckets();
    EXPECT_EQ(b[0], 2u);
    EXPECT_EQ(b[1], 1u);
    EXPECT_EQ(b[DGDO_LATENCY_BUCKETS - 1], 1u);
    EXPECT_EQ(b[DGDO_LATENCY_BUCKETS], 1u);
    EXPECT_EQ(h.count(), 5u);
    EXPECT_EQ(h.sum_ns(), 0u + 10'000 + 10'001 + 100'000'000 + 100'000'001);
}

TEST(LatencyHistogram, BoundsAscendFromTenMicrosecondsToOneHundredMilliseconds) {
    const auto& b = LatencyHistogram::kBoundsNs;
    EXPECT_EQ(b.front(), 10'000u);
    EXPECT_EQ(b.back(), 100'000'000u);
    for (size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1], b[i]);
}

TEST(LatencyHistogram, WritesItsFieldsIntoAnEngineStatsBody) {
    LatencyHistogram h;
    h.add(30'000);
    h.add(30'000);
    std::vector<uint8_t> body(sizeof(dgdo_out_engine_stats), 0xAB);
    h.write_to(body.data());
    dgdo_out_engine_stats s;
    std::memcpy(&s, body.data(), sizeof s);
    EXPECT_EQ(s.match_count, 2u);
    EXPECT_EQ(s.match_sum_ns, 60'000u);
    EXPECT_EQ(s.match_buckets[2], 2u);  // 25 us < 30 us <= 50 us
    EXPECT_EQ(s.match_buckets[0], 0u);
    EXPECT_EQ(s.match_p50_ns, 0xABABABABABABABABu);  // fields before the histogram untouched
}
