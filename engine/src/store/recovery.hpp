// Rebuilding a core from its state directory: the newest valid snapshot, then the
// journal after it. The one path for engine start-up, `dgdo-engine replay` and the
// tests: replay applies records exactly as the live loop did, and drops the outputs
// unless a callback asks to see them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/core.hpp"
#include "store/journal.hpp"

namespace dgdo {

struct StateDir {
    std::string root;
    std::string journal() const { return root + "/journal"; }
    std::string snapshots() const { return root + "/snapshots"; }
};

// Creates the directories. 0 or -errno.
int make_state_dir(const StateDir& dir);

struct Recovery {
    std::string snapshot;            // path loaded ("" = none: started from an empty core)
    uint64_t snapshot_index = 0;     // first journal record replayed on top of it
    std::vector<std::string> rejected;  // snapshots passed over, with why
    uint64_t replayed = 0;           // journal records applied
    uint64_t undecodable = 0;        // records with a good checksum the core cannot read (skipped)
    JournalEnd end;                  // where the journal stopped (and whether a tail was cut)
    uint64_t digest = 0;             // of the recovered state
    double ms = 0;
    bool ok = true;                  // false: a gap the journal cannot bridge, a damaged journal or a
                                     // newer engine's state (end.gap / end.damaged / end.newer;
                                     // end.problem says which)
};

// Called for every replayed record, after it was applied, with what the core emitted.
using ReplayFn = std::function<void(uint64_t index, int32_t type, const uint8_t* payload, uint32_t len,
                                    const InputEvent& ev, const std::vector<OutRecord>& out)>;

struct RecoverOptions {
    bool repair = true;          // cut a bad journal tail (the engine does; an offline replay must not)
    bool oldest_snapshot = false;  // start from the oldest valid snapshot: the longest history (replay)
    const ReplayFn* each = nullptr;
    CoreTrace* trace = nullptr;  // set on the core while the journal is replayed
};

// Replaces `core` with the recovered state (a fresh Core(cfg) when there is nothing to load).
Recovery recover(Core& core, const Config& cfg, const StateDir& dir, const RecoverOptions& opt = {});

}  // namespace dgdo
