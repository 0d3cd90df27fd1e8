// The assignment is optimal: compared with brute force over every permutation.
#undef NDEBUG
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "core/hungarian.hpp"

namespace dgdo {
namespace {

double brute_force(const std::vector<double>& c, int n, int m) {
    std::vector<int> cols(static_cast<size_t>(m));
    std::iota(cols.begin(), cols.end(), 0);
    double best = 1e300;
    do {  // the first n columns of each permutation (repeats are harmless)
        double s = 0;
        for (int i = 0; i < n; ++i) s += c[static_cast<size_t>(i * m + cols[static_cast<size_t>(i)])];
        best = std::min(best, s);
    } while (std::next_permutation(cols.begin(), cols.end()));
    return best;
}

TEST(Hungarian, MatchesBruteForceOnRandomSquareAndWideMatrices) {
    std::mt19937 rng(3);
    for (int trial = 0; trial < 300; ++trial) {
        const int n = 1 + static_cast<int>(rng() % 6);
        const int m = n + static_cast<int>(rng() % 3);
        std::vector<double> c(static_cast<size_t>(n * m));
        for (auto& x : c) x = static_cast<double>(rng() % 50);  // small range: many ties
        const auto pick = hungarian(c, n, m);
        double s = 0;
        std::vector<int> seen;
        for (int i = 0; i < n; ++i) {
            const int j = pick[static_cast<size_t>(i)];
            ASSERT_GE(j, 0);
            ASSERT_LT(j, m);
            seen.push_back(j);
            s += c[static_cast<size_t>(i * m + j)];
        }
        std::sort(seen.begin(), seen.end());
        EXPECT_EQ(std::unique(seen.begin(), seen.end()), seen.end()) << "a column used twice";
        EXPECT_DOUBLE_EQ(s, brute_force(c, n, m)) << "trial " << trial;
    }
}

TEST(Hungarian, PrefersTheGloballyCheaperPairingOverTheGreedyOne) {
    // Greedy takes (0,0)=1 and is left with (1,1)=100; optimal is 2 + 3.
    const std::vector<double> c = {1, 2, 3, 100};
    EXPECT_EQ(hungarian(c, 2, 2), (std::vector<int>{1, 0}));
}

}  // namespace
}  // namespace dgdo
