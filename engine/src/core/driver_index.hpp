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

#include "core/id_table.hpp"
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

    // Optional fast path: a stable handle for an indexed id (UINT32_MAX when the
    // index has none), valid until erase(id); move(handle, pos) == upsert(id, pos).
    virtual uint32_t handle(const std::string&) const { return UINT32_MAX; }
    virtual void move(uint32_t, dgdo_point) {}

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
// Dushanbe), cell → the drivers in it (coordinates stored inline, so a scan
// touches one contiguous array per cell).
//
//   ids:   an open-addressing table (IdTable) over a dense array of 64-byte
//          entries that hold the id bytes inline (IdKey): a lookup by id is a
//          hash of five words, one probe and one entry, no allocation.
//   cells: another IdTable from the cell key to a dense array of cells; a cell
//          emptied by moves keeps its index (and its array's capacity), so an
//          entry names its cell by index and a move never rehashes.
//   upsert: a move inside the same cell rewrites two doubles; a move across
//           cells swap-removes from the old cell's array and appends to the new.
//   blocks: 8 × 8 cells (≈ 2 km) each count the drivers in them, so a search
//           through an empty district (an order nobody is free near, retried
//           every second) skips a block with one probe, not 64 cell probes.
//   nearest_k: scans square rings of cells outward from the query's cell,
//           ranks by a cheap equirectangular distance, asks `eligible` in that
//           order, stops when the next ring cannot hold anything nearer, then
//           computes haversine for the few survivors and sorts by (distance, id).
//           Its working buffers are reused between queries (the index is
//           single-threaded, like the core).
class GridIndex final : public DriverIndex {
public:
    explicit GridIndex(double cell_m = 250.0, double ref_lat = 38.56);

    void upsert(const std::string& id, dgdo_point pos) override;
    void erase(const std::string& id) override;
    std::vector<Candidate> nearest_k(dgdo_point at, double radius_m, std::size_t k,
                                     const Eligible& eligible) const override;
    std::size_t size() const override { return where_.size(); }

    std::size_t cells() const { return live_cells_; }  // cells holding at least one driver

    // A driver's stable handle while it stays indexed (no string hashing on the
    // hot path), or UINT32_MAX. move(handle, pos) == upsert(id, pos).
    uint32_t handle(const std::string& id) const override { return find(IdKey::of(id), id); }
    void move(uint32_t handle, dgdo_point pos) override;

    // Where a handle's coordinates live: its cell and its place in that cell's array
    // (tests check that a move inside a cell rewrites them in place).
    struct Place {
        uint32_t cell, at;
        bool operator==(const Place&) const = default;
    };
    Place place_of(uint32_t handle) const { return Place{drivers_[handle].cell, drivers_[handle].at}; }

private:
    struct Slot {  // one driver in a cell's array
        double lat, lon;
        uint32_t driver;  // index into drivers_
    };
    struct alignas(64) Entry {  // one cache line: everything a move touches
        IdKey key;              // the id's bytes (all of it when key.fits())
        uint64_t cell_key = 0;  // grid coordinates of its cell
        uint32_t cell = 0;      // index into cells_
        uint32_t at = 0;        // position in cells_[cell].slots
    };
    struct Cell {
        std::vector<Slot> slots;
        uint64_t key = 0;
        uint32_t block = 0;  // index into blocks_
    };
    struct Block {
        uint64_t key = 0;
        uint32_t drivers = 0;
    };
    static constexpr int kBlockShift = 3;  // 8 × 8 cells

    int32_t row(double lat) const;
    int32_t col(double lon) const;
    static uint64_t key(int32_t r, int32_t c) {
        return (static_cast<uint64_t>(static_cast<uint32_t>(r)) << 32) | static_cast<uint32_t>(c);
    }
    uint32_t find(const IdKey& k, const std::string& id) const;
    uint32_t cell_at(uint64_t cell_key);  // finds or creates
    uint32_t block_at(uint64_t block_key);  // finds or creates
    static uint64_t block_of(int32_t r, int32_t c) { return key(r >> kBlockShift, c >> kBlockShift); }
    uint32_t drivers_in_block(uint64_t block_key) const {
        const uint32_t i =
            block_table_.find(IdKey::mix(block_key), [&](uint32_t v) { return blocks_[v].key == block_key; });
        return i == IdTable::kNone ? 0 : blocks_[i].drivers;
    }
    const Cell* find_cell(uint64_t cell_key) const {
        const uint32_t i =
            cell_table_.find(IdKey::mix(cell_key), [&](uint32_t v) { return cells_[v].key == cell_key; });
        return i == IdTable::kNone ? nullptr : &cells_[i];
    }
    void place(uint32_t handle, uint64_t cell_key, dgdo_point pos);
    void remove_from_cell(Entry& e);

    double cell_lat_deg_;
    double cell_lon_deg_;
    std::vector<Cell> cells_;
    IdTable cell_table_;  // cell key -> index into cells_
    std::vector<Block> blocks_;
    IdTable block_table_;  // block key -> index into blocks_
    std::size_t live_cells_ = 0;
    IdTable where_;                 // id -> index into drivers_
    std::vector<Entry> drivers_;
    std::vector<std::string> ids_;  // drivers_[i]'s id as a string (cold: eligibility, results)
    std::vector<uint32_t> free_;

    struct Ranked {
        double d2;  // squared equirectangular metres
        uint32_t driver;
        bool operator>(const Ranked& o) const { return d2 > o.d2 || (d2 == o.d2 && driver > o.driver); }
    };
    mutable std::vector<Ranked> heap_;    // min-heap on (d2, driver)
    mutable std::vector<Ranked> chosen_;
    mutable std::vector<double> seen_;    // max-heap of the k best d2 seen (no filter only)
};

}  // namespace dgdo
