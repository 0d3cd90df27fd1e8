// Several sidecar workers: one app id is open on at most one connection. A session opened for a
// role + id whose session is open elsewhere makes the core tell the older one to go
// (SESSION_REPLACED, which its sidecar turns into close 4001), wherever it is.
#undef NDEBUG
#include <algorithm>

#include "core_harness.hpp"

namespace dgdo::test {
namespace {

std::vector<OutRecord> replaced_in(const std::vector<OutRecord>& out) { return of_type(out, DGDO_OUT_SESSION_REPLACED); }

TEST(CoreWorkers, AnOpenOnAnotherWorkerTellsTheOlderSessionToClose) {
    Harness h;
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 7);
    const auto out = h.session(true, DGDO_ROLE_DRIVER, "d1", 2, 3);
    const auto r = replaced_in(out);
    ASSERT_EQ(r.size(), 1u);
    const auto rec = as<dgdo_out_session_replaced>(r[0]);
    EXPECT_EQ(rec.meta.to_worker, 1u);  // the older session's worker and connection
    EXPECT_EQ(rec.meta.to_conn, 7u);
    EXPECT_EQ(rec.meta.to_role, DGDO_ROLE_DRIVER);
    EXPECT_EQ(id_str(rec.meta.to_id), "d1");
    EXPECT_EQ(rec.by_worker, 2u);
    // Before the newer one's welcome, which goes to the newer connection.
    EXPECT_LT(std::find_if(out.begin(), out.end(), [](const OutRecord& o) { return o.type == DGDO_OUT_SESSION_REPLACED; }),
              std::find_if(out.begin(), out.end(), [](const OutRecord& o) { return o.type == DGDO_OUT_SESSION_STATE; }));
    EXPECT_EQ(session_state(out).meta.to_worker, 2u);
    EXPECT_EQ(session_state(out).meta.to_conn, 3u);
}

TEST(CoreWorkers, AnotherConnectionOfTheSameWorkerIsToldToo) {
    Harness h;
    h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7);
    const auto r = replaced_in(h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 8));
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(as<dgdo_out_session_replaced>(r[0]).meta.to_conn, 7u);
}

TEST(CoreWorkers, NoReplacementAfterTheOlderClosedOrForTheSameConnection) {
    Harness h;
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 7);
    EXPECT_TRUE(replaced_in(h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 7)).empty());  // re-announced
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 7);
    EXPECT_TRUE(replaced_in(h.session(true, DGDO_ROLE_DRIVER, "d1", 2, 1)).empty());
    h.step(WorkerDetached{2});  // its worker died: the session is closed with it
    EXPECT_TRUE(replaced_in(h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 9)).empty());
    // Other ids and roles are separate sessions.
    EXPECT_TRUE(replaced_in(h.session(true, DGDO_ROLE_PASSENGER, "d1", 2, 2)).empty());
    EXPECT_TRUE(replaced_in(h.session(true, DGDO_ROLE_DRIVER, "d2", 2, 3)).empty());
}

TEST(CoreWorkers, TheOlderCloseArrivingAfterTheReplacementLeavesTheNewerOpen) {
    Harness h;
    h.online("d1", at(300));
    h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 7);
    h.session(true, DGDO_ROLE_DRIVER, "d1", 2, 3);
    h.session(false, DGDO_ROLE_DRIVER, "d1", 1, 7);  // worker 1 closed it as told
    EXPECT_TRUE(h.core.find_driver("d1")->connected);
    const uint64_t id = h.order_for("p1");
    const auto offers = to_whom(h.all, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1");
    ASSERT_FALSE(offers.empty());
    EXPECT_EQ(as<dgdo_out_new_order>(offers.back()).order_id, id);
    EXPECT_EQ(as<dgdo_out_meta>(offers.back()).to_worker, 2u);  // routed to where the app is now
}

TEST(CoreWorkers, ALateOpenIsToldToCloseAndLeavesTheNewerConnectionItsSession) {
    // The app reconnected from worker 1 (conn 7, upgraded at t=100) to worker 2 (conn 3, t=200),
    // and worker 2's open reached the engine first (the rings are read in turn).
    Harness h;
    h.online("d1", at(300));
    h.session(true, DGDO_ROLE_PASSENGER, "p1", 2, 3, std::nullopt, 200);
    const auto out = h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 7, std::nullopt, 100);
    const auto r = replaced_in(out);
    ASSERT_EQ(r.size(), 1u);
    const auto rec = as<dgdo_out_session_replaced>(r[0]);
    EXPECT_EQ(rec.meta.to_worker, 1u);  // the late one goes
    EXPECT_EQ(rec.meta.to_conn, 7u);
    EXPECT_EQ(rec.by_worker, 2u);
    EXPECT_TRUE(of_type(out, DGDO_OUT_SESSION_STATE).empty());  // and gets no welcome
    h.session(false, DGDO_ROLE_PASSENGER, "p1", 1, 7);  // its sidecar closed it as told: ignored
    // The app's session is where the app is: its order's updates are routed to worker 2.
    h.order_for("p1");
    const auto updates = to_whom(h.all, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_FALSE(updates.empty());
    EXPECT_EQ(as<dgdo_out_meta>(updates.back()).to_worker, 2u);
    // A later open (t=300) still replaces it, whichever worker it comes from.
    const auto again = replaced_in(h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 8, std::nullopt, 300));
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(as<dgdo_out_session_replaced>(again[0]).meta.to_conn, 3u);
}

