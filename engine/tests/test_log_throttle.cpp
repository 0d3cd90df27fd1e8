#include "loop/log_throttle.hpp"

#include <gtest/gtest.h>

using dgdo::LogThrottle;

constexpr uint64_t kS = 1'000'000'000ull;

TEST(LogThrottle, TheFirstLineIsWrittenThenOnePerIntervalWithTheCountLeftOut) {
    LogThrottle t(10 * kS);
    uint64_t left = 99;
    ASSERT_TRUE(t.allow(5 * kS, &left));
    EXPECT_EQ(left, 0u);
    for (int i = 0; i < 1000; ++i) EXPECT_FALSE(t.allow(5 * kS + static_cast<uint64_t>(i) * 1000, &left));
    EXPECT_FALSE(t.allow(15 * kS - 1, &left));
    ASSERT_TRUE(t.allow(15 * kS, &left));
    EXPECT_EQ(left, 1001u);
    ASSERT_TRUE(t.allow(30 * kS, &left));  // a quiet interval: nothing was left out
    EXPECT_EQ(left, 0u);
}

TEST(LogThrottle, AFirstLineAtTimeZeroIsWritten) {
    LogThrottle t(10 * kS);
    uint64_t left = 0;
    EXPECT_TRUE(t.allow(0, &left));
    EXPECT_FALSE(t.allow(1, &left));
}

TEST(LogThrottle, EachKindHasItsOwn) {
    LogThrottle inbound(10 * kS), fleet(10 * kS);
    uint64_t left = 0;
    EXPECT_TRUE(inbound.allow(kS, &left));
    EXPECT_FALSE(inbound.allow(2 * kS, &left));
    EXPECT_TRUE(fleet.allow(2 * kS, &left));
}
