// The same inputs give the same output bytes: the core is a pure function of its journal.
#undef NDEBUG
#include <random>

#include "core_harness.hpp"

namespace dgdo::test {
namespace {

// A pseudo-random but fixed day: drivers roam, passengers order, everyone acts.
std::vector<OutRecord> run_script(uint32_t seed) {
    Harness h;
    std::mt19937 rng(seed);
    auto pick = [&rng](int n) { return static_cast<int>(rng() % static_cast<uint32_t>(n)); };
    for (int i = 0; i < 3000; ++i) {
        const std::string d = "d" + std::to_string(pick(30));
        const std::string p = "p" + std::to_string(pick(20));
        switch (pick(10)) {
        case 0: h.status(d, static_cast<uint8_t>(pick(4) != 0)); break;
        case 1: h.ride(p, at(pick(4000) - 2000, pick(4000) - 2000), static_cast<uint64_t>(pick(3))); break;
        case 2:
        case 3: {
            const uint64_t order = 1001 + static_cast<uint64_t>(pick(200));
            h.driver_cmd(d, order, static_cast<uint8_t>(1 + pick(6)));
            if (const Order* o = h.core.find_order(order); o && !o->driver.empty())
                h.driver_cmd(o->driver, order, static_cast<uint8_t>(1 + pick(5)));
            break;
        }
        case 4: h.passenger_cmd(p, 1001 + static_cast<uint64_t>(pick(200)), DGDO_CMD_CANCEL); break;
        case 5: h.nearby(p, at(pick(2000), pick(2000)), 1000 + pick(3000), pick(3) != 0); break;
        case 6: h.session(pick(2) != 0, DGDO_ROLE_DRIVER, d, static_cast<uint16_t>(1 + pick(2)), 1); break;
        case 7: h.tick(0.1 * pick(30)); break;
        default: h.location(d, at(pick(8000) - 4000, pick(8000) - 4000)); break;
        }
    }
    return h.all;
}

TEST(CoreDeterminism, SameInputsThroughTwoFreshCoresGiveIdenticalOutputBytes) {
    const auto a = run_script(2024);
    const auto b = run_script(2024);
    ASSERT_EQ(a.size(), b.size());
    size_t offers = 0, updates = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i].type, b[i].type) << i;
        ASSERT_EQ(a[i].body, b[i].body) << i;
        offers += a[i].type == DGDO_OUT_NEW_ORDER;
        updates += a[i].type == DGDO_OUT_ORDER_UPDATE;
    }
    EXPECT_GT(offers, 50u);  // the script really exercises dispatch
    EXPECT_GT(updates, 100u);
}

TEST(CoreDeterminism, NoDriverEverHoldsTwoOrdersDuringARandomRun) {
    Harness h;
    std::mt19937 rng(99);
    for (int i = 0; i < 2000; ++i) {
        const std::string d = "d" + std::to_string(rng() % 10);
        switch (rng() % 6) {
        case 0: h.online(d, at(static_cast<double>(rng() % 3000))); break;
        case 1: h.ride("p" + std::to_string(rng() % 10)); break;
        case 2: h.driver_cmd(d, 1001 + rng() % 100, static_cast<uint8_t>(1 + rng() % 6)); break;
        case 3: h.tick(1); break;
        default: h.status(d, static_cast<uint8_t>(rng() % 2)); break;
        }
        std::map<std::string, int> bound;
        for (uint64_t id = 1001; id < 1101; ++id) {
            const Order* o = h.core.find_order(id);
            if (o && (o->state == OrderState::Offered || has_trip(o->state))) {
                ASSERT_EQ(++bound[o->driver], 1) << o->driver;
            }
        }
    }
}

}  // namespace
}  // namespace dgdo::test

