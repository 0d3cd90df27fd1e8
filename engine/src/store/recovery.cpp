#include "store/recovery.hpp"

#include <sys/stat.h>

#include <algorithm>

#include <cerrno>
#include <chrono>

#include "core/state_io.hpp"
#include "store/snapshot.hpp"

namespace dgdo {

int make_state_dir(const StateDir& dir) {
    for (const std::string& d : {dir.root, dir.journal(), dir.snapshots()})
        if (mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) return -errno;
    return 0;
}

Recovery recover(Core& core, const Config& cfg, const StateDir& dir, const RecoverOptions& opt) {
    const auto t0 = std::chrono::steady_clock::now();
    Recovery r;
    core = Core(cfg);
    auto snaps = list_snapshots(dir.snapshots());
    if (opt.oldest_snapshot) std::reverse(snaps.begin(), snaps.end());
    for (const SnapshotFile& s : snaps) {
        SnapshotRead got = read_snapshot(s.path);
        if (got.problem.empty() && got.index != s.index) got.problem = "index differs from its name";
        if (got.problem.empty()) {
            Core loaded(cfg);
            if (!loaded.load(reinterpret_cast<const uint8_t*>(got.payload.data()), got.payload.size()))
                got.problem = "does not load";
            else if (loaded.digest() != got.digest)  // load(save(x)) must be x
                got.problem = "digest after load differs";
            else
                core = std::move(loaded);
        }
        if (got.newer) {  // a newer engine's state (a rollback): refuse it whole, touch nothing
            r.end.problem = s.path + ": " + got.problem;
            r.end.newer = true;
            r.ok = false;
            return r;
        }
        if (got.unreadable) {  // passed over, an older one (or none) would recover an older state
            r.end.problem = "cannot read " + s.path + ": " + got.problem;
            r.end.unreadable = true;
            r.ok = false;
            return r;
        }
        if (!got.problem.empty()) {
            r.rejected.push_back(s.path + ": " + got.problem);
            continue;
        }
        r.snapshot = s.path;
        r.snapshot_index = got.index;
        break;
    }
    const uint64_t from = r.snapshot.empty() ? 1 : r.snapshot_index;  // journal indexes start at 1
    std::vector<OutRecord> out;
    core.set_trace(opt.trace);
    r.end = read_journal(
        dir.journal(), from,
        [&](uint64_t index, int32_t type, const uint8_t* payload, uint32_t len) {
            const auto ev = decode_input(type, payload, len);
            if (!ev) {
                ++r.undecodable;
                return;
            }
            out.clear();
            core.apply(*ev, out);
            ++r.replayed;
            if (opt.each) (*opt.each)(index, type, payload, len, *ev, out);
        },
        opt.repair);
    core.set_trace(nullptr);
    r.ok = !r.end.gap && !r.end.newer && !r.end.damaged && !r.end.unreadable;
    r.digest = core.digest();
    r.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return r;
}

}  // namespace dgdo
