// dgdo-engine settings: flags, the [engine] table of a TOML config file, flags over the file.
#undef NDEBUG
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "loop/cli.hpp"
#include "loop/settings.hpp"

namespace dgdo {
namespace {

std::optional<Options> parse(std::vector<std::string> args, int* code) {
    args.insert(args.begin(), "dgdo-engine");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    return parse_cli(static_cast<int>(argv.size()), argv.data(), code);
}

// A config file that lives as long as the object. ctest runs each test as its own process, in
// parallel: one file per test and process.
struct ConfigFile {
    const std::string path;  // const: `ConfigFile(...).path` is an xvalue and would be moved from
    explicit ConfigFile(const std::string& text)
        : path(testing::TempDir() + "dgdo-engine-test-" +
               testing::UnitTest::GetInstance()->current_test_info()->name() + "-" + std::to_string(getpid()) +
               ".toml") {
        std::ofstream(path) << text;
    }
    ~ConfigFile() { std::remove(path.c_str()); }
};

TEST(Cli, FlagsSetEveryDispatchTunable) {
    int code = -1;
    const auto o = parse({"--control", "/tmp/s", "--offer-timeout-s", "5", "--radius-m", "1000", "--wide-radius-m",
                          "4000", "--speed-kmh", "30", "--detour", "1.2", "--search-timeout-s", "20", "--matching",
                          "batched", "--batch-window-s", "1.5", "--retention-s", "60", "--batch-candidates", "4",
                          "--history-depth", "32"},
                         &code);
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->core.offer_timeout_s, 5);
    EXPECT_EQ(o->core.radius_m, 1000);
    EXPECT_EQ(o->core.wide_radius_m, 4000);
    EXPECT_EQ(o->core.speed_kmh, 30);
    EXPECT_EQ(o->core.detour, 1.2);
    EXPECT_EQ(o->core.search_timeout_s, 20);
    EXPECT_EQ(o->core.matching, Matching::Batched);
    EXPECT_EQ(o->core.batch_window_s, 1.5);
    EXPECT_EQ(o->core.retention_s, 60);
    EXPECT_EQ(o->core.batch_candidates, 4u);
    EXPECT_EQ(o->core.history_depth, 32u);
}

TEST(Cli, AbstractControlNameAndDieWithParent) {
    int code = -1;
    auto o = parse({"--control", "@dgdo-run-1", "--die-with-parent", "4242"}, &code);
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->control, "@dgdo-run-1");
    EXPECT_EQ(o->die_with_parent, 4242);
    EXPECT_EQ(parse({"--control", "@dgdo-run-1"}, &code)->die_with_parent, 0);  // off unless asked
    for (const char* bad : {"0", "-1", "x", "4294967296"}) {
        code = -1;
        EXPECT_FALSE(parse({"--control", "@c", "--die-with-parent", bad}, &code).has_value()) << bad;
        EXPECT_EQ(code, 2);
    }
    EXPECT_FALSE(parse({"--control", "@"}, &code).has_value());  // an abstract name needs a name
    EXPECT_EQ(code, 2);
}

TEST(Cli, ConfigFileIsReadAndFlagsOverrideItWhereverTheyStand) {
    const ConfigFile cfg(
        "# dispatch\n"
        "[engine]\n"
        "control = \"/tmp/from-file\"\n"
        "radius_m = 1500   # an integer where a number is expected is fine\n"
        "wide_radius_m = 5000.5\n"
        "\n"
        "matching = \"batched\"\n"
        "[sidecar]   # dgdo's: not read here\n"
        "port = 8765\n");
    int code = -1;
    const auto o = parse({"--radius-m", "2500", "--config", cfg.path}, &code);
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->control, "/tmp/from-file");
    EXPECT_EQ(o->core.radius_m, 2500);
    EXPECT_EQ(o->core.wide_radius_m, 5000.5);
    EXPECT_EQ(o->core.matching, Matching::Batched);
}

TEST(Cli, DurabilitySettingsComeFromFlagsOrTheConfigFile) {
    int code = -1;
    auto o = parse({"--control", "/tmp/s"}, &code);
    ASSERT_TRUE(o.has_value());
    EXPECT_TRUE(o->persist.state_dir.empty());  // no journal unless asked for
    EXPECT_EQ(o->persist.fsync, FsyncPolicy::Interval);
    EXPECT_EQ(o->persist.fsync_interval_ms, 100u);
    const ConfigFile cfg("[engine]\nstate_dir = \"/var/lib/dgdo\"\nfsync = \"batch\"\nsnapshot_every_s = 30\n");
    o = parse({"--config", cfg.path, "--control", "/tmp/s", "--fsync-interval-ms", "20", "--snapshot-every-records",
               "5000", "--snapshot-keep", "3", "--journal-segment-mb", "8"},
              &code);
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->persist.state_dir, "/var/lib/dgdo");
    EXPECT_EQ(o->persist.fsync, FsyncPolicy::Batch);
    EXPECT_EQ(o->persist.fsync_interval_ms, 20u);
    EXPECT_EQ(o->persist.snapshot_every_s, 30);
    EXPECT_EQ(o->persist.snapshot_every_records, 5000u);
    EXPECT_EQ(o->persist.snapshot_keep, 3u);
    EXPECT_EQ(o->persist.segment_bytes, 8ull << 20);
    EXPECT_FALSE(parse({"--control", "/tmp/s", "--fsync", "sometimes"}, &code));
    EXPECT_EQ(code, 2);
    EXPECT_FALSE(parse({"--control", "/tmp/s", "--snapshot-keep", "1"}, &code));
}