namespace dgdo::test {
namespace {

// A journal entry: an inbound ring record (type + bytes), or a tick.
struct Journaled {
    int32_t type;  // kTickType for a tick
    std::vector<uint8_t> body;
};
constexpr int32_t kTickType = -1000;
constexpr int32_t kDetachType = -1001;  // a sidecar worker gone (the loop's event, not a ring record)

template <class T>
Journaled journal_of(int32_t type, const T& rec) {
    Journaled j{type, std::vector<uint8_t>(sizeof rec)};
    std::memcpy(j.body.data(), &rec, sizeof rec);
    return j;
}

Journaled journal_of(const InputEvent& ev) {
    return std::visit(
        [](const auto& e) -> Journaled {
            using T = std::decay_t<decltype(e)>;
            if constexpr (std::is_same_v<T, Tick>) return journal_of(kTickType, e.now_ns);
            else if constexpr (std::is_same_v<T, WorkerDetached>) return journal_of(kDetachType, e.worker);
            else if constexpr (std::is_same_v<T, SessionOpen>) return journal_of(DGDO_IN_SESSION_OPEN, e.rec);
            else if constexpr (std::is_same_v<T, SessionClose>) return journal_of(DGDO_IN_SESSION_CLOSE, e.rec);
            else if constexpr (std::is_same_v<T, dgdo_in_driver_location>) return journal_of(DGDO_IN_DRIVER_LOCATION, e);
            else if constexpr (std::is_same_v<T, dgdo_in_driver_status>) return journal_of(DGDO_IN_DRIVER_STATUS, e);
            else if constexpr (std::is_same_v<T, dgdo_in_ride_request>) return journal_of(DGDO_IN_RIDE_REQUEST, e);
            else if constexpr (std::is_same_v<T, dgdo_in_order_command>) return journal_of(DGDO_IN_ORDER_COMMAND, e);
            else if constexpr (std::is_same_v<T, dgdo_in_nearby>) return journal_of(DGDO_IN_NEARBY, e);
            else return Journaled{-1, {}};
        },
        ev);
}

std::vector<OutRecord> replay(const std::vector<Journaled>& journal, Config cfg) {
    Core core(cfg);
    std::vector<OutRecord> out;
    for (const auto& j : journal) {
        if (j.type == kTickType) {
            uint64_t now;
            std::memcpy(&now, j.body.data(), sizeof now);
            core.apply(Tick{now}, out);
            continue;
        }
        if (j.type == kDetachType) {
            uint16_t worker;
            std::memcpy(&worker, j.body.data(), sizeof worker);
            core.apply(WorkerDetached{worker}, out);
            continue;
        }
        const auto ev = decode_inbound(j.type, j.body.data(), static_cast<uint32_t>(j.body.size()));
        EXPECT_TRUE(ev.has_value());
        if (ev) core.apply(*ev, out);
    }
    return out;
}

void record_and_replay_twice(Config cfg) {
    // Record: a fixed-seed day of traffic, journaling each input as the loop would.
    std::vector<Journaled> journal;
    std::vector<OutRecord> live;
    {
        Core core(cfg);
        uint64_t now = kStartNs;
        std::mt19937 rng(4242);
        auto feed = [&](const InputEvent& ev) {
            journal.push_back(journal_of(ev));
            core.apply(ev, live);
        };
        Harness meta_source;  // only for building well-formed metas
        feed(Tick{now});
        for (int i = 0; i < 4000; ++i) {
            const std::string d = "d" + std::to_string(rng() % 40);
            const std::string p = "p" + std::to_string(rng() % 30);
            switch (rng() % 13) {
            case 0: {
                dgdo_in_driver_status e{};
                e.meta = meta_source.meta(DGDO_ROLE_DRIVER, d);
                e.status = static_cast<uint8_t>(rng() % 4 != 0);
                feed(e);
                break;
            }
            case 1: {
                dgdo_in_ride_request e{};
                e.meta = meta_source.meta(DGDO_ROLE_PASSENGER, p);
                e.pickup = at(static_cast<double>(rng() % 6000) - 3000, static_cast<double>(rng() % 6000) - 3000);
                e.dropoff = at(1000, 1000);
                e.idem_key = rng() % 3;
                feed(e);
                break;
            }
            case 2:
            case 3: {
                dgdo_in_order_command e{};
                const uint64_t order = 1001 + rng() % 300;
                const Order* o = core.find_order(order);
                const bool as_holder = o && !o->driver.empty() && rng() % 2;
                e.meta = meta_source.meta(DGDO_ROLE_DRIVER, as_holder ? o->driver : d);
                e.order_id = order;
                e.command = static_cast<uint8_t>(1 + rng() % 6);
                feed(e);
                break;
            }
            case 4: {
                dgdo_in_order_command e{};
                e.meta = meta_source.meta(DGDO_ROLE_PASSENGER, p);
                e.order_id = 1001 + rng() % 300;
                e.command = DGDO_CMD_CANCEL;
                feed(e);
                break;
            }
            case 5: now += (rng() % 30) * 100'000'000ull; feed(Tick{now}); break;
            case 9:
            case 10: {  // apps connect and drop, on one of two workers, sometimes resuming from a last_seq
                const bool driver = rng() % 2;
                dgdo_in_session e{};
                e.meta = meta_source.meta(driver ? DGDO_ROLE_DRIVER : DGDO_ROLE_PASSENGER, driver ? d : p,
                                          static_cast<uint16_t>(1 + rng() % 2), 1 + rng() % 3);
                if (rng() % 2) {
                    e.flags = DGDO_SESSION_HAS_LAST_SEQ;
                    e.last_seq = rng() % 40;
                }
                if (rng() % 2)
                    feed(SessionOpen{e});
                else
                    feed(SessionClose{e});
                break;
            }
            case 11: {
                dgdo_in_nearby e{};
                e.meta = meta_source.meta(DGDO_ROLE_PASSENGER, p);
                e.center = at(static_cast<double>(rng() % 4000) - 2000, static_cast<double>(rng() % 4000) - 2000);
                e.radius_m = static_cast<double>(rng() % 5000);
                e.subscribe = rng() % 4 != 0;
                feed(e);
                break;
            }
            case 12:
                if (rng() % 8 == 0) feed(WorkerDetached{static_cast<uint16_t>(1 + rng() % 2)});
                break;
            default: {
                dgdo_in_driver_location e{};
                e.meta = meta_source.meta(DGDO_ROLE_DRIVER, d);
                e.pos = at(static_cast<double>(rng() % 8000) - 4000, static_cast<double>(rng() % 8000) - 4000);
                feed(e);
            }
            }
        }
    }
    // Replay the journal twice through fresh cores: byte-for-byte the live outputs.
    const auto first = replay(journal, cfg);
    const auto second = replay(journal, cfg);
    ASSERT_EQ(first.size(), live.size());
    ASSERT_EQ(second.size(), live.size());
    size_t offers = 0, nearby = 0;
    for (size_t i = 0; i < live.size(); ++i) {
        ASSERT_EQ(first[i].type, live[i].type) << i;
        ASSERT_EQ(first[i].body, live[i].body) << i;
        ASSERT_EQ(second[i].body, live[i].body) << i;
        offers += live[i].type == DGDO_OUT_NEW_ORDER;
        nearby += live[i].type == DGDO_OUT_NEARBY_DRIVERS;
    }
    EXPECT_GT(offers, 50u);
    EXPECT_GT(nearby, 50u);
    std::map<int32_t, size_t> kinds;
    for (const auto& j : journal) ++kinds[j.type];
    EXPECT_GT(kinds[DGDO_IN_SESSION_OPEN], 20u);  // the journal really holds every kind of input
    EXPECT_GT(kinds[DGDO_IN_SESSION_CLOSE], 20u);
    EXPECT_GT(kinds[DGDO_IN_NEARBY], 20u);
    EXPECT_GT(kinds[kDetachType], 5u);
}

TEST(CoreDeterminism, RecordedJournalReplayedTwiceGivesTheLiveOutputsByteForByte) {
    record_and_replay_twice(Config{});
}

TEST(CoreDeterminism, BatchedModeReplaysByteForByteToo) {
    Config c;
    c.matching = Matching::Batched;
    record_and_replay_twice(c);
}

}  // namespace
}  // namespace dgdo::test
