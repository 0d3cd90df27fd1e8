#include <algorithm>

#include "core/driver_index.hpp"
#include "core/geo.hpp"

namespace dgdo {

void LinearIndex::upsert(const std::string& id, dgdo_point pos) { pos_[id] = pos; }

void LinearIndex::erase(const std::string& id) { pos_.erase(id); }

std::vector<Candidate> LinearIndex::nearest_k(dgdo_point at, double radius_m, std::size_t k,
                                              const Eligible& eligible) const {
    std::vector<Candidate> found;
    for (const auto& [id, pos] : pos_) {
        const double d = haversine_m(at, pos);
        if (d <= radius_m && (!eligible || eligible(id))) found.push_back(Candidate{id, pos, d});
    }
    // Map order is id order, so a stable sort by distance breaks ties by id.
    std::stable_sort(found.begin(), found.end(),
                     [](const Candidate& a, const Candidate& b) { return a.distance_m < b.distance_m; });
    if (found.size() > k) found.resize(k);
    return found;
}

}  // namespace dgdo
