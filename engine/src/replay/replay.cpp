#include "replay/replay.hpp"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "core/geo.hpp"
#include "loop/cli.hpp"
#include "store/recovery.hpp"

namespace dgdo {

namespace {

constexpr const char* kUsage =
    "usage: dgdo-engine replay --state-dir DIR [--order ID] [--from-s S] [--to-s S] [--json]\n"
    "                          [--config FILE] [dispatch settings as the engine takes them]\n"
    "  Replays the oldest snapshot kept plus the journal after it, offline, and prints an order's\n"
    "  timeline (--order), or every input in a window of engine time (--from-s/--to-s, seconds as\n"
    "  printed in the `t=` column). Give the dispatch settings the engine ran with: replay applies\n"
    "  the journal with them. --json prints one object per line.\n";

std::string id_of(const dgdo_id& id) { return std::string(id.chars, strnlen(id.chars, sizeof id.chars)); }

const char* role_name(uint8_t r) {
    switch (r) {
    case DGDO_ROLE_DRIVER: return "driver";
    case DGDO_ROLE_PASSENGER: return "passenger";
    case DGDO_ROLE_ADMIN: return "admin";
    default: return "?";
    }
}
const char* status_name(uint8_t s) {
    static const char* names[] = {"?", "searching", "accepted", "arriving", "arrived",
                                  "started", "completed", "canceled", "no_driver"};
    return s < 9 ? names[s] : "?";
}
const char* reason_name(uint8_t r) {
    static const char* names[] = {"",          "passenger_canceled", "driver_canceled", "offer_expired",
                                  "offer_rejected", "no_driver",     "driver_offline",  "driver_disconnected",
                                  "operator_canceled"};
    return r < std::size(names) ? names[r] : "?";
}
const char* command_name(uint8_t c) {
    static const char* names[] = {"?", "accept", "reject", "arrived", "start", "complete", "cancel"};
    return c < 7 ? names[c] : "?";
}
const char* result_name(uint8_t r) {
    static const char* names[] = {"ok", "conflict", "not_found", "forbidden", "bad_message"};
    return r < 5 ? names[r] : "?";
}

std::string json_str(const std::string& s) {
    std::string o = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') o.push_back('\\');
        if (static_cast<unsigned char>(c) < 0x20) continue;
        o.push_back(c);
    }
    return o + "\"";
}

template <class T>
T as(const OutRecord& r) {
    T v;
    std::memset(&v, 0, sizeof v);
    std::memcpy(&v, r.body.data(), std::min(sizeof v, r.body.size()));
    return v;
}

// What the core said about its decisions during one input.
struct Collector final : CoreTrace {
    struct Search {
        uint64_t order;
        std::vector<TraceCandidate> near;
        std::string picked;
        double radius_m, wide_radius_m;
    };
    std::vector<Search> searches;
    std::vector<std::pair<uint64_t, std::string>> notes;
    void search(const Order& o, const std::vector<TraceCandidate>& near, const std::string& picked, double radius_m,
                double wide_radius_m) override {
        searches.push_back({o.id, near, picked, radius_m, wide_radius_m});
    }
    void note(uint64_t order, const std::string& what) override { notes.emplace_back(order, what); }
};

// The order an output is about (0 = none).
uint64_t order_of(const OutRecord& r) {
    switch (r.type) {
    case DGDO_OUT_COMMAND_RESULT: return as<dgdo_out_command_result>(r).order_id;
    case DGDO_OUT_ORDER_UPDATE: return as<dgdo_out_order_update>(r).order_id;
    case DGDO_OUT_NEW_ORDER: return as<dgdo_out_new_order>(r).order_id;
    case DGDO_OUT_CANCEL_ORDER: return as<dgdo_out_cancel_order>(r).order_id;
    case DGDO_OUT_ESTIMATE_UPDATE: return as<dgdo_out_estimate_update>(r).order_id;
    default: return 0;
    }
}

struct Described {
    std::string text, json;
};

Described describe_input(const InputEvent& ev) {
    Described d;
    std::visit(
        [&](const auto& e) {
            using T = std::decay_t<decltype(e)>;
            auto who = [](const dgdo_in_meta& m) { return std::string(role_name(m.role)) + " " + id_of(m.actor); };
            auto jwho = [](const dgdo_in_meta& m) {
                return std::string("\"role\":\"") + role_name(m.role) + "\",\"actor\":" + json_str(id_of(m.actor)) +
                       ",\"worker\":" + std::to_string(m.worker);
            };
            if constexpr (std::is_same_v<T, Tick>) {
                d = {"tick", "{\"kind\":\"tick\"}"};
            } else if constexpr (std::is_same_v<T, WorkerDetached>) {
                d = {"worker " + std::to_string(e.worker) + " detached",
                     "{\"kind\":\"worker_detached\",\"worker\":" + std::to_string(e.worker) + "}"};
            } else if constexpr (std::is_same_v<T, Committed>) {
                d = {"committed: records up to " + std::to_string(e.upto) + " went out",
                     "{\"kind\":\"committed\",\"upto\":" + std::to_string(e.upto) + "}"};
            } else if constexpr (std::is_same_v<T, Recovered>) {
                d = {"recovered: ids and seqs jump by " + std::to_string(e.gap),
                     "{\"kind\":\"recovered\",\"gap\":" + std::to_string(e.gap) + "}"};
            } else if constexpr (std::is_same_v<T, SessionOpen> || std::is_same_v<T, SessionClose>) {
                const char* k = std::is_same_v<T, SessionOpen> ? "session_open" : "session_close";
                d = {std::string(k) + " " + who(e.rec.meta), std::string("{\"kind\":\"") + k + "\"," + jwho(e.rec.meta) + "}"};
            } else if constexpr (std::is_same_v<T, dgdo_in_driver_location>) {
                char b[96];
                std::snprintf(b, sizeof b, " at %.5f,%.5f", e.pos.lat, e.pos.lon);
                d = {"driver_location " + who(e.meta) + b, "{\"kind\":\"driver_location\"," + jwho(e.meta) + "}"};
            } else if constexpr (std::is_same_v<T, dgdo_in_driver_status>) {
                const char* s = e.status == DGDO_DRIVER_ONLINE ? "online" : "offline";
                d = {std::string("driver_status ") + s + " " + who(e.meta),
                     "{\"kind\":\"driver_status\",\"status\":\"" + std::string(s) + "\"," + jwho(e.meta) + "}"};
            } else if constexpr (std::is_same_v<T, dgdo_in_ride_request>) {
                char b[128];
                std::snprintf(b, sizeof b, " pickup %.5f,%.5f dropoff %.5f,%.5f", e.pickup.lat, e.pickup.lon,
                              e.dropoff.lat, e.dropoff.lon);
                d = {"ride_request " + who(e.meta) + b, "{\"kind\":\"ride_request\"," + jwho(e.meta) + "}"};
            } else if constexpr (std::is_same_v<T, dgdo_in_order_command>) {
                // A cancel's free text says why (an operator's especially: "driver unreachable").
                const std::string why(e.reason, strnlen(e.reason, sizeof e.reason));
                d = {std::string(command_name(e.command)) + " by " + who(e.meta) + " on order " +
                         std::to_string(e.order_id) + (why.empty() ? "" : " (\"" + why + "\")"),
                     std::string("{\"kind\":\"order_command\",\"command\":\"") + command_name(e.command) +
                         "\",\"order_id\":" + std::to_string(e.order_id) + "," + jwho(e.meta) +
                         (why.empty() ? "" : ",\"reason\":" + json_str(why)) + "}"};
            } else if constexpr (std::is_same_v<T, dgdo_in_nearby>) {
                d = {std::string(e.subscribe ? "nearby_subscribe " : "nearby_unsubscribe ") + who(e.meta),
                     "{\"kind\":\"nearby\"," + jwho(e.meta) + "}"};
            }
        },
        ev);
    return d;
}

Described describe_output(const OutRecord& r) {
    const auto meta = as<dgdo_out_meta>(r);
    const std::string to = std::string(role_name(meta.to_role)) + " " + id_of(meta.to_id);
    const std::string jto = "\"to_role\":\"" + std::string(role_name(meta.to_role)) + "\",\"to_id\":" + json_str(id_of(meta.to_id));
    char b[256];
    switch (r.type) {
    case DGDO_OUT_COMMAND_RESULT: {
        const auto c = as<dgdo_out_command_result>(r);
        return {"-> " + to + ": " + result_name(c.status),
                "{\"type\":\"command_result\"," + jto + ",\"result\":\"" + result_name(c.status) +
                    "\",\"order_id\":" + std::to_string(c.order_id) + "}"};
    }
    case DGDO_OUT_ORDER_UPDATE: {
        const auto u = as<dgdo_out_order_update>(r);
        std::string t = "-> " + to + ": order_update " + status_name(u.status);
        if (u.driver_id.chars[0]) t += " (driver " + id_of(u.driver_id) + ")";
        if (u.reason) t += " reason " + std::string(reason_name(u.reason));
        return {t, "{\"type\":\"order_update\"," + jto + ",\"order_id\":" + std::to_string(u.order_id) +
                       ",\"status\":\"" + status_name(u.status) + "\",\"driver_id\":" + json_str(id_of(u.driver_id)) +
                       ",\"reason\":\"" + reason_name(u.reason) + "\"}"};
    }
    case DGDO_OUT_NEW_ORDER: {
        const auto n = as<dgdo_out_new_order>(r);
        std::snprintf(b, sizeof b, ": new_order, pickup %.0f m away, ETA %.0f s, expires in %.1f s", n.distance_m,
                      n.eta_s, n.expires_in_s);
        std::string j = "{\"type\":\"new_order\"," + jto + ",\"order_id\":" + std::to_string(n.order_id);
        std::snprintf(b + 128, 128, ",\"distance_m\":%.17g,\"eta_s\":%.17g,\"expires_in_s\":%.17g}", n.distance_m,
                      n.eta_s, n.expires_in_s);
        return {"-> " + to + std::string(b), j + std::string(b + 128)};
    }
    case DGDO_OUT_CANCEL_ORDER: {
        const auto c = as<dgdo_out_cancel_order>(r);
        return {"-> " + to + ": cancel_order, " + reason_name(c.reason),
                "{\"type\":\"cancel_order\"," + jto + ",\"order_id\":" + std::to_string(c.order_id) + ",\"reason\":\"" +
                    reason_name(c.reason) + "\"}"};
    }
    case DGDO_OUT_ESTIMATE_UPDATE: {
        const auto e = as<dgdo_out_estimate_update>(r);
        std::snprintf(b, sizeof b, ": estimate_update ETA %.0f s, %.0f m", e.eta_s, e.distance_m);
        std::string j = "{\"type\":\"estimate_update\"," + jto + ",\"order_id\":" + std::to_string(e.order_id);
        std::snprintf(b + 128, 128, ",\"eta_s\":%.17g,\"distance_m\":%.17g}", e.eta_s, e.distance_m);
        return {"-> " + to + std::string(b), j + std::string(b + 128)};
    }
    default:
        return {"-> " + to + ": record type " + std::to_string(r.type),
                "{\"type\":" + std::to_string(r.type) + "," + jto + "}"};
    }
}

struct Args {
    std::string state_dir;
    uint64_t order = 0;
    double from_s = -1, to_s = -1;
    bool json = false;
    Options opt;
};

std::optional<Args> parse(int argc, char** argv) {
    Args a;
    auto bad = [](const std::string& m) -> std::optional<Args> {
        std::fprintf(stderr, "dgdo-engine replay: %s\n%s", m.c_str(), kUsage);
        return std::nullopt;
    };
    for (int i = 1; i < argc; ++i) {
        const std::string f = argv[i];
        if (f == "--help" || f == "-h") {
            std::fputs(kUsage, stdout);
            std::exit(0);
        }
        if (f == "--json") {
            a.json = true;
            continue;
        }
        if (i + 1 >= argc) return bad("missing value for " + f);
        const std::string v = argv[++i];
        if (f == "--state-dir") {
            a.state_dir = v;
        } else if (f == "--order") {
            a.order = std::strtoull(v.c_str(), nullptr, 10);
            if (a.order == 0) return bad("bad --order " + v);
        } else if (f == "--from-s") {
            a.from_s = std::strtod(v.c_str(), nullptr);
        } else if (f == "--to-s") {
            a.to_s = std::strtod(v.c_str(), nullptr);
        } else if (f == "--config") {
            if (auto err = load_config(a.opt, v); !err.empty()) return bad(err);
        } else if (auto err = apply_setting(a.opt, f, v); !err.empty()) {
            return bad(err);
        }
    }
    if (a.state_dir.empty()) return bad("--state-dir DIR is required");
    if (a.order == 0 && a.from_s < 0 && a.to_s < 0) return bad("give --order ID or a window (--from-s/--to-s)");
    return a;
}

}  // namespace

