// dgdo-engine settings: flags, a `key = value` config file, flags over the file.
#undef NDEBUG
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "loop/cli.hpp"

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
               ".conf") {
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

TEST(Cli, ConfigFileIsReadAndFlagsOverrideItWhereverTheyStand) {
    const ConfigFile cfg(
        "# dispatch\n"
        "control = /tmp/from-file\n"
        "radius_m = 1500   # underscores or dashes\n"
        "wide-radius-m = 5000\n"
        "\n"
        "matching = batched\n");
    int code = -1;
    const auto o = parse({"--radius-m", "2500", "--config", cfg.path}, &code);
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->control, "/tmp/from-file");
    EXPECT_EQ(o->core.radius_m, 2500);
    EXPECT_EQ(o->core.wide_radius_m, 5000);
    EXPECT_EQ(o->core.matching, Matching::Batched);
}

TEST(Cli, BadConfigLinesAndUnknownKeysAreUsageErrors) {
    int code = -1;
    EXPECT_FALSE(parse({"--control", "/tmp/s", "--config", ConfigFile("radius_m 100\n").path}, &code));
    EXPECT_EQ(code, 2);
    code = -1;
    EXPECT_FALSE(parse({"--control", "/tmp/s", "--config", ConfigFile("colour = blue\n").path}, &code));
    EXPECT_EQ(code, 2);
    EXPECT_FALSE(parse({"--control", "/tmp/s", "--config", "/nonexistent/dgdo.conf"}, &code));
    EXPECT_FALSE(parse({"--control", "/tmp/s", "--matching", "fastest"}, &code));
    EXPECT_FALSE(parse({"--control", "/tmp/s", "--radius-m", "9000"}, &code));  // wider than the wide radius
}

}  // namespace
}  // namespace dgdo
