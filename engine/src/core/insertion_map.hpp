// A hash map that iterates in insertion order and never erases.
//
// The core's session table was an unordered_map, whose iteration order depends
// on its rehash history: a core loaded from a snapshot would iterate it
// differently from one that lived through the same inputs, and save() would
// write different bytes for the same state. Here the order is the order keys
// first appeared in the input, which a snapshot preserves; and elements never
// move, so a pointer to a value stays valid (the core caches them).
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_map>
#include <utility>

namespace dgdo {

template <class K, class V, class Hash>
class InsertionMap {
    using Items = std::deque<std::pair<const K, V>>;

public:
    using iterator = typename Items::iterator;
    using const_iterator = typename Items::const_iterator;

    V& operator[](const K& k) {
        auto [it, fresh] = at_.try_emplace(k, static_cast<uint32_t>(items_.size()));
        if (fresh) items_.emplace_back(k, V{});
        return items_[it->second].second;
    }
    iterator find(const K& k) {
        auto it = at_.find(k);
        return it == at_.end() ? items_.end() : items_.begin() + it->second;
    }
    const_iterator find(const K& k) const {
        auto it = at_.find(k);
        return it == at_.end() ? items_.end() : items_.begin() + it->second;
    }
    iterator begin() { return items_.begin(); }
    iterator end() { return items_.end(); }
    const_iterator begin() const { return items_.begin(); }
    const_iterator end() const { return items_.end(); }
    std::size_t size() const { return items_.size(); }
    bool empty() const { return items_.empty(); }

private:
    Items items_;
    std::unordered_map<K, uint32_t, Hash> at_;  // key -> index into items_
};

}  // namespace dgdo
