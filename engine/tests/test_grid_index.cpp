// GridIndex answers exactly what the O(n) LinearIndex answers, however drivers move.
#undef NDEBUG
#include <random>

#include "core/driver_index.hpp"
#include "core_harness.hpp"

namespace dgdo::test {
namespace {

void expect_same(const std::vector<Candidate>& a, const std::vector<Candidate>& b, const std::string& what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].id, b[i].id) << what << " #" << i;
        EXPECT_DOUBLE_EQ(a[i].distance_m, b[i].distance_m) << what << " #" << i;
    }
}

TEST(GridIndex, AgreesWithTheLinearScanOnRandomMovesQueriesAndFilters) {
    GridIndex grid;
    LinearIndex lin;
    std::mt19937 rng(7);
    auto coord = [&rng](int span) { return static_cast<double>(static_cast<int>(rng() % static_cast<uint32_t>(2 * span)) - span); };
    for (int step = 0; step < 6000; ++step) {
        const std::string id = "d" + std::to_string(rng() % 400);
        switch (rng() % 8) {
        case 0:
            grid.erase(id);
            lin.erase(id);
            break;
        case 1: {  // a small move, usually inside the same cell
            const dgdo_point p = at(coord(9000), coord(9000));
            grid.upsert(id, p);
            lin.upsert(id, p);
            grid.upsert(id, dgdo_point{p.lat + 0.00001, p.lon});
            lin.upsert(id, dgdo_point{p.lat + 0.00001, p.lon});
            break;
        }
        case 2: {
            const dgdo_point q = at(coord(10000), coord(10000));
            const double r = 200.0 + static_cast<double>(rng() % 7000);
            const size_t k = 1 + rng() % 12;
            const uint32_t mod = 2 + rng() % 3;
            const Eligible odd = [mod](const std::string& s) { return std::stoi(s.substr(1)) % static_cast<int>(mod) != 0; };
            expect_same(grid.nearest_k(q, r, k, odd), lin.nearest_k(q, r, k, odd), "filtered step " + std::to_string(step));
            expect_same(grid.within(q, r, k), lin.within(q, r, k), "within step " + std::to_string(step));
            break;
        }
        default: {
            const dgdo_point p = at(coord(9000), coord(9000));
            grid.upsert(id, p);
            lin.upsert(id, p);
        }
        }
        ASSERT_EQ(grid.size(), lin.size());
    }
}

TEST(GridIndex, AMoveInsideTheCellOnlyRewritesCoordinates) {
    GridIndex grid;
    grid.upsert("d1", at(10, 10));
    EXPECT_EQ(grid.cells(), 1u);
    grid.upsert("d1", at(20, 20));
    EXPECT_EQ(grid.cells(), 1u);
    EXPECT_NEAR(grid.nearest(at(20, 20), 100, nullptr)->distance_m, 0.0, 1e-6);
    grid.upsert("d1", at(2000, 0));  // another cell: the old one is dropped
    EXPECT_EQ(grid.cells(), 1u);
    EXPECT_EQ(grid.size(), 1u);
    EXPECT_FALSE(grid.nearest(at(0, 0), 1000, nullptr).has_value());
    EXPECT_TRUE(grid.nearest(at(0, 0), 2100, nullptr).has_value());
    grid.erase("d1");
    EXPECT_EQ(grid.cells(), 0u);
    EXPECT_EQ(grid.size(), 0u);
}

TEST(GridIndex, AMoveInsideTheCellKeepsTheDriversHandleAndSlot) {
    GridIndex grid;
    grid.upsert("d0", at(5, 5));
    grid.upsert("d1", at(10, 10));
    grid.upsert("d2", at(15, 15));
    const uint32_t h0 = grid.handle("d0"), h1 = grid.handle("d1"), h2 = grid.handle("d2");
    const auto p0 = grid.place_of(h0), p1 = grid.place_of(h1), p2 = grid.place_of(h2);
    ASSERT_EQ(p0.cell, p1.cell);  // one cell, three slots
    grid.upsert("d1", at(40, 30));
    grid.move(h1, at(50, 35));
    EXPECT_EQ(grid.handle("d1"), h1);
    EXPECT_EQ(grid.place_of(h1), p1);  // rewritten where it was
    EXPECT_EQ(grid.place_of(h0), p0);  // nobody else shifted
    EXPECT_EQ(grid.place_of(h2), p2);
    EXPECT_NEAR(grid.nearest(at(50, 35), 5, nullptr)->distance_m, 0.0, 1e-6);

    grid.upsert("d0", at(2000, 0));  // across cells: the handle stays, the last slot fills the gap
    EXPECT_EQ(grid.handle("d0"), h0);
    EXPECT_NE(grid.place_of(h0).cell, p0.cell);
    EXPECT_EQ(grid.place_of(h2), p0);
    EXPECT_EQ(grid.place_of(h1), p1);
}

TEST(GridIndex, EqualDistancesGoToTheSmallerId) {
    GridIndex grid;
    grid.upsert("b", at(0, 500));
    grid.upsert("a", at(0, -600));
    grid.upsert("c", at(0, 500));
    const auto got = grid.nearest_k(kCenter, 1000, 3, nullptr);
    ASSERT_EQ(got.size(), 3u);
    EXPECT_EQ(got[0].id, "b");  // b and c share a point
    EXPECT_EQ(got[1].id, "c");
    EXPECT_EQ(got[2].id, "a");
}

TEST(GridIndex, NothingBeyondTheRadiusAndTheNearestAcrossManyEmptyRings) {
    GridIndex grid;
    grid.upsert("far", at(6900, 0));
    EXPECT_FALSE(grid.nearest(kCenter, 3000, nullptr).has_value());
    const auto c = grid.nearest(kCenter, 7000, nullptr);
    ASSERT_TRUE(c.has_value());
    EXPECT_EQ(c->id, "far");
    EXPECT_NEAR(c->distance_m, 6900, 5);
}

TEST(GridIndex, IneligibleDriversAreSkippedForTheNextNearest) {
    GridIndex grid;
    for (int i = 0; i < 50; ++i) grid.upsert("d" + std::to_string(i), at(10.0 * i, 0));
    const auto c = grid.nearest(kCenter, 3000, [](const std::string& s) { return s == "d37"; });
    ASSERT_TRUE(c.has_value());
    EXPECT_EQ(c->id, "d37");
}

}  // namespace
}  // namespace dgdo::test
