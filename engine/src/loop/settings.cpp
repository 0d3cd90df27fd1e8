#include "loop/settings.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <type_traits>
#include <utility>

#include "dgdo/ring.h"

namespace dgdo {

namespace {

bool parse_double(const std::string& s, double* out) {
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(s.c_str(), &end);
    if (errno || end == s.c_str() || *end || !std::isfinite(v)) return false;
    *out = v;
    return true;
}

bool parse_u64(const std::string& s, uint64_t* out) {
    char* end = nullptr;
    errno = 0;
    if (s.empty() || s[0] == '-' || s[0] == '+' || s[0] == ' ') return false;
    const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
    if (errno || *end) return false;
    *out = v;
    return true;
}

// TOML literals for --print-config: a float always with a '.', so it reads back as one.
std::string toml_number(double v) {
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    std::string s(buf, r.ptr);
    if (s.find_first_of(".e") == std::string::npos) s += ".0";
    return s;
}

std::string toml_string(const std::string& v) {
    std::string s = "\"";
    for (char c : v) {
        if (c == '"' || c == '\\') s += '\\';
        s += c;
    }
    return s + "\"";
}

// Builders for the common shapes. `field` names where the value lives: a generic lambda, so one
// accessor serves both set (Options&) and show (const Options&).
#define FIELD(member) [](auto& o) -> auto& { return o.member; }

// A number of seconds, metres, ...: > 0, or >= 0 when zero means something ("0 = at once").
template <class F>
Setting number(const char* name, const char* metavar, const char* help, F field, bool zero_ok = false) {
    return {name, Kind::Number, metavar, help,
            [=](Options& o, const std::string& v) -> std::string {
                double d = 0;
                if (!parse_double(v, &d) || d < 0 || (d == 0 && !zero_ok))
                    return zero_ok ? "must be a number >= 0" : "must be a number > 0";
                field(o) = d;
                return "";
            },
            [=](const Options& o) { return toml_number(field(o)); }};
}

// An integer in [lo, hi].
template <class F>
Setting integer(const char* name, const char* metavar, const char* help, F field, uint64_t lo, uint64_t hi) {
    return {name, Kind::Integer, metavar, help,
            [=](Options& o, const std::string& v) -> std::string {
                uint64_t n = 0;
                if (!parse_u64(v, &n) || n < lo || n > hi)
                    return hi == std::numeric_limits<uint64_t>::max()
                               ? "must be an integer >= " + std::to_string(lo)
                               : "must be an integer between " + std::to_string(lo) + " and " + std::to_string(hi);
                field(o) = static_cast<std::remove_reference_t<decltype(field(o))>>(n);
                return "";
            },
            [=](const Options& o) { return std::to_string(field(o)); }};
}

// One of a few words.
template <class T, size_t N, class F>
Setting choice(const char* name, const char* metavar, const char* help, F field,
               const std::pair<const char*, T> (&names)[N]) {
    std::vector<std::pair<std::string, T>> words(std::begin(names), std::end(names));
    std::string all;
    for (const auto& [w, _] : words) all += (all.empty() ? "" : ", ") + w;
    return {name, Kind::Text, metavar, help,
            [=](Options& o, const std::string& v) -> std::string {
                for (const auto& [w, value] : words)
                    if (v == w) {
                        field(o) = value;
                        return "";
                    }
                return "must be one of " + all;
            },
            [=](const Options& o) -> std::string {
                for (const auto& [w, value] : words)
                    if (field(o) == value) return toml_string(w);
                return "";
            }};
}

bool valid_instance(const std::string& s) {
    if (s.empty() || s.size() > 24) return false;  // a short label: "dgdo.<instance>.w65535.out" in /proc
    return std::all_of(s.begin(), s.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    });
}

const std::pair<const char*, Matching> kMatching[] = {{"greedy", Matching::Greedy}, {"batched", Matching::Batched}};
const std::pair<const char*, FsyncPolicy> kFsync[] = {
    {"never", FsyncPolicy::Never}, {"interval", FsyncPolicy::Interval}, {"batch", FsyncPolicy::Batch}};

std::vector<Setting> make_settings() {
    std::vector<Setting> s;
    s.push_back({"control", Kind::Text, "PATH|@NAME",
                 "UNIX seqpacket socket sidecar workers attach to (required); @NAME is a Linux\n"
                 "abstract name: no file, gone with the engine, even after kill -9",
                 [](Options& o, const std::string& v) -> std::string {
                     if (v.empty() || v == "@") return "must be a path or @NAME";
                     if (v.size() >= 108) return "must be shorter than 108 bytes (a UNIX socket address)";
                     o.control = v;
                     return "";
                 },
                 [](const Options& o) { return o.control.empty() ? "" : toml_string(o.control); },
                 nullptr, "\"/run/dgdo/engine.sock\""});
    s.push_back({"instance", Kind::Text, "NAME", "label of the ring memfds, dgdo.NAME.wN.{in,out} in /proc/PID/fd",
                 [](Options& o, const std::string& v) -> std::string {
                     if (!valid_instance(v)) return "must be 1-24 characters of [A-Za-z0-9_-]";
                     o.instance = v;
                     return "";
                 },
                 [](const Options& o) { return toml_string(o.instance); }});
    {
        Setting d = integer("die-with-parent", "PID",
                            "exit (as on SIGTERM) when process PID, our parent, dies; refuse to start when it\n"
                            "is already gone (a supervisor like `dgdo run` sets it; unset: live on)",
                            FIELD(die_with_parent), 1, INT32_MAX);
        d.show = [](const Options& o) { return o.die_with_parent ? std::to_string(o.die_with_parent) : ""; };
        d.example = "1";
        s.push_back(std::move(d));
    }
    s.push_back({"ring-capacity", Kind::Integer, "BYTES", "data bytes per ring, a power of two",
                 [](Options& o, const std::string& v) -> std::string {
                     uint64_t n = 0;
                     if (!parse_u64(v, &n) || !dgdo_ring_capacity_ok(n))
                         return "must be a power of two between 256 and 1073741824";
                     o.ring_capacity = n;
                     return "";
                 },
                 [](const Options& o) { return std::to_string(o.ring_capacity); }});
    s.push_back(number("offer-timeout-s", "S", "a driver's time to accept an offer", FIELD(core.offer_timeout_s)));
    s.push_back(number("radius-m", "M", "first search radius", FIELD(core.radius_m)));
    s.push_back(number("wide-radius-m", "M", "second search radius (>= radius-m)", FIELD(core.wide_radius_m)));
    s.push_back(number("speed-kmh", "V", "average speed for ETAs", FIELD(core.speed_kmh)));
    s.push_back(number("detour", "F", "road distance / great-circle distance", FIELD(core.detour)));
    s.push_back(number("pickup-overhead-s", "S", "added to every pickup ETA", FIELD(core.pickup_overhead_s), true));
    s.push_back(number("search-timeout-s", "S", "no acceptance by then -> no_driver", FIELD(core.search_timeout_s)));
    s.push_back(number("exhausted-wait-s", "S",
                       "nobody left to offer to: wait this long for a new driver, then no_driver\n(0 = at once)",
                       FIELD(core.exhausted_wait_s), true));
    s.push_back(number("grace-s", "S", "a disconnected driver keeps its offer this long", FIELD(core.grace_s), true));
    s.push_back(choice("matching", "MODE",
                                 "greedy: each order to its nearest driver at once; batched: one min-cost\n"
                                 "assignment per window",
                                 FIELD(core.matching), kMatching));
    s.push_back(number("batch-window-s", "S", "batched mode: requests collect this long", FIELD(core.batch_window_s)));
    s.push_back(integer("batch-candidates", "N", "batched mode: nearest drivers considered per order",
                        FIELD(core.batch_candidates), 1, 64));
    s.push_back(integer("batch-max-orders", "N", "batched mode: orders per min-cost solve; more are split",
                        FIELD(core.batch_max_orders), 1, 4096));
    s.push_back(number("retry-interval-s", "S", "how often a waiting order looks again for drivers",
                       FIELD(core.retry_interval_s)));
    s.push_back(number("retention-s", "S", "finished orders are kept (queryable) this long", FIELD(core.retention_s)));
    s.push_back(integer("history-depth", "N", "reliable messages kept per recipient for resume",
                        FIELD(core.history_depth), 0, 65536));
    s.push_back(number("cell-m", "M", "spatial grid cell edge", FIELD(core.cell_m)));
    s.push_back({"state-dir", Kind::Text, "DIR",
                 "journal and snapshots live here; recovered at start (unset: no journal, and a\n"
                 "restart loses every order)",
                 [](Options& o, const std::string& v) -> std::string {
                     if (v.empty()) return "must not be empty";
                     o.persist.state_dir = v;
                     return "";
                 },
                 [](const Options& o) { return o.persist.state_dir.empty() ? "" : toml_string(o.persist.state_dir); },
                 nullptr, "\"/var/lib/dgdo\""});
    s.push_back(choice("fsync", "POLICY",
                                    "when the journal reaches the disk. never: page cache, survives a process\n"
                                    "crash but not a power loss; interval: synced every fsync-interval-ms off the\n"
                                    "hot path; batch: synced before each batch's outputs are published",
                                    FIELD(persist.fsync), kFsync));
    s.push_back(integer("fsync-interval-ms", "MS", "interval policy: ms between journal syncs",
                        FIELD(persist.fsync_interval_ms), 1, 60000));
    s.push_back(number("snapshot-every-s", "S", "snapshot after this long with new records",
                       FIELD(persist.snapshot_every_s)));
    s.push_back(integer("snapshot-every-records", "N", "... or after this many records",
                        FIELD(persist.snapshot_every_records), 1, std::numeric_limits<uint64_t>::max()));
    s.push_back(integer("snapshot-keep", "N",
                        "snapshots kept, with the journal since the oldest: the history `dgdo replay`\ncan explain",
                        FIELD(persist.snapshot_keep), 2, 1000));
    s.push_back({"journal-segment-mb", Kind::Integer, "MB", "journal segment size before rotation",
                 [](Options& o, const std::string& v) -> std::string {
                     uint64_t mb = 0;
                     if (!parse_u64(v, &mb) || mb == 0 || mb > 4096) return "must be an integer between 1 and 4096";
                     o.persist.segment_bytes = mb << 20;
                     return "";
                 },
                 [](const Options& o) { return std::to_string(o.persist.segment_bytes >> 20); }});
    s.push_back(integer("tick-ms", "MS", "core tick period", FIELD(tick_ms), 1, 60000));
    {
        Setting spin = integer("spin-us", "US", "µs to busy-poll the rings before parking", FIELD(spin_us), 0, 1000000);
        // On 2 vCPUs a spinning engine takes the core the sidecar needs to wake on: measured
        // with the demo, push p50 went from ~220 µs (spin 50) to ~110 µs (spin 0).
        spin.machine_default = "50 with more than 2 CPUs, else 0";
        s.push_back(std::move(spin));
    }
    return s;
}

// The help text's lines, the last one with the default appended.
std::vector<std::string> help_lines(const Setting& s, const Options& defaults) {
    std::vector<std::string> lines;
    std::string help = s.help;
    for (size_t at = 0;;) {
        const size_t nl = help.find('\n', at);
        lines.push_back(help.substr(at, nl == std::string::npos ? std::string::npos : nl - at));
        if (nl == std::string::npos) break;
        at = nl + 1;
    }
    const std::string value = s.show(defaults);
    if (s.machine_default)
        lines.back() += std::string(" (default: ") + s.machine_default + ")";
    else if (!value.empty())
        lines.back() += " (default " + value + ")";
    return lines;
}

}  // namespace

