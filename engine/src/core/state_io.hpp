// Little-endian byte helpers for snapshots (Core::save/load and the members it delegates to).
// put* append to a string; get* read at p, advance it, and return false past `end`.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace dgdo::io {

template <class T>
inline void put(std::string& out, const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

inline void put_str(std::string& out, const std::string& s) {
    put(out, static_cast<uint32_t>(s.size()));
    out.append(s);
}

template <class T>
inline bool get(const uint8_t*& p, const uint8_t* end, T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (static_cast<size_t>(end - p) < sizeof v) return false;
    std::memcpy(&v, p, sizeof v);
    p += sizeof v;
    return true;
}

inline bool get_str(const uint8_t*& p, const uint8_t* end, std::string& s) {
    uint32_t n = 0;
    if (!get(p, end, n) || static_cast<size_t>(end - p) < n) return false;
    s.assign(reinterpret_cast<const char*>(p), n);
    p += n;
    return true;
}

// A count that cannot exceed what is left (each element takes at least `min_size` bytes):
// a corrupt count never makes a loader reserve gigabytes.
inline bool get_count(const uint8_t*& p, const uint8_t* end, uint32_t& n, size_t min_size) {
    return get(p, end, n) && static_cast<size_t>(end - p) / (min_size ? min_size : 1) >= n;
}

// 64-bit hash of a byte string, 8 bytes a step (a digest to compare states, not a MAC).
uint64_t hash64(const void* data, size_t n);

}  // namespace dgdo::io
