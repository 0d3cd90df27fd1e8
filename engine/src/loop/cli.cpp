#include "loop/cli.hpp"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "dgdo/control.h"
#include "dgdo/ring.h"

namespace dgdo {

namespace {

constexpr const char* kUsage =
    "usage: dgdo-engine --control PATH [options]\n"
    "  --control PATH          UNIX seqpacket socket sidecar workers attach to (required)\n"
    "  --instance NAME         shm name prefix: /dgdo.NAME.wN.{in,out} (default \"default\")\n"
    "  --ring-capacity BYTES   data bytes per ring, a power of two (default 4194304)\n"
    "  --offer-timeout-s S     driver's time to accept (default 15)\n"
    "  --radius-m M            first search radius (default 3000)\n"
    "  --wide-radius-m M       second search radius (default 7000)\n"
    "  --speed-kmh V           average speed for ETAs (default 22)\n"
    "  --detour F              road/great-circle factor (default 1.35)\n"
    "  --pickup-overhead-s S   added to pickup ETAs (default 30)\n"
    "  --search-timeout-s S    no acceptance by then -> no_driver (default 60)\n"
    "  --grace-s S             disconnected driver keeps its offer (default 10)\n"
    "  --tick-ms MS            core tick period (default 100)\n"
    "  --spin-us US            busy-poll before parking (default 50)\n"
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
    if (s.empty() || s.size() > 24) return false;  // keeps "/dgdo.<instance>.w65535.out" under DGDO_SHM_NAME_MAX
    for (char c : s)
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    return true;
}

}  // namespace

std::optional<Options> parse_cli(int argc, char** argv, int* exit_code) {
    Options o;
    auto fail = [exit_code](const std::string& msg) -> std::optional<Options> {
        std::fprintf(stderr, "dgdo-engine: %s\n%s", msg.c_str(), kUsage);
        *exit_code = 2;
        return std::nullopt;
    };
    struct DoubleFlag {
        const char* name;
        double* dst;
        bool positive;
    };
    const DoubleFlag doubles[] = {
        {"--offer-timeout-s", &o.core.offer_timeout_s, true}, {"--radius-m", &o.core.radius_m, true},
        {"--wide-radius-m", &o.core.wide_radius_m, true},     {"--speed-kmh", &o.core.speed_kmh, true},
        {"--detour", &o.core.detour, true},                   {"--pickup-overhead-s", &o.core.pickup_overhead_s, false},
        {"--search-timeout-s", &o.core.search_timeout_s, true}, {"--grace-s", &o.core.grace_s, false},
    };
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") {
            std::fputs(kUsage, stdout);
            *exit_code = 0;
            return std::nullopt;
        }
        if (i + 1 >= argc) return fail("missing value for " + flag);
        const char* value = argv[++i];
        bool known = false;
        for (const auto& d : doubles) {
            if (flag != d.name) continue;
            known = true;
            if (!parse_double(value, d.dst) || (d.positive && *d.dst <= 0))
                return fail("bad value for " + flag + ": " + value);
        }
        if (known) continue;
        if (flag == "--control") {
            o.control = value;
        } else if (flag == "--instance") {
            o.instance = value;
            if (!valid_instance(o.instance)) return fail(std::string("bad --instance: ") + value);
        } else if (flag == "--ring-capacity") {
            if (!parse_u64(value, &o.ring_capacity) || !dgdo_ring_capacity_ok(o.ring_capacity))
                return fail(std::string("--ring-capacity must be a power of two in [256, 2^30]: ") + value);
        } else if (flag == "--tick-ms") {
            if (!parse_u64(value, &o.tick_ms) || o.tick_ms == 0 || o.tick_ms > 60000)
                return fail(std::string("bad --tick-ms: ") + value);
        } else if (flag == "--spin-us") {
            if (!parse_u64(value, &o.spin_us) || o.spin_us > 1000000) return fail(std::string("bad --spin-us: ") + value);
        } else {
            return fail("unknown flag " + flag);
        }
    }
    if (o.control.empty()) return fail("--control PATH is required");
    if (o.control.size() >= 108) return fail("--control path too long for a UNIX socket");
    if (o.core.wide_radius_m < o.core.radius_m) return fail("--wide-radius-m must be >= --radius-m");
    return o;
}

}  // namespace dgdo