const std::vector<Setting>& settings() {
    static const std::vector<Setting> all = make_settings();
    return all;
}

std::string file_key(const Setting& s) {
    std::string k = s.name;
    std::replace(k.begin(), k.end(), '-', '_');
    return k;
}

const Setting* find_setting(const std::string& name) {
    std::string k = name;
    std::replace(k.begin(), k.end(), '_', '-');
    for (const auto& s : settings())
        if (k == s.name) return &s;
    return nullptr;
}

std::string settings_usage() {
    const Options defaults;
    std::string out;
    for (const auto& s : settings()) {
        std::string head = std::string("  --") + s.name + " " + s.metavar;
        head.resize(std::max<size_t>(head.size() + 1, 27), ' ');
        bool first = true;
        for (const auto& line : help_lines(s, defaults)) {
            out += (first ? head : std::string(27, ' ')) + line + "\n";
            first = false;
        }
    }
    return out;
}

void print_settings(const Options& o, const std::set<std::string>& given, std::FILE* out) {
    const Options defaults;
    std::fputs("[engine]\n", out);
    for (const auto& s : settings()) {
        std::fputs("\n", out);
        for (const auto& line : help_lines(s, defaults)) std::fprintf(out, "# %s\n", line.c_str());
        const std::string value = s.show(o);
        const std::string key = file_key(s);
        if (value.empty())
            std::fprintf(out, "# %s = %s\n", key.c_str(), s.example ? s.example : "\"\"");
        else if (s.machine_default && !given.count(s.name))
            std::fprintf(out, "# %s = %s\n", key.c_str(), value.c_str());
        else
            std::fprintf(out, "%s = %s\n", key.c_str(), value.c_str());
    }
}

}  // namespace dgdo
