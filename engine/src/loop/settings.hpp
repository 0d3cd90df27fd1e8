// Every dgdo-engine setting, declared once: its name, what it takes, its help and how it is
// checked. The command line (--radius-m 2500), the config file's [engine] table
// (radius_m = 2500.0), --help and --print-config are all derived from this one table.
#pragma once

#include <cstdio>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "loop/cli.hpp"

namespace dgdo {

// What a value in the TOML file must be. The command line gives text for all three.
enum class Kind { Text, Number, Integer };

struct Setting {
    const char* name;     // the flag without "--" ("radius-m"); the file key has '_' ("radius_m")
    Kind kind;
    const char* metavar;  // for --help
    const char* help;     // --help and --print-config; '\n' continues on the next line
    // Applies a value given as text; "" on success, else why not ("must be a number > 0").
    std::function<std::string(Options&, const std::string&)> set;
    // The value as a TOML literal; "" when unset (nothing configured and no default).
    std::function<std::string(const Options&)> show;
    // The default, when no file or flag gives one, depends on the machine (--spin-us): said here.
    const char* machine_default = nullptr;
    // For a setting with no default: what --print-config shows, commented out.
    const char* example = nullptr;
};

// All of them, in --help order.
const std::vector<Setting>& settings();

// By flag name ("radius-m") or file key ("radius_m"); nullptr if there is none.
const Setting* find_setting(const std::string& name);

// The file key of a setting: the flag name with '_' for '-'.
std::string file_key(const Setting& s);

// --help's option lines, each with its default (from a default Options).
std::string settings_usage();

// The [engine] table with o's values, each under its help as comments: valid TOML that
// dgdo-engine --config reads back. A setting with no value, or left at a machine-dependent
// default (not in `given`), is a commented-out `# key = value` line.
void print_settings(const Options& o, const std::set<std::string>& given, std::FILE* out);

}  // namespace dgdo
