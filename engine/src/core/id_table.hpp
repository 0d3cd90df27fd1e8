// Fixed-width id keys and an open-addressing table of 32-bit values.
//
// Ids on the wire are dgdo_id: at most 40 bytes, NUL-padded. IdKey holds
// those bytes as five u64 words (plus the length), so hashing is five loads
// and a mix, and equality is five compares: no std::string, no allocation.
//
// IdTable maps a 64-bit hash to a uint32 value (an index into the caller's
// dense storage, where the key itself lives); the caller's `eq(value)`
// confirms a match. Linear probing, load ≤ 1/2, backward-shift deletion, so
// there are no tombstones. Each slot keeps the hash's high 32 bits (its home
// slot is derived from them), so growing never re-reads a key.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace dgdo {

struct IdKey {
    uint64_t w[5] = {0, 0, 0, 0, 0};
    uint32_t len = 0;  // the full length; bytes past 40 are not in w

    static IdKey of(const char* p, std::size_t n) {
        IdKey k;
        std::memcpy(k.w, p, n < sizeof k.w ? n : sizeof k.w);
        k.len = static_cast<uint32_t>(n);
        return k;
    }
    static IdKey of(const std::string& s) { return of(s.data(), s.size()); }

    bool operator==(const IdKey& o) const {
        return ((w[0] ^ o.w[0]) | (w[1] ^ o.w[1]) | (w[2] ^ o.w[2]) | (w[3] ^ o.w[3]) | (w[4] ^ o.w[4]) |
                (len ^ o.len)) == 0;
    }
    bool fits() const { return len <= sizeof w; }

    uint64_t hash() const {
        uint64_t h = (w[0] ^ len) * 0x9e3779b97f4a7c15ull;
        h ^= w[1] * 0xc2b2ae3d27d4eb4full;
        h = (h << 29) | (h >> 35);
        h ^= w[2] * 0x165667b19e3779f9ull;
        h ^= w[3] * 0xd6e8feb86659fd93ull;
        h = (h << 31) | (h >> 33);
        h ^= w[4] * 0x9e3779b97f4a7c15ull;
        return mix(h);
    }
    static uint64_t mix(uint64_t k) {  // splitmix64 finaliser
        k ^= k >> 30;
        k *= 0xbf58476d1ce4e5b9ull;
        k ^= k >> 27;
        k *= 0x94d049bb133111ebull;
        return k ^ (k >> 31);
    }
};

class IdTable {
public:
    static constexpr uint32_t kNone = UINT32_MAX;

    IdTable() : slots_(16, 0), mask_(15) {}

    std::size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }

    template <class Eq>
    uint32_t find(uint64_t hash, Eq&& eq) const {
        const uint32_t tag = static_cast<uint32_t>(hash >> 32);
        for (uint32_t i = tag & mask_;; i = (i + 1) & mask_) {
            const uint64_t s = slots_[i];
            if (s == 0) return kNone;
            if (static_cast<uint32_t>(s >> 32) == tag) {
                const uint32_t v = static_cast<uint32_t>(s) - 1;
                if (eq(v)) return v;
            }
        }
    }

    // The key must not be present.
    void insert(uint64_t hash, uint32_t value) {
        if ((size_ + 1) * 2 > slots_.size()) grow();
        place((hash >> 32) << 32 | (static_cast<uint64_t>(value) + 1));
        ++size_;
    }

    template <class Eq>
    bool erase(uint64_t hash, Eq&& eq) {
        const uint32_t tag = static_cast<uint32_t>(hash >> 32);
        uint32_t i = tag & mask_;
        for (;; i = (i + 1) & mask_) {
            const uint64_t s = slots_[i];
            if (s == 0) return false;
            if (static_cast<uint32_t>(s >> 32) == tag && eq(static_cast<uint32_t>(s) - 1)) break;
        }
        // Backward shift: pull later members of the run into the hole when their home allows it.
        uint32_t hole = i;
        for (uint32_t j = (i + 1) & mask_;; j = (j + 1) & mask_) {
            const uint64_t s = slots_[j];
            if (s == 0) break;
            const uint32_t home = static_cast<uint32_t>(s >> 32) & mask_;
            if (((j - home) & mask_) >= ((j - hole) & mask_)) {
                slots_[hole] = s;
                hole = j;
            }
        }
        slots_[hole] = 0;
        --size_;
        return true;
    }

private:
    void place(uint64_t s) {
        uint32_t i = static_cast<uint32_t>(s >> 32) & mask_;
        while (slots_[i] != 0) i = (i + 1) & mask_;
        slots_[i] = s;
    }
    void grow() {
        std::vector<uint64_t> old(slots_.size() * 2, 0);
        old.swap(slots_);
        mask_ = static_cast<uint32_t>(slots_.size() - 1);
        for (uint64_t s : old)
            if (s != 0) place(s);
    }

    std::vector<uint64_t> slots_;  // 0 = empty, else hash high 32 bits << 32 | (value + 1)
    uint32_t mask_;
    std::size_t size_ = 0;
};

}  // namespace dgdo
