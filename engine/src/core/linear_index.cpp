#include <algorithm>

#include "core/driver_index.hpp"
#include "core/geo.hpp"

namespace dgdo {

void LinearIndex::upsert(const std::string& id, dgdo_point pos) { pos_[id] = pos; }

void LinearIndex::erase(const std::string& id) { pos_.erase(id); }

std::optional<Candidate> LinearIndex::nearest(dgdo_point at, double radius_m,
                                              const std::function<bool(const std::string&)>& eligible) const {
    std::optional<Candidate> best;
    for (const auto& [id, pos] : pos_) {
        const double d = haversine_m(at, pos);
        // Strict < keeps the first (smallest) id on a tie: map order is id order.
        if (d <= radius_m && (!best || d < best->distance_m) && eligible(id)) best = Candidate{id, pos, d};
    }
    return best;
}

std::vector<Candidate> LinearIndex::within(dgdo_point at, double radius_m, std::size_t limit) const {
    std::vector<Candidate> found;
    for (const auto& [id, pos] : pos_) {
        const double d = haversine_m(at, pos);
        if (d <= radius_m) found.push_back(Candidate{id, pos, d});
    }
    std::stable_sort(found.begin(), found.end(),
                     [](const Candidate& a, const Candidate& b) { return a.distance_m < b.distance_m; });
    if (found.size() > limit) found.resize(limit);
    return found;
}

}  // namespace dgdo
