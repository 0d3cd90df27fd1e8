// Command line of dgdo-engine.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include "core/config.hpp"
#include "loop/persistence.hpp"

namespace dgdo {

struct Options {
    std::string control;
    std::string instance = "default";
    uint64_t ring_capacity = 4194304;
    uint64_t tick_ms = 100;
    uint64_t spin_us = 50;
    int32_t die_with_parent = 0;  // 0: live on when the parent dies
    Config core;
    PersistOptions persist;
};

// nullopt with *exit_code set: --help or --print-config (0), or a usage error (2, one line on
// stderr). Flags override the --config file's [engine] table (loop/settings.hpp lists them all).
std::optional<Options> parse_cli(int argc, char** argv, int* exit_code);

// Reads the [engine] table of a TOML config file into o (the other tables are dgdo's); "" or the
// error, naming the file and the key. The names of the settings it set go into *given.
std::string load_config(Options& o, const std::string& path, std::set<std::string>* given = nullptr);

// One setting by name ("radius-m", "radius_m" or "--radius-m"); "" or the error.
std::string apply_setting(Options& o, const std::string& key, const std::string& value);

}  // namespace dgdo
