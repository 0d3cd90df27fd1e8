#include <algorithm>
#include <cmath>
#include <limits>

#include "core/driver_index.hpp"
#include "core/geo.hpp"

namespace dgdo {

namespace {

// The equirectangular ranking is within ~0.1 % of haversine at city scale;
// anything within this margin of the k-th candidate gets an exact distance.
constexpr double kRankSlack = 1.002;
constexpr double kRankSlackM = 1.0;

}  // namespace

GridIndex::GridIndex(double cell_m, double ref_lat)
    : cell_lat_deg_(cell_m / kMetresPerDegree),
      cell_lon_deg_(cell_m / (kMetresPerDegree * std::max(0.01, std::cos(ref_lat * kPi / 180.0)))) {}

// floor() without the libm call (x86-64 has no SSE4.1 round at the baseline):
// truncate, then step down for a negative non-integer. Same value as
// static_cast<int32_t>(std::floor(x)) wherever that is defined.
static inline int32_t floor_i32(double x) {
    const int32_t t = static_cast<int32_t>(x);
    return t - (static_cast<double>(t) > x);
}

int32_t GridIndex::row(double lat) const { return floor_i32(lat / cell_lat_deg_); }
int32_t GridIndex::col(double lon) const { return floor_i32(lon / cell_lon_deg_); }

uint32_t GridIndex::find(const IdKey& k, const std::string& id) const {
    return where_.find(k.hash(), [&](uint32_t v) { return drivers_[v].key == k && (k.fits() || ids_[v] == id); });
}

uint32_t GridIndex::cell_at(uint64_t cell_key) {
    const uint64_t h = IdKey::mix(cell_key);
    const uint32_t i = cell_table_.find(h, [&](uint32_t v) { return cells_[v].key == cell_key; });
    if (i != IdTable::kNone) return i;
    const uint32_t n = static_cast<uint32_t>(cells_.size());
    const auto r = static_cast<int32_t>(static_cast<uint32_t>(cell_key >> 32));
    const auto c = static_cast<int32_t>(static_cast<uint32_t>(cell_key));
    const uint32_t b = block_at(block_of(r, c));  // before the emplace: no reference into cells_ is live
    cells_.emplace_back();
    cells_.back().key = cell_key;
    cells_.back().block = b;
    cell_table_.insert(h, n);
    return n;
}

uint32_t GridIndex::block_at(uint64_t block_key) {
    const uint64_t h = IdKey::mix(block_key);
    const uint32_t i = block_table_.find(h, [&](uint32_t v) { return blocks_[v].key == block_key; });
    if (i != IdTable::kNone) return i;
    const uint32_t n = static_cast<uint32_t>(blocks_.size());
    blocks_.push_back(Block{block_key, 0});
    block_table_.insert(h, n);
    return n;
}

void GridIndex::place(uint32_t handle, uint64_t cell_key, dgdo_point pos) {
    Entry& e = drivers_[handle];
    const uint32_t ci = cell_at(cell_key);
    std::vector<Slot>& v = cells_[ci].slots;
    if (v.empty()) ++live_cells_;
    ++blocks_[cells_[ci].block].drivers;
    e.cell_key = cell_key;
    e.cell = ci;
    e.at = static_cast<uint32_t>(v.size());
    v.push_back(Slot{pos.lat, pos.lon, handle});
}

void GridIndex::remove_from_cell(Entry& e) {
    std::vector<Slot>& v = cells_[e.cell].slots;
    const uint32_t last = static_cast<uint32_t>(v.size() - 1);
    if (e.at != last) {
        v[e.at] = v[last];
        drivers_[v[e.at].driver].at = e.at;
    }
    v.pop_back();
    if (v.empty()) --live_cells_;
    --blocks_[cells_[e.cell].block].drivers;
}

void GridIndex::upsert(const std::string& id, dgdo_point pos) {
    const IdKey k = IdKey::of(id);
    const uint64_t h = k.hash();
    const uint32_t found =
        where_.find(h, [&](uint32_t v) { return drivers_[v].key == k && (k.fits() || ids_[v] == id); });
    if (found != IdTable::kNone) return move(found, pos);
    uint32_t slot;
    if (!free_.empty()) {
        slot = free_.back();
        free_.pop_back();
    } else {
        slot = static_cast<uint32_t>(drivers_.size());
        drivers_.emplace_back();
        ids_.emplace_back();
    }
    drivers_[slot].key = k;
    ids_[slot] = id;
    where_.insert(h, slot);
    place(slot, key(row(pos.lat), col(pos.lon)), pos);
}

void GridIndex::move(uint32_t handle, dgdo_point pos) {
    Entry& e = drivers_[handle];
    const uint64_t cell = key(row(pos.lat), col(pos.lon));
    if (e.cell_key == cell) {  // the common case: a few metres inside the same cell
        Slot& s = cells_[e.cell].slots[e.at];
        s.lat = pos.lat;
        s.lon = pos.lon;
        return;
    }
    remove_from_cell(e);
    place(handle, cell, pos);
}

void GridIndex::erase(const std::string& id) {
    const IdKey k = IdKey::of(id);
    const uint32_t slot = find(k, id);
    if (slot == IdTable::kNone) return;
    remove_from_cell(drivers_[slot]);
    where_.erase(k.hash(), [&](uint32_t v) { return v == slot; });
    drivers_[slot] = Entry{};
    ids_[slot].clear();
    free_.push_back(slot);
}

std::vector<Candidate> GridIndex::nearest_k(dgdo_point at, double radius_m, std::size_t k,
                                            const Eligible& eligible) const {
    std::vector<Candidate> result;
    if (k == 0 || where_.empty()) return result;

    // Local metric at the query point.
    const double m_lat = kMetresPerDegree;
    const double m_lon = kMetresPerDegree * std::cos(at.lat * kPi / 180.0);
    const double cell_h = cell_lat_deg_ * m_lat;
    const double cell_w = cell_lon_deg_ * m_lon;
    const int32_t r0 = row(at.lat), c0 = col(at.lon);
    // Where the query sits inside its own cell, in metres from each edge.
    const double off_s = (at.lat - r0 * cell_lat_deg_) * m_lat, off_n = cell_h - off_s;
    const double off_w = (at.lon - c0 * cell_lon_deg_) * m_lon, off_e = cell_w - off_w;
    const double edge = std::min(std::min(off_s, off_n), std::min(off_w, off_e));
    const double step = std::min(cell_h, cell_w);
    const int32_t max_ring = static_cast<int32_t>(std::ceil(radius_m / step)) + 1;
    const double limit = radius_m * kRankSlack + kRankSlackM;
    const double limit2 = limit * limit;

    std::vector<Ranked>& heap = heap_;  // min-heap on (d2, driver)
    std::vector<Ranked>& chosen = chosen_;
    std::vector<double>& seen = seen_;  // without a filter every driver is eligible: the k-th best
    heap.clear();                       // seen so far bounds the answer (plus slack) already
    chosen.clear();
    seen.clear();
    double cutoff2 = limit2;  // once k are chosen: the k-th rank plus slack
    bool done = false;

    // Ring edges are walked cell by cell along a row or column, so consecutive
    // cells mostly share a block: remember the last one asked about.
    uint64_t last_block = ~0ull;
    bool block_empty = false;
    auto scan = [&](int32_t r, int32_t c) {
        const uint64_t b = block_of(r, c);
        if (b != last_block) {
            last_block = b;
            block_empty = drivers_in_block(b) == 0;
        }
        if (block_empty) return;
        const Cell* cell = find_cell(key(r, c));
        if (cell == nullptr) return;
        for (const Slot& s : cell->slots) {
            const double dy = (s.lat - at.lat) * m_lat, dx = (s.lon - at.lon) * m_lon;
            const double d2 = dy * dy + dx * dx;
            if (d2 <= cutoff2) {
                heap.push_back(Ranked{d2, s.driver});
                std::push_heap(heap.begin(), heap.end(), std::greater<>{});
                if (!eligible) {
                    // Anything beyond the k-th best seen (plus slack) can never be chosen.
                    if (seen.size() < k) {
                        seen.push_back(d2);
                        std::push_heap(seen.begin(), seen.end());
                    } else if (d2 < seen.front()) {
                        std::pop_heap(seen.begin(), seen.end());
                        seen.back() = d2;
                        std::push_heap(seen.begin(), seen.end());
                    }
                    if (seen.size() == k) {
                        const double d = std::sqrt(seen.front()) * kRankSlack + kRankSlackM;
                        cutoff2 = std::min(cutoff2, d * d);
                    }
                }
            }
        }
    };

    for (int32_t ring = 0; ring <= max_ring && !done; ++ring) {
        if (ring == 0) {
            scan(r0, c0);
        } else {
            // One edge at a time (the order within a ring does not change the answer).
            for (int32_t c = c0 - ring; c <= c0 + ring; ++c) scan(r0 - ring, c);
            for (int32_t c = c0 - ring; c <= c0 + ring; ++c) scan(r0 + ring, c);
            for (int32_t r = r0 - ring + 1; r <= r0 + ring - 1; ++r) scan(r, c0 - ring);
            for (int32_t r = r0 - ring + 1; r <= r0 + ring - 1; ++r) scan(r, c0 + ring);
        }
        // Nothing outside rings 0..ring is nearer than this.
        const double bound = ring == max_ring ? std::numeric_limits<double>::infinity() : edge + ring * step;
        const double bound2 = bound * bound;
        while (!heap.empty() && heap.front().d2 <= bound2) {
            std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
            const Ranked e = heap.back();
            heap.pop_back();
            if (e.d2 > cutoff2) {
                done = true;
                break;
            }
            if (eligible && !eligible(ids_[e.driver])) continue;
            chosen.push_back(e);
            if (chosen.size() == k) {
                const double d = std::sqrt(e.d2) * kRankSlack + kRankSlackM;
                cutoff2 = std::min(cutoff2, d * d);
            }
        }
        if (bound2 > cutoff2) done = true;
    }

    result.reserve(chosen.size());
    for (const Ranked& e : chosen) {
        const Entry& d = drivers_[e.driver];
        const Slot& s = cells_[d.cell].slots[d.at];
        const dgdo_point p{s.lat, s.lon};
        const double dist = haversine_m(at, p);
        if (dist <= radius_m) result.push_back(Candidate{ids_[e.driver], p, dist});
    }
    std::sort(result.begin(), result.end(), [](const Candidate& a, const Candidate& b) {
        return a.distance_m < b.distance_m || (a.distance_m == b.distance_m && a.id < b.id);
    });
    if (result.size() > k) result.resize(k);
    return result;
}

}  // namespace dgdo
