// Min-cost assignment (the Hungarian method with potentials, O(n² m)).
//
// cost is row-major, rows × cols, rows <= cols. Returns, for each row, the
// column assigned to it; every row gets a distinct column and the sum of the
// chosen costs is minimal. Pairs that must not be matched should carry a cost
// larger than any sum of real ones; the caller then drops rows assigned such
// a pair. Deterministic: the same matrix always gives the same assignment.
#pragma once

#include <cassert>
#include <cstddef>
#include <limits>
#include <vector>

namespace dgdo {

inline std::vector<int> hungarian(const std::vector<double>& cost, int rows, int cols) {
    assert(rows <= cols && "hungarian: more rows than columns; pad the columns");
    assert(cost.size() == static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols));
    constexpr double inf = std::numeric_limits<double>::infinity();
    auto a = [&](int i, int j) { return cost[static_cast<std::size_t>(i - 1) * static_cast<std::size_t>(cols) +
                                             static_cast<std::size_t>(j - 1)]; };
    // 1-based: column 0 is a virtual column holding the row being inserted.
    std::vector<double> u(static_cast<std::size_t>(rows) + 1, 0.0), v(static_cast<std::size_t>(cols) + 1, 0.0);
    std::vector<int> match(static_cast<std::size_t>(cols) + 1, 0);  // column -> row (0 = free)
    std::vector<int> way(static_cast<std::size_t>(cols) + 1, 0);    // previous column on the augmenting path
    std::vector<double> minv(static_cast<std::size_t>(cols) + 1);
    std::vector<char> used(static_cast<std::size_t>(cols) + 1);
    for (int i = 1; i <= rows; ++i) {
        match[0] = i;
        int j0 = 0;
        std::fill(minv.begin(), minv.end(), inf);
        std::fill(used.begin(), used.end(), 0);
        do {  // grow a shortest augmenting path (Dijkstra on reduced costs)
            used[static_cast<std::size_t>(j0)] = 1;
            const int i0 = match[static_cast<std::size_t>(j0)];
            double delta = inf;
            int j1 = 0;
            for (int j = 1; j <= cols; ++j) {
                const auto sj = static_cast<std::size_t>(j);
                if (used[sj]) continue;
                const double cur = a(i0, j) - u[static_cast<std::size_t>(i0)] - v[sj];
                if (cur < minv[sj]) {
                    minv[sj] = cur;
                    way[sj] = j0;
                }
                if (minv[sj] < delta) {
                    delta = minv[sj];
                    j1 = j;
                }
            }
            for (int j = 0; j <= cols; ++j) {
                const auto sj = static_cast<std::size_t>(j);
                if (used[sj]) {
                    u[static_cast<std::size_t>(match[sj])] += delta;
                    v[sj] -= delta;
                } else {
                    minv[sj] -= delta;
                }
            }
            j0 = j1;
        } while (match[static_cast<std::size_t>(j0)] != 0);
        do {  // flip the path
            const int j1 = way[static_cast<std::size_t>(j0)];
            match[static_cast<std::size_t>(j0)] = match[static_cast<std::size_t>(j1)];
            j0 = j1;
        } while (j0 != 0);
    }
    std::vector<int> row_to_col(static_cast<std::size_t>(rows), -1);
    for (int j = 1; j <= cols; ++j)
        if (match[static_cast<std::size_t>(j)] != 0) row_to_col[static_cast<std::size_t>(match[static_cast<std::size_t>(j)] - 1)] = j - 1;
    return row_to_col;
}

}  // namespace dgdo
