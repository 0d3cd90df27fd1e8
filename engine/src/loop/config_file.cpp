// The config file's [engine] table, read with toml++ (header-only: the installed engine needs no
// TOML library at run time). One file serves dgdo-engine and dgdo (docs/dgdo.toml): the engine
// reads [engine] and leaves [sidecar], [run] and [auth] to dgdo, which checks them.
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <string>

#define TOML_ENABLE_FORMATTERS 0  // only the parser: a shorter compile
#include <toml++/toml.h>

#include "loop/cli.hpp"
#include "loop/settings.hpp"

namespace dgdo {

namespace {

// The tables of the one config file; any other top-level name is a typo that would be ignored.
constexpr const char* kTables[] = {"engine", "sidecar", "run", "auth"};

const char* type_name(const toml::node& v) {
    switch (v.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    default: return "a date or time";
    }
}

std::string shortest(double v) {
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
}

// The value as text for Setting::set, or "" with *why set when its TOML type is wrong.
std::string as_text(const Setting& s, const toml::node& v, std::string* why) {
    switch (s.kind) {
    case Kind::Text:
        if (v.is_string()) return *v.value<std::string>();
        *why = "must be a string";
        break;
    case Kind::Number:
        if (v.is_integer()) return std::to_string(*v.value<int64_t>());
        if (v.is_floating_point()) return shortest(*v.value<double>());
        *why = "must be a number";
        break;
    case Kind::Integer:
        if (v.is_integer()) return std::to_string(*v.value<int64_t>());
        *why = "must be an integer";
        break;
    }
    *why += std::string(", not ") + type_name(v);
    return "";
}

// The whole file, or why not (strerror's words: a directory reads as "Is a directory").
std::string read_file(const std::string& path, std::string* out) {
    std::FILE* f = std::fopen(path.c_str(), "re");
    if (f == nullptr) return std::strerror(errno);
    char buf[8192];
    size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, n);
    const int err = std::ferror(f) ? errno : 0;
    std::fclose(f);
    return err ? std::strerror(err) : "";
}

}  // namespace

std::string load_config(Options& o, const std::string& path, std::set<std::string>* given) {
    std::string text;
    if (auto err = read_file(path, &text); !err.empty()) return "cannot read " + path + ": " + err;
    toml::table doc;
    try {
        doc = toml::parse(text, path);
    } catch (const toml::parse_error& e) {
        const auto& at = e.source().begin;
        return path + ": bad TOML: " + std::string(e.description()) + " (at line " + std::to_string(at.line) +
               ", column " + std::to_string(at.column) + ")";
    }
    for (auto&& [name, node] : doc) {
        const std::string table(name.str());
        bool known = false;
        for (const char* t : kTables) known = known || table == t;
        if (!known) return path + ": unknown table [" + table + "] (tables: engine, sidecar, run, auth)";
        if (!node.is_table()) return path + ": " + table + ": must be a table ([" + table + "])";
    }
    const toml::table* engine = doc["engine"].as_table();
    if (engine == nullptr) return "";
    for (auto&& [name, node] : *engine) {
        const std::string key(name.str());
        const Setting* s = find_setting(key);
        const std::string where = path + ": [engine] " + key + ": ";
        if (s == nullptr || file_key(*s) != key) {
            if (s != nullptr) return where + "unknown setting (did you mean " + file_key(*s) + "?)";
            return where + "unknown setting (dgdo-engine --print-config lists them)";
        }
        std::string why;
        const std::string value = as_text(*s, node, &why);
        if (!why.empty()) return where + why;
        if (auto err = s->set(o, value); !err.empty())
            return where + err + ", not " + (s->kind == Kind::Text ? "\"" + value + "\"" : value);
        if (given) given->insert(s->name);
    }
    return "";
}

}  // namespace dgdo
