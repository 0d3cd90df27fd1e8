// A temporary state directory and a scripted day of inputs, recorded through the real
// journal writer while a live core applies them (what the engine loop does).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "core_harness.hpp"
#include "loop/persistence.hpp"
#include "store/journal.hpp"
#include "store/recovery.hpp"
#include "store/snapshot.hpp"

namespace dgdo::test {

struct TempStateDir {
    StateDir dir;
    TempStateDir() {
        char tmpl[] = "/tmp/dgdo-journal-test-XXXXXX";
        dir.root = mkdtemp(tmpl);
        EXPECT_EQ(make_state_dir(dir), 0);
    }
    ~TempStateDir() { std::filesystem::remove_all(dir.root); }
    // Persistence over this directory, with the policy a test needs.
    PersistOptions options(FsyncPolicy fsync = FsyncPolicy::Interval) const {
        PersistOptions o;
        o.state_dir = dir.root;
        o.fsync = fsync;
        return o;
    }
};

// Builds the inputs of a random but fixed day (as the determinism test does), as InputEvents.
inline std::vector<InputEvent> scripted_inputs(uint32_t seed, int steps) {
    Harness h;  // only for its input builders; outputs ignored
    std::vector<InputEvent> in;
    std::mt19937 rng(seed);
    auto pick = [&rng](int n) { return static_cast<int>(rng() % static_cast<uint32_t>(n)); };
    auto keep = [&](InputEvent ev) { in.push_back(ev); };
    in.push_back(Tick{h.now});
    for (int i = 0; i < steps; ++i) {
        const std::string d = "d" + std::to_string(pick(30));
        const std::string p = "p" + std::to_string(pick(20));
        switch (pick(10)) {
        case 0: {
            dgdo_in_driver_status e{};
            e.meta = h.meta(DGDO_ROLE_DRIVER, d);
            e.status = static_cast<uint8_t>(pick(4) != 0);
            keep(e);
            break;
        }
        case 1: {
            dgdo_in_ride_request e{};
            e.meta = h.meta(DGDO_ROLE_PASSENGER, p);
            e.idem_key = static_cast<uint64_t>(pick(3));
            e.pickup = at(pick(4000) - 2000, pick(4000) - 2000);
            e.dropoff = at(4000, 4000);
            keep(e);
            break;
        }
        case 2:
        case 3: {
            dgdo_in_order_command e{};
            e.meta = h.meta(DGDO_ROLE_DRIVER, d);
            e.order_id = 1001 + static_cast<uint64_t>(pick(60));
            e.command = static_cast<uint8_t>(1 + pick(6));
            keep(e);
            break;
        }
        case 4: {
            dgdo_in_order_command e{};
            e.meta = h.meta(DGDO_ROLE_PASSENGER, p);
            e.order_id = 1001 + static_cast<uint64_t>(pick(60));
            e.command = DGDO_CMD_CANCEL;
            keep(e);
            break;
        }
        case 5: {
            dgdo_in_nearby e{};
            e.meta = h.meta(DGDO_ROLE_PASSENGER, p);
            e.center = at(pick(2000), pick(2000));
            e.radius_m = 1000 + pick(3000);
            e.subscribe = pick(3) != 0;
            keep(e);
            break;
        }
        case 6: {
            dgdo_in_session s{};
            s.meta = h.meta(DGDO_ROLE_DRIVER, d, static_cast<uint16_t>(1 + pick(2)), 1);
            if (pick(2)) keep(SessionOpen{s});
            else keep(SessionClose{s});
            break;
        }
        case 7:
            h.now += static_cast<uint64_t>(0.1e9 * pick(30));
            keep(Tick{h.now});
            break;
        case 8:
            if (pick(20) == 0) {
                keep(WorkerDetached{static_cast<uint16_t>(1 + pick(2))});
                break;
            }
            [[fallthrough]];
        default: {
            dgdo_in_driver_location e{};
            e.meta = h.meta(DGDO_ROLE_DRIVER, d);
            e.pos = at(pick(8000) - 4000, pick(8000) - 4000);
            keep(e);
            break;
        }
        }
    }
    return in;
}

// Journals then applies each input, in batches of 1..16 records (one commit each), like the loop.
struct Recorder {
    Core core;
    JournalWriter journal;
    std::vector<std::vector<OutRecord>> outputs;  // per input, in journal order

    explicit Recorder(const StateDir& dir, uint64_t segment_bytes = 64ull << 20)
        : journal(JournalOptions{dir.journal(), FsyncPolicy::Never, 100, segment_bytes}) {
        JournalEnd start;
        start.next_index = 1;
        EXPECT_EQ(journal.open(start), 0);
    }
    void run(const std::vector<InputEvent>& in, size_t from, size_t to, uint32_t seed = 7) {
        std::mt19937 rng(seed);
        size_t i = from;
        while (i < to) {
            const size_t n = std::min<size_t>(to - i, 1 + rng() % 16);
            for (size_t k = 0; k < n; ++k) journal.add(in[i + k]);
            ASSERT_EQ(journal.commit(), 0);
            for (size_t k = 0; k < n; ++k) {
                outputs.emplace_back();
                core.apply(in[i + k], outputs.back());
            }
            i += n;
        }
    }
    // A snapshot of the live core at the journal's current position (what Persistence does).
    void snapshot(const StateDir& dir) {
        std::string bytes;
        core.save(bytes);
        ASSERT_EQ(journal.rotate(), 0);
        ASSERT_EQ(write_snapshot(dir.snapshots(), journal.next_index(), core.digest(), bytes), 0);
    }
};

}  // namespace dgdo::test
