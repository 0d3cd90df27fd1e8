// Core::trace_search: the candidate list a CoreTrace sees. Replay-only work (a scan of every
// driver), so it runs only when a trace is set.
#include <algorithm>

#include "core/core.hpp"
#include "core/geo.hpp"

namespace dgdo {

void Core::trace_search(const Order& o, const std::string& picked) const {
    constexpr size_t kShown = 8;
    std::vector<TraceCandidate> near;
    for (const Driver& d : drivers_) {
        if (!d.has_pos) continue;
        const double dist = haversine_m(d.pos, o.pickup);
        if (dist > std::max(cfg_.radius_m, cfg_.wide_radius_m)) continue;
        TraceCandidate c;
        c.driver = d.id;
        c.distance_m = dist;
        c.eta_s = drive_s(dist, cfg_.detour, cfg_.speed_kmh) + cfg_.pickup_overhead_s;
        if (o.tried.count(d.id))
            c.why_not = "tried before";
        else if (!d.online)
            c.why_not = "offline";
        else if (!d.connected)
            c.why_not = "disconnected";
        else if (d.trip != 0)
            c.why_not = "on a trip";
        else if (d.offer != 0 && d.id != picked)
            c.why_not = "holds another offer";
        near.push_back(std::move(c));
    }
    std::sort(near.begin(), near.end(), [](const TraceCandidate& a, const TraceCandidate& b) {
        return a.distance_m < b.distance_m || (a.distance_m == b.distance_m && a.driver < b.driver);
    });
    if (near.size() > kShown) near.resize(kShown);
    trace_->search(o, near, picked, cfg_.radius_m, cfg_.wide_radius_m);
}

}  // namespace dgdo