// Each error is one line naming the file and the key; load_config returns it.
std::string config_error(const std::string& text) {
    Options o;
    const ConfigFile cfg(text);
    const std::string err = load_config(o, cfg.path);
    return err.empty() ? err : err.substr(cfg.path.size());  // the part after the path
}

TEST(Cli, BadConfigFilesAreOneLineNamingTheKey) {
    EXPECT_EQ(config_error("[engine]\nradius_m = 100\n"), "");
    EXPECT_EQ(config_error("[engine]\nradius_m 100\n").rfind(": bad TOML: ", 0), 0u);
    EXPECT_NE(config_error("[engine]\nradius_m 100\n").find("(at line 2, column"), std::string::npos);
    EXPECT_EQ(config_error("[engine]\ncolour = \"blue\"\n"),
              ": [engine] colour: unknown setting (dgdo-engine --print-config lists them)");
    EXPECT_EQ(config_error("[engine]\nradius-m = 100\n"), ": [engine] radius-m: unknown setting (did you mean radius_m?)");
    EXPECT_EQ(config_error("[engine]\nradius_m = \"100\"\n"), ": [engine] radius_m: must be a number, not a string");
    EXPECT_EQ(config_error("[engine]\nradius_m = -5\n"), ": [engine] radius_m: must be a number > 0, not -5");
    EXPECT_EQ(config_error("[engine]\nradius_m = inf\n"), ": [engine] radius_m: must be a number > 0, not inf");
    EXPECT_EQ(config_error("[engine]\ntick_ms = 2.5\n"), ": [engine] tick_ms: must be an integer, not a float");
    EXPECT_EQ(config_error("[engine]\nhistory_depth = true\n"),
              ": [engine] history_depth: must be an integer, not a boolean");
    EXPECT_EQ(config_error("[engine]\nmatching = \"fastest\"\n"),
              ": [engine] matching: must be one of greedy, batched, not \"fastest\"");
    EXPECT_EQ(config_error("[engine]\nring_capacity = 1000\n"),
              ": [engine] ring_capacity: must be a power of two between 256 and 1073741824, not 1000");
    EXPECT_EQ(config_error("[enigne]\n"), ": unknown table [enigne] (tables: engine, sidecar, run, auth)");
    EXPECT_EQ(config_error("engine = 3\n"), ": engine: must be a table ([engine])");
    EXPECT_EQ(config_error("[sidecar]\nanything = 1\n"), "");  // dgdo checks its tables
    Options o;
    EXPECT_EQ(load_config(o, "/nonexistent/dgdo.toml"), "cannot read /nonexistent/dgdo.toml: No such file or directory");
}

TEST(Cli, BadConfigAndFlagsAreUsageErrors) {
    int code = -1;
    EXPECT_FALSE(parse({"--control", "/tmp/s", "--config", ConfigFile("[engine]\ncolour = \"blue\"\n").path}, &code));
    EXPECT_EQ(code, 2);
    code = -1;
    EXPECT_FALSE(parse({"--control", "/tmp/s", "--config", "/nonexistent/dgdo.toml"}, &code));
    EXPECT_EQ(code, 2);
    EXPECT_FALSE(parse({"--control", "/tmp/s", "--matching", "fastest"}, &code));
    EXPECT_FALSE(parse({"--control", "/tmp/s", "--radius-m", "9000"}, &code));  // wider than the wide radius
}

TEST(Cli, EverySettingIsAFlagAndAFileKeyWithItsDefaultShown) {
    const Options defaults;
    for (const auto& s : settings()) {
        EXPECT_EQ(find_setting(s.name), &s);
        EXPECT_EQ(find_setting(file_key(s)), &s);
        // Showing a value and setting it back is the identity (what --print-config relies on).
        const std::string shown = s.show(defaults);
        if (shown.empty() || s.kind == Kind::Text) continue;
        Options o;
        EXPECT_EQ(s.set(o, shown), "") << s.name;
        EXPECT_EQ(s.show(o), shown) << s.name;
    }
    EXPECT_NE(settings_usage().find("--radius-m M"), std::string::npos);
    EXPECT_NE(settings_usage().find("(default 3000.0)"), std::string::npos);
}

}  // namespace
}  // namespace dgdo