TEST(CoreWorkers, AReconnectStormEndsOnTheNewestConnectionInEveryOrderTheRingsAllow) {
    // The app connects on worker 1 (conn 7, t=100), on worker 2 (conn 3, t=200), on worker 1 again
    // (conn 8, t=300). Worker 1's two opens reach the engine in their ring's order; worker 2's may
    // come before, between or after them. Each older connection is told once, the newest never.
    struct Open {
        uint16_t worker;
        uint32_t conn;
        uint64_t t;
    };
    const Open a{1, 7, 100}, b{2, 3, 200}, c{1, 8, 300};
    for (const auto& order : {std::vector<Open>{a, b, c}, {a, c, b}, {b, a, c}}) {
        Harness h;
        std::vector<OutRecord> out;
        for (const Open& o : order) {
            auto got = h.session(true, DGDO_ROLE_PASSENGER, "p1", o.worker, o.conn, std::nullopt, o.t);
            out.insert(out.end(), got.begin(), got.end());
        }
        std::vector<std::pair<uint16_t, uint32_t>> told;
        for (const auto& r : replaced_in(out)) {
            const auto rec = as<dgdo_out_session_replaced>(r);
            told.emplace_back(rec.meta.to_worker, rec.meta.to_conn);
        }
        std::sort(told.begin(), told.end());
        EXPECT_EQ(told, (std::vector<std::pair<uint16_t, uint32_t>>{{1, 7}, {2, 3}}));
        h.order_for("p1");
        const auto updates = to_whom(h.all, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
        ASSERT_FALSE(updates.empty());
        EXPECT_EQ(as<dgdo_out_meta>(updates.back()).to_worker, 1u);  // where conn 8 is
        h.session(false, DGDO_ROLE_PASSENGER, "p1", 2, 3);  // worker 2's close of its own: ignored
        EXPECT_TRUE(replaced_in(h.session(true, DGDO_ROLE_PASSENGER, "p1", 1, 8, std::nullopt, 300)).empty());
    }
}

TEST(CoreWorkers, AfterARestartMidReplacementTheNewerConnectionWinsWhicheverWorkerReAnnouncesFirst) {
    // The engine died with the app on two workers: the newer connection (worker 2, t=200) had
    // replaced the older (worker 1, t=100), whose sidecar had not heard it yet. The restarted engine
    // detaches both workers, and both re-announce their session, in either order.
    for (const bool older_first : {true, false}) {
        Harness h;
        h.online("d1", at(300));
        h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 7, std::nullopt, 100);
        h.session(true, DGDO_ROLE_DRIVER, "d1", 2, 3, std::nullopt, 200);
        h.step(WorkerDetached{1});
        h.step(WorkerDetached{2});
        std::vector<OutRecord> out;
        auto announce = [&](uint16_t worker, uint32_t conn, uint64_t t) {
            auto got = h.session(true, DGDO_ROLE_DRIVER, "d1", worker, conn, std::nullopt, t);
            out.insert(out.end(), got.begin(), got.end());
        };
        if (older_first) announce(1, 7, 100);
        announce(2, 3, 200);
        if (!older_first) announce(1, 7, 100);
        const auto r = replaced_in(out);
        ASSERT_EQ(r.size(), 1u);  // the older one is told, once
        EXPECT_EQ(as<dgdo_out_session_replaced>(r[0]).meta.to_worker, 1u);
        EXPECT_EQ(as<dgdo_out_session_replaced>(r[0]).meta.to_conn, 7u);
        EXPECT_TRUE(h.core.find_driver("d1")->connected);
        h.order_for("p1");
        const auto offers = to_whom(h.all, DGDO_OUT_NEW_ORDER, DGDO_ROLE_DRIVER, "d1");
        ASSERT_FALSE(offers.empty());
        EXPECT_EQ(as<dgdo_out_meta>(offers.back()).to_worker, 2u);
    }
}

TEST(CoreWorkers, ReplacementIsTheSameOnReplay) {
    // An output of an input: two cores fed the same inputs emit the same bytes.
    auto run = [] {
        Harness h;
        h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 7);
        h.session(true, DGDO_ROLE_DRIVER, "d1", 2, 3);
        h.session(true, DGDO_ROLE_DRIVER, "d1", 1, 9);
        return replaced_in(h.all);
    };
    const auto a = run(), b = run();
    ASSERT_EQ(a.size(), 2u);
    ASSERT_EQ(b.size(), 2u);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].body, b[i].body);
}

}  // namespace
}  // namespace dgdo::test
