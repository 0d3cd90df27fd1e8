#include "loop/cli.hpp"

#include <cstdio>
#include <set>
#include <string>
#include <thread>

#include "loop/settings.hpp"

namespace dgdo {

namespace {

constexpr const char* kUsageHead =
    "usage: dgdo-engine --control PATH [options]\n"
    "       dgdo-engine --print-config [--config FILE] [options]\n"
    "  --config FILE            a TOML file; its [engine] table holds these settings, keys without\n"
    "                           the \"--\" and with '_' for '-' (radius_m = 2500.0); flags override it.\n"
    "                           The other tables ([sidecar], [run], [auth]) are dgdo's: docs/dgdo.toml\n"
    "  --print-config           print the settings in effect as the [engine] table, and exit\n";
constexpr const char* kUsageTail =
    "  --version                print the version and exit\n"
    "  --help\n";

}  // namespace

std::string apply_setting(Options& o, const std::string& raw_key, const std::string& value) {
    const std::string key = raw_key.rfind("--", 0) == 0 ? raw_key.substr(2) : raw_key;
    const Setting* s = find_setting(key);
    if (s == nullptr) return "unknown setting " + raw_key;
    if (auto err = s->set(o, value); !err.empty()) return "--" + std::string(s->name) + ": " + err + ", not " + value;
    return "";
}

std::optional<Options> parse_cli(int argc, char** argv, int* exit_code) {
    Options o;
    o.spin_us = std::thread::hardware_concurrency() > 2 ? 50 : 0;  // spin-us's machine_default
    std::set<std::string> given;  // the settings a file or a flag set
    bool print = false;
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
            std::fputs(kUsageHead, stdout);
            std::fputs(settings_usage().c_str(), stdout);
            std::fputs(kUsageTail, stdout);
            *exit_code = 0;
            return std::nullopt;
        }
        if (flag == "--print-config") print = true;
        if (flag == "--config") {
            if (i + 1 >= argc) return fail("missing value for --config");
            if (auto err = load_config(o, argv[i + 1], &given); !err.empty()) return fail(err);
        }
    }
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--print-config") continue;
        if (flag.rfind("--", 0) != 0) return fail("unexpected argument " + flag);
        if (i + 1 >= argc) return fail("missing value for " + flag);
        const std::string value = argv[++i];
        if (flag == "--config") continue;
        if (auto err = apply_setting(o, flag, value); !err.empty()) return fail(err);
        given.insert(find_setting(flag.substr(2))->name);
    }
    if (o.core.wide_radius_m < o.core.radius_m) return fail("wide-radius-m must be >= radius-m");
    if (print) {
        print_settings(o, given, stdout);
        *exit_code = 0;
        return std::nullopt;
    }
    if (o.control.empty()) return fail("--control PATH is required (or control in [engine])");
    return o;
}

}  // namespace dgdo
