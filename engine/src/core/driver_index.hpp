// Where online drivers are. The core asks it two questions (nearest eligible
// drivers, everyone within a radius); GridIndex answers them in a few µs at
// 100k drivers, LinearIndex is the O(n) reference the tests compare it with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "dgdo/events.h"

namespace dgdo {

struct Candidate {
    std::string id;
    dgdo_point pos;
    double distance_m;  // haversine
};

using Eligible = std::function<bool(const std::string&)>;

class DriverIndex {
public:
    virtual ~DriverIndex() = default;
    virtual void upsert(const std::string& id, dgdo_point pos) = 0;
    virtual void erase(const std::string& id) = 0;
    // Up to `k` drivers within radius_m that `eligible` accepts (null = all),
    // nearest first by haversine; equal distances go to the smaller id.
    virtual std::vector<Candidate> nearest_k(dgdo_point at, double radius_m, std::size_t k,
                                             const Eligible& eligible) const = 0;
    virtual std::size_t size() const = 0;

    std::optional<Candidate> nearest(dgdo_point at, double radius_m, const Eligible& eligible) const {
        auto v = nearest_k(at, radius_m, 1, eligible);
        if (v.empty()) return std::nullopt;
        return std::move(v.front());
    }
    std::vector<Candidate> within(dgdo_point at, double radius_m, std::size_t limit) const {
        return nearest_k(at, radius_m, limit, nullptr);
    }
};

// O(n) scan; the reference implementation.
class LinearIndex final : public DriverIndex {
public:
    void upsert(const std::string& id, dgdo_point pos) override;
    void erase(const std::string& id) override;
    std::vector<Candidate> nearest_k(dgdo_point at, double radius_m, std::size_t k,
                                     const Eligible& eligible) const override;
    std::size_t size() const override { return pos_.size(); }

private:
    std::map<std::string, dgdo_point> pos_;
};

// Uniform grid in degrees: cells of cell_m × cell_m at ref_lat (≈ 250 m in
// Dushanbe), a hash map cell → the drivers in it (coordinates stored inline,
// so a scan touches one contiguous array per cell).
//
//   upsert: a move inside the same cell rewrites two doubles; a move across
//           cells swap-removes from the old cell's array and appends to the new.
//   nearest_k: scans square rings of cells outward from the query's cell,
//           ranks by a cheap equirectangular distance, asks `eligible` in that
//           order, stops when the next ring cannot hold anything nearer, then
//           computes haversine for the few survivors and sorts by (distance, id).
class GridIndex final : public DriverIndex {
public:
    explicit GridIndex(double cell_m = 250.0, double ref_lat = 38.56);

    void upsert(const std::string& id, dgdo_point pos) override;
    void erase(const std::string& id) override;
    std::vector<Candidate> nearest_k(dgdo_point at, double radius_m, std::size_t k,
                                     const Eligible& eligible) const override;
    std::size_t size() const override { return where_.size(); }

    std::size_t cells() const { return cells_.size(); }

    // A driver's stable handle while it stays indexed (no string hashing on the
    // hot path), or UINT32_MAX. move(handle, pos) == upsert(id, pos).
    uint32_t handle(const std::string& id) const {
        auto it = where_.find(id);
        return it == where_.end() ? UINT32_MAX : it->second;
    }
    void move(uint32_t handle, dgdo_point pos);

private:
    struct Slot {  // one driver in a cell's array
        double lat, lon;
        uint32_t driver;  // index into drivers_
    };
    struct Entry {
        std::string id;
        uint64_t cell = 0;
        std::vector<Slot>* slots = nullptr;  // &cells_[cell]: map nodes never move
        uint32_t at = 0;                     // position in *slots
        bool live = false;
    };
    struct CellHash {
        std::size_t operator()(uint64_t k) const noexcept {  // splitmix64 finaliser
            k ^= k >> 30;
            k *= 0xbf58476d1ce4e5b9ull;
            k ^= k >> 27;
            k *= 0x94d049bb133111ebull;
            return static_cast<std::size_t>(k ^ (k >> 31));
        }
    };

    int32_t row(double lat) const;
    int32_t col(double lon) const;
    static uint64_t key(int32_t r, int32_t c) {
        return (static_cast<uint64_t>(static_cast<uint32_t>(r)) << 32) | static_cast<uint32_t>(c);
    }
    void remove_from_cell(Entry& e);

    double cell_lat_deg_;
    double cell_lon_deg_;
    std::unordered_map<uint64_t, std::vector<Slot>, CellHash> cells_;
    std::unordered_map<std::string, uint32_t> where_;
    std::vector<Entry> drivers_;
    std::vector<uint32_t> free_;
};

}  // namespace dgdo
