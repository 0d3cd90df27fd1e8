#include "loop/cli.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "dgdo/control.h"
#include "dgdo/ring.h"

namespace dgdo {

namespace {

constexpr const char* kUsage =
    "usage: dgdo-engine --control PATH [options]\n"
    "  --config FILE           settings as `key = value` lines (key = flag without --; # comments);\n"
    "                          flags on the command line override the file\n"
    "  --control PATH|@NAME    UNIX seqpacket socket sidecar workers attach to (required); @NAME is a\n"
    "                          Linux abstract name: no file, gone with the engine, even after kill -9\n"
    "  --instance NAME         label of the ring memfds, dgdo.NAME.wN.{in,out} in /proc/PID/fd\n"
    "                          (default \"default\")\n"
    "  --die-with-parent PID   exit (as on SIGTERM) when process PID, our parent, dies; refuse to\n"
    "                          start when it is already gone (a supervisor like `dgdo run` sets it)\n"
    "  --ring-capacity BYTES   data bytes per ring, a power of two (default 4194304)\n"
    "  --offer-timeout-s S     driver's time to accept (default 15)\n"
    "  --radius-m M            first search radius (default 3000)\n"
    "  --wide-radius-m M       second search radius (default 7000)\n"
    "  --speed-kmh V           average speed for ETAs (default 22)\n"
    "  --detour F              road/great-circle factor (default 1.35)\n"
    "  --pickup-overhead-s S   added to pickup ETAs (default 30)\n"
    "  --search-timeout-s S    no acceptance by then -> no_driver (default 60)\n"
    "  --exhausted-wait-s S    nobody left to offer to: wait this long for a new driver, then\n"
    "                          no_driver (default 10; 0 = at once)\n"
    "  --grace-s S             disconnected driver keeps its offer (default 10)\n"
    "  --matching MODE         greedy (default) | batched\n"
    "  --batch-window-s S      batched mode: requests collect this long (default 2)\n"
    "  --batch-candidates N    batched mode: nearest drivers considered per order (default 8)\n"
    "  --batch-max-orders N    batched mode: orders per min-cost solve; more are split (default 128)\n"
    "  --retry-interval-s S    how often a waiting order looks again for drivers (default 1)\n"
    "  --retention-s S         finished orders kept this long (default 3600)\n"
    "  --history-depth N       reliable messages kept per recipient for resume (default 256)\n"
    "  --cell-m M              spatial grid cell edge (default 250)\n"
    "  --state-dir DIR         journal and snapshots live here; recovered at start (default: none,\n"
    "                          which runs without a journal: a restart loses every order)\n"
    "  --fsync POLICY          never | interval (default) | batch: when the journal reaches the disk\n"
    "                          (never: page cache, survives a process crash but not a power loss;\n"
    "                          interval: synced every --fsync-interval-ms off the hot path;\n"
    "                          batch: synced before each batch's outputs are published)\n"
    "  --fsync-interval-ms MS  interval policy period (default 100)\n"
    "  --snapshot-every-s S    snapshot after this long with new records (default 60)\n"
    "  --snapshot-every-records N  or after this many records (default 1000000)\n"
    "  --snapshot-keep N       snapshots kept (>= 2), with the journal since the oldest: the history\n"
    "                          `dgdo replay` can explain (default 10)\n"
    "  --journal-segment-mb MB journal segment size before rotation (default 64)\n"
    "  --tick-ms MS            core tick period (default 100)\n"
    "  --spin-us US            busy-poll before parking (default 50; 0 with 2 CPUs or fewer)\n"
    "  --version               print the version and exit\n"
    "  --help\n";

bool parse_double(const char* s, double* out) {
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(s, &end);
    if (errno || end == s || *end || !std::isfinite(v) || v < 0) return false;
    *out = v;
    return true;
}

bool parse_u64(const char* s, uint64_t* out) {
    char* end = nullptr;
    errno = 0;
    if (*s == '-') return false;
    const unsigned long long v = std::strtoull(s, &end, 10);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

bool valid_instance(const std::string& s) {
    if (s.empty() || s.size() > 24) return false;  // a short label: "dgdo.<instance>.w65535.out" in /proc
    for (char c : s)
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    return true;
}

}  // namespace

// Applies one setting; "" on success, else the error message.
std::string apply_setting(Options& o, const std::string& raw_key, const std::string& value) {
    std::string key = raw_key.rfind("--", 0) == 0 ? raw_key.substr(2) : raw_key;
    std::replace(key.begin(), key.end(), '_', '-');
    struct DoubleKey {
        const char* name;
        double* dst;
        bool positive;
    };
    const DoubleKey doubles[] = {
        {"offer-timeout-s", &o.core.offer_timeout_s, true}, {"radius-m", &o.core.radius_m, true},
        {"wide-radius-m", &o.core.wide_radius_m, true},     {"speed-kmh", &o.core.speed_kmh, true},
        {"detour", &o.core.detour, true},                   {"pickup-overhead-s", &o.core.pickup_overhead_s, false},
        {"search-timeout-s", &o.core.search_timeout_s, true}, {"grace-s", &o.core.grace_s, false},
        {"batch-window-s", &o.core.batch_window_s, true},   {"retention-s", &o.core.retention_s, true},
        {"cell-m", &o.core.cell_m, true},   {"exhausted-wait-s", &o.core.exhausted_wait_s, false},
        {"retry-interval-s", &o.core.retry_interval_s, true},
    };
    const char* v = value.c_str();
    for (const auto& d : doubles) {
        if (key != d.name) continue;
        if (!parse_double(v, d.dst) || (d.positive && *d.dst <= 0)) return "bad value for --" + key + ": " + value;
        return "";
    }
    if (key == "control") {
        o.control = value;
    } else if (key == "instance") {
        o.instance = value;
        if (!valid_instance(o.instance)) return "bad --instance: " + value;
    } else if (key == "ring-capacity") {
        if (!parse_u64(v, &o.ring_capacity) || !dgdo_ring_capacity_ok(o.ring_capacity))
            return "--ring-capacity must be a power of two in [256, 2^30]: " + value;
    } else if (key == "state-dir") {
        if (value.empty()) return "bad --state-dir: empty";
        o.persist.state_dir = value;
    } else if (key == "fsync") {
        const auto p = parse_fsync(value);
        if (!p) return "--fsync must be never, interval or batch: " + value;
        o.persist.fsync = *p;
    } else if (key == "fsync-interval-ms") {
        if (!parse_u64(v, &o.persist.fsync_interval_ms) || o.persist.fsync_interval_ms == 0 ||
            o.persist.fsync_interval_ms > 60000)
            return "bad --fsync-interval-ms (1..60000): " + value;
    } else if (key == "snapshot-every-s") {
        if (!parse_double(v, &o.persist.snapshot_every_s) || o.persist.snapshot_every_s <= 0)
            return "bad --snapshot-every-s: " + value;
    } else if (key == "snapshot-every-records") {
        if (!parse_u64(v, &o.persist.snapshot_every_records) || o.persist.snapshot_every_records == 0)
            return "bad --snapshot-every-records: " + value;
    } else if (key == "snapshot-keep") {
        if (!parse_u64(v, &o.persist.snapshot_keep) || o.persist.snapshot_keep < 2 || o.persist.snapshot_keep > 1000)
            return "bad --snapshot-keep (2..1000): " + value;
    } else if (key == "journal-segment-mb") {
        uint64_t mb = 0;
        if (!parse_u64(v, &mb) || mb == 0 || mb > 4096) return "bad --journal-segment-mb (1..4096): " + value;
        o.persist.segment_bytes = mb << 20;
    } else if (key == "tick-ms") {
        if (!parse_u64(v, &o.tick_ms) || o.tick_ms == 0 || o.tick_ms > 60000) return "bad --tick-ms: " + value;
    } else if (key == "die-with-parent") {
        uint64_t pid = 0;
        if (!parse_u64(v, &pid) || pid < 1 || pid > INT32_MAX) return "bad --die-with-parent pid: " + value;
        o.die_with_parent = static_cast<int32_t>(pid);
    } else if (key == "spin-us") {
        if (!parse_u64(v, &o.spin_us) || o.spin_us > 1000000) return "bad --spin-us: " + value;
    } else if (key == "matching") {
        if (value == "greedy")
            o.core.matching = Matching::Greedy;
        else if (value == "batched")
            o.core.matching = Matching::Batched;
        else
            return "--matching must be greedy or batched: " + value;
    } else if (key == "batch-candidates") {
        uint64_t n = 0;
        if (!parse_u64(v, &n) || n == 0 || n > 64) return "--batch-candidates must be 1..64: " + value;
        o.core.batch_candidates = static_cast<uint32_t>(n);
    } else if (key == "history-depth") {
        uint64_t n = 0;
        if (!parse_u64(v, &n) || n > 65536) return "--history-depth must be 0..65536: " + value;
        o.core.history_depth = static_cast<uint32_t>(n);
    } else if (key == "batch-max-orders") {
        uint64_t n = 0;
        if (!parse_u64(v, &n) || n == 0 || n > 4096) return "--batch-max-orders must be 1..4096: " + value;
        o.core.batch_max_orders = static_cast<uint32_t>(n);
    } else {
        return "unknown setting " + raw_key;
    }
    return "";
}

std::string trim(const std::string& s) {
    const auto b = s.find_first_not_of(" \t\r");
    if (b == std::string::npos) return "";
    const auto e = s.find_last_not_of(" \t\r");
    return s.substr(b, e - b + 1);
}

std::string load_config(Options& o, const std::string& path) {
    std::ifstream in(path);
    if (!in) return "cannot read --config " + path;
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
        if (const auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
        line = trim(line);
        if (line.empty()) continue;
        const auto eq = line.find('=');
        if (eq == std::string::npos) return path + ":" + std::to_string(n) + ": expected `key = value`";
        const std::string key = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
        if (key == "config") return path + ":" + std::to_string(n) + ": config cannot include another file";
        if (auto err = apply_setting(o, key, value); !err.empty()) return path + ":" + std::to_string(n) + ": " + err;
    }
    return "";
}

std::optional<Options> parse_cli(int argc, char** argv, int* exit_code) {
    Options o;
    // On 2 vCPUs a spinning engine takes the core the sidecar needs to wake on: measured
    // with the demo, push p50 went from ~220 µs (spin 50) to ~110 µs (spin 0).
    o.spin_us = std::thread::hardware_concurrency() > 2 ? 50 : 0;
    auto fail = [exit_code](const std::string& msg) -> std::optional<Options> {
        // One line an operator can read in a journal; the full usage is one --help away.
        std::fprintf(stderr, "dgdo-engine: %s (see dgdo-engine --help)\n", msg.c_str());
        *exit_code = 2;
        return std::nullopt;
    };
    // The file first, wherever --config sits, so flags always override it.
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") {
            std::fputs(kUsage, stdout);
            *exit_code = 0;
            return std::nullopt;
        }
        if (flag == "--config") {
            if (i + 1 >= argc) return fail("missing value for --config");
            if (auto err = load_config(o, argv[i + 1]); !err.empty()) return fail(err);
        }
    }
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag.rfind("--", 0) != 0) return fail("unexpected argument " + flag);
        if (i + 1 >= argc) return fail("missing value for " + flag);
        const std::string value = argv[++i];
        if (flag == "--config") continue;
        if (auto err = apply_setting(o, flag, value); !err.empty()) return fail(err);
    }
    if (o.control.empty()) return fail("--control PATH is required");
    if (o.control.size() >= 108) return fail("--control path too long for a UNIX socket");
    if (o.control == "@") return fail("--control @NAME needs a name after the @");
    if (o.core.wide_radius_m < o.core.radius_m) return fail("--wide-radius-m must be >= --radius-m");
    return o;
}

}  // namespace dgdo