int replay_main(int argc, char** argv) {
    const auto args = parse(argc, argv);
    if (!args) return 2;
    const Args& a = *args;
    Collector trace;
    Core* live = nullptr;  // the core being replayed, for its clock
    uint64_t shown = 0, t0 = 0;
    const ReplayFn each = [&](uint64_t index, int32_t, const uint8_t*, uint32_t, const InputEvent& ev,
                              const std::vector<OutRecord>& out) {
        const uint64_t now = live->now_ns();
        std::vector<const OutRecord*> about;
        bool touched = false;
        if (a.order != 0) {
            if (const auto* c = std::get_if<dgdo_in_order_command>(&ev); c && c->order_id == a.order) touched = true;
            for (const auto& r : out)
                if (order_of(r) == a.order) about.push_back(&r);
            for (const auto& s : trace.searches) touched |= s.order == a.order;
            for (const auto& n : trace.notes) touched |= n.first == a.order;
            touched |= !about.empty();
        } else {
            const double t = static_cast<double>(now) / 1e9;
            touched = (a.from_s < 0 || t >= a.from_s) && (a.to_s < 0 || t <= a.to_s) &&
                      !(std::holds_alternative<Tick>(ev) && out.empty());
            for (const auto& r : out)
                if (r.type != DGDO_OUT_DRIVER_POSITION && r.type != DGDO_OUT_NEARBY_DRIVERS &&
                    r.type != DGDO_OUT_ENGINE_STATS)
                    about.push_back(&r);
        }
        if (touched) {
            if (shown++ == 0) t0 = now;
            const Described in = describe_input(ev);
            if (a.json) {
                std::string line = "{\"index\":" + std::to_string(index) + ",\"t_ns\":" + std::to_string(now) +
                                   ",\"input\":" + in.json + ",\"outputs\":[";
                for (size_t i = 0; i < about.size(); ++i) line += (i ? "," : "") + describe_output(*about[i]).json;
                line += "],\"searches\":[";
                bool first = true;
                for (const auto& s : trace.searches) {
                    if (a.order != 0 && s.order != a.order) continue;
                    line += std::string(first ? "" : ",") + "{\"order_id\":" + std::to_string(s.order) +
                            ",\"picked\":" + json_str(s.picked) + ",\"candidates\":[";
                    first = false;
                    for (size_t i = 0; i < s.near.size(); ++i) {
                        char b[160];
                        std::snprintf(b, sizeof b, "\"distance_m\":%.17g,\"eta_s\":%.17g", s.near[i].distance_m,
                                      s.near[i].eta_s);
                        line += std::string(i ? "," : "") + "{\"driver\":" + json_str(s.near[i].driver) + "," + b +
                                ",\"why_not\":" + (s.near[i].why_not ? json_str(s.near[i].why_not) : "null") + "}";
                    }
                    line += "]}";
                }
                line += "],\"notes\":[";
                first = true;
                for (const auto& n : trace.notes) {
                    if (a.order != 0 && n.first != a.order) continue;
                    line += std::string(first ? "" : ",") + json_str(n.second);
                    first = false;
                }
                std::printf("%s]}\n", line.c_str());
            } else {
                std::printf("t=%.3f s (+%.1f s) #%" PRIu64 " %s\n", static_cast<double>(now) / 1e9,
                            static_cast<double>(now - t0) / 1e9, index, in.text.c_str());
                for (const auto& s : trace.searches) {
                    if (a.order != 0 && s.order != a.order) continue;
                    std::printf("   search for order %" PRIu64 " within %.0f m (else %.0f m): %s\n", s.order, s.radius_m,
                                s.wide_radius_m,
                                s.picked.empty() ? "nobody can take it" : ("picked " + s.picked).c_str());
                    for (const auto& c : s.near) {
                        const bool wide = c.distance_m > s.radius_m;
                        std::printf("      %-20s %6.0f m  ETA %4.0f s  %s%s\n", c.driver.c_str(), c.distance_m, c.eta_s,
                                    c.why_not ? c.why_not : (c.driver == s.picked ? "<- offered" : "eligible"),
                                    wide ? " (beyond the first radius: search widened)" : "");
                    }
                    if (s.near.empty()) std::printf("      no driver with a position within %.0f m\n", s.wide_radius_m);
                }
                for (const auto& n : trace.notes)
                    if (a.order == 0 || n.first == a.order) std::printf("   note: %s\n", n.second.c_str());
                for (const OutRecord* r : about) std::printf("   %s\n", describe_output(*r).text.c_str());
            }
        }
        trace.searches.clear();
        trace.notes.clear();
    };
    // The replay callback reads the clock of the core being replayed: recover() replaces it in place.
    Core core;
    live = &core;
    RecoverOptions ro;
    ro.repair = false;  // an offline look never changes the files
    ro.oldest_snapshot = true;
    ro.each = &each;
    ro.trace = &trace;
    const Recovery r = recover(core, a.opt.core, StateDir{a.state_dir}, ro);
    if (!a.json) {
        std::printf("-- replayed %" PRIu64 " records from %s (snapshot %s); %s%s\n", r.replayed, a.state_dir.c_str(),
                    r.snapshot.empty() ? "none" : r.snapshot.c_str(),
                    r.end.damaged      ? "journal damaged, read up to: "
                    : r.end.unreadable ? "read up to: "
                    : r.end.cut        ? "journal ends in a bad tail: "
                                       : "journal ends cleanly",
                    r.end.damaged || r.end.unreadable || r.end.cut ? r.end.problem.c_str() : "");
        if (a.order != 0 && shown == 0)
            std::printf("-- order %" PRIu64 " does not appear after the snapshot (created before it, or never)\n", a.order);
        if (a.order != 0)
            if (const Order* o = core.find_order(a.order))
                std::printf("-- order %" PRIu64 " now: %s, driver %s, tried %zu driver(s)\n", a.order,
                            status_name(app_status(o->state)), o->driver.empty() ? "-" : o->driver.c_str(), o->tried.size());
    }
    if (!r.ok) {
        std::fprintf(stderr, "dgdo-engine replay: %s\n", r.end.problem.c_str());
        return 1;
    }
    return 0;
}

}  // namespace dgdo
