#include "core/delivery.hpp"

#include <algorithm>
#include <cstring>

#include "dgdo/events.h"

namespace dgdo {

namespace {

// Where the seq sits in each reliable record (the order id is at 64 in all three).
size_t seq_offset(int32_t type) {
    switch (type) {
    case DGDO_OUT_ORDER_UPDATE: return offsetof(dgdo_out_order_update, seq);
    case DGDO_OUT_NEW_ORDER: return offsetof(dgdo_out_new_order, seq);
    case DGDO_OUT_CANCEL_ORDER: return offsetof(dgdo_out_cancel_order, seq);
    default: return 0;
    }
}
static_assert(offsetof(dgdo_out_order_update, order_id) == 64 && offsetof(dgdo_out_new_order, order_id) == 64 &&
              offsetof(dgdo_out_cancel_order, order_id) == 64);
constexpr size_t kOrderOffset = 64;

uint64_t read_u64(const OutRecord& r, size_t off) {
    uint64_t v = 0;
    if (off + sizeof v <= r.body.size()) std::memcpy(&v, r.body.data() + off, sizeof v);
    return v;
}

Deliveries::Key recipient(const OutRecord& r) {
    dgdo_out_meta m;
    std::memcpy(&m, r.body.data(), sizeof m);
    return {m.to_role, std::string(m.to_id.chars, strnlen(m.to_id.chars, DGDO_ID_MAX))};
}

// ---- save / load encoding: little-endian whatever the host ----

constexpr uint32_t kMagic = 0x4C444744;  // "DGDL"
constexpr uint32_t kVersion = 1;

void put(std::string& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_key(std::string& out, const Deliveries::Key& k) {
    put(out, k.first, 1);
    put(out, k.second.size(), 1);
    out.append(k.second);
}
void put_record(std::string& out, const OutRecord& r) {
    put(out, static_cast<uint32_t>(r.type), 4);
    put(out, r.body.size(), 4);
    out.append(reinterpret_cast<const char*>(r.body.data()), r.body.size());
}

struct Reader {
    const uint8_t* p;
    const uint8_t* end;
    bool ok = true;
    uint64_t get(int bytes) {
        if (!ok || end - p < bytes) {
            ok = false;
            return 0;
        }
        uint64_t v = 0;
        for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
        p += bytes;
        return v;
    }
    bool key(Deliveries::Key& k) {
        k.first = static_cast<uint8_t>(get(1));
        const uint64_t n = get(1);
        if (!ok || n > DGDO_ID_MAX || static_cast<uint64_t>(end - p) < n) return ok = false;
        k.second.assign(reinterpret_cast<const char*>(p), n);
        p += n;
        return true;
    }
    bool record(OutRecord& r) {
        r.type = static_cast<int32_t>(get(4));
        const uint64_t n = get(4);
        if (!ok || !Deliveries::reliable(r.type) || n < sizeof(dgdo_out_meta) || n > 4096 ||
            static_cast<uint64_t>(end - p) < n)
            return ok = false;
        r.body.assign(p, p + n);
        p += n;
        return true;
    }
    // A count, refused when it could not fit in what is left (each item takes at least `min` bytes).
    bool count(uint64_t& n, size_t min) {
        n = get(4);
        return ok = ok && n <= static_cast<uint64_t>(end - p) / min;
    }
};

}  // namespace

uint64_t seq_of(const OutRecord& rec) {
    const size_t off = seq_offset(rec.type);
    return off == 0 ? 0 : read_u64(rec, off);
}

bool Deliveries::reliable(int32_t type) { return seq_offset(type) != 0; }

Deliveries::Box& Deliveries::box(const Key& k) { return boxes_[k]; }

void Deliveries::push(Box& b, const OutRecord& rec) {
    if (depth_ == 0) return;
    if (b.ring.size() < depth_) {
        b.ring.push_back(rec);
        return;
    }
    b.ring[b.head] = rec;
    b.head = (b.head + 1) % static_cast<uint32_t>(b.ring.size());
}

uint64_t Deliveries::stamp(OutRecord& rec) {
    const size_t off = seq_offset(rec.type);
    if (off == 0 || rec.body.size() < off + sizeof(uint64_t)) return 0;
    const Key k = recipient(rec);
    Box& b = box(k);
    const uint64_t seq = ++b.seq;
    std::memcpy(rec.body.data() + off, &seq, sizeof seq);
    push(b, rec);
    auto& who = recipients_of_[read_u64(rec, kOrderOffset)];
    if (std::find(who.begin(), who.end(), k) == who.end()) {
        who.push_back(k);
        ++b.orders;
    }
    return seq;
}

void Deliveries::keep_final(const OutRecord& rec) {
    if (!reliable(rec.type)) return;
    auto it = boxes_.find(recipient(rec));
    if (it == boxes_.end()) return;  // never stamped: nothing to keep
    it->second.ended[read_u64(rec, kOrderOffset)].push_back(rec);
}

uint64_t Deliveries::latest(const Key& k) const {
    auto it = boxes_.find(k);
    return it == boxes_.end() ? 0 : it->second.seq;
}

// The history must stay a run of consecutive seqs ending at b.seq (since() relies on it):
// across the jump nothing can be replayed, so it goes.
void Deliveries::raise(const Key& k, uint64_t seq) {
    Box& b = box(k);
    if (seq <= b.seq) return;
    b.seq = seq;
    std::vector<OutRecord>().swap(b.ring);
    b.head = 0;
}

bool Deliveries::since(const Key& k, uint64_t last_seq, std::vector<const OutRecord*>& out) const {
    const uint64_t latest = this->latest(k);
    if (last_seq > latest) return false;
    if (last_seq == latest) return true;
    const Box& b = boxes_.at(k);  // latest > 0: the box exists
    if (b.ring.empty()) return false;
    // The history is a run of consecutive seqs ending at b.seq (see raise()).
    const uint64_t oldest = seq_of(b.ring[b.head]);
    if (oldest > last_seq + 1) return false;
    b.each([&](const OutRecord& r) {
        if (seq_of(r) > last_seq) out.push_back(&r);
    });
    return true;
}

void Deliveries::ended_since(const Key& k, uint64_t after, std::vector<const OutRecord*>& out) const {
    auto it = boxes_.find(k);
    if (it == boxes_.end()) return;
    const size_t first = out.size();
    for (const auto& [order, recs] : it->second.ended)
        for (const OutRecord& r : recs)
            if (seq_of(r) > after) out.push_back(&r);
    std::stable_sort(out.begin() + static_cast<std::ptrdiff_t>(first), out.end(),
                     [](const OutRecord* a, const OutRecord* b) { return seq_of(*a) < seq_of(*b); });
}

void Deliveries::forget_order(uint64_t order) {
    auto it = recipients_of_.find(order);
    if (it == recipients_of_.end()) return;
    for (const Key& k : it->second) {
        auto b = boxes_.find(k);
        if (b == boxes_.end()) continue;
        Box& box = b->second;
        box.ended.erase(order);
        if (--box.orders == 0) {
            std::vector<OutRecord>().swap(box.ring);  // free it: idle recipients cost their counter only
            box.head = 0;
        }
    }
    recipients_of_.erase(it);
}

std::size_t Deliveries::held(const Key& k) const {
    auto it = boxes_.find(k);
    return it == boxes_.end() ? 0 : it->second.ring.size();
}

std::size_t Deliveries::held_total() const {
    std::size_t n = 0;
    for (const auto& [k, b] : boxes_) n += b.ring.size();
    return n;
}

std::size_t Deliveries::ended_total() const {
    std::size_t n = 0;
    for (const auto& [k, b] : boxes_)
        for (const auto& [order, recs] : b.ended) n += recs.size();
    return n;
}

bool Deliveries::Box::operator==(const Box& o) const {
    if (seq != o.seq || orders != o.orders || ring.size() != o.ring.size() || ended.size() != o.ended.size())
        return false;
    for (std::size_t i = 0; i < ring.size(); ++i) {
        const OutRecord& a = ring[(head + i) % ring.size()];
        const OutRecord& b = o.ring[(o.head + i) % o.ring.size()];
        if (a.type != b.type || a.body != b.body) return false;
    }
    auto same = [](const OutRecord& a, const OutRecord& b) { return a.type == b.type && a.body == b.body; };
    for (auto a = ended.begin(), b = o.ended.begin(); a != ended.end(); ++a, ++b)
        if (a->first != b->first || !std::equal(a->second.begin(), a->second.end(), b->second.begin(),
                                                b->second.end(), same))
            return false;
    return true;
}

bool Deliveries::operator==(const Deliveries& o) const {
    return depth_ == o.depth_ && boxes_ == o.boxes_ && recipients_of_ == o.recipients_of_;
}

// Layout (all little-endian):
//   u32 magic "DGDL", u32 version
//   u32 recipients, then per recipient in key order:
//     key (u8 role, u8 len, id), u64 seq,
//     u32 n, n records oldest first (u32 type, u32 len, body),
//     u32 orders with final records, per order in id order: u64 order, u32 n, n records
//   u32 orders with recipients, per order in id order: u64 order, u32 n, n keys in first-stamp order
void Deliveries::save(std::string& out) const {
    put(out, kMagic, 4);
    put(out, kVersion, 4);
    put(out, boxes_.size(), 4);
    for (const auto& [k, b] : boxes_) {
        put_key(out, k);
        put(out, b.seq, 8);
        put(out, b.ring.size(), 4);
        b.each([&](const OutRecord& r) { put_record(out, r); });
        put(out, b.ended.size(), 4);
        for (const auto& [order, recs] : b.ended) {
            put(out, order, 8);
            put(out, recs.size(), 4);
            for (const OutRecord& r : recs) put_record(out, r);
        }
    }
    put(out, recipients_of_.size(), 4);
    for (const auto& [order, keys] : recipients_of_) {
        put(out, order, 8);
        put(out, keys.size(), 4);
        for (const Key& k : keys) put_key(out, k);
    }
}

bool Deliveries::load(const uint8_t*& p, const uint8_t* end) {
    Reader in{p, end};
    if (in.get(4) != kMagic || in.get(4) != kVersion || !in.ok) return false;
    std::map<Key, Box> boxes;
    std::map<uint64_t, std::vector<Key>> recipients_of;
    uint64_t nboxes = 0;
    if (!in.count(nboxes, 18)) return false;
    for (uint64_t i = 0; i < nboxes; ++i) {
        Key k;
        if (!in.key(k)) return false;
        Box& b = boxes[k];
        b.seq = in.get(8);
        uint64_t n = 0;
        if (!in.count(n, 8)) return false;
        std::vector<OutRecord> held(n);
        for (auto& r : held)
            if (!in.record(r)) return false;
        const size_t keep = std::min<size_t>(held.size(), depth_);  // a smaller depth now: the newest
        b.ring.assign(std::make_move_iterator(held.end() - static_cast<std::ptrdiff_t>(keep)),
                      std::make_move_iterator(held.end()));
        uint64_t nended = 0;
        if (!in.count(nended, 12)) return false;
        for (uint64_t j = 0; j < nended; ++j) {
            const uint64_t order = in.get(8);
            if (!in.count(n, 8)) return false;
            auto& recs = b.ended[order];
            recs.resize(n);
            for (auto& r : recs)
                if (!in.record(r)) return false;
        }
    }
    uint64_t norders = 0;
    if (!in.count(norders, 12)) return false;
    for (uint64_t i = 0; i < norders; ++i) {
        const uint64_t order = in.get(8);
        uint64_t n = 0;
        if (!in.count(n, 2)) return false;
        auto& keys = recipients_of[order];
        keys.resize(n);
        for (Key& k : keys) {
            if (!in.key(k)) return false;
            auto b = boxes.find(k);
            if (b == boxes.end()) return false;  // names a recipient the file does not hold
            ++b->second.orders;
        }
    }
    if (!in.ok) return false;
    boxes_ = std::move(boxes);
    recipients_of_ = std::move(recipients_of);
    p = in.p;
    return true;
}

}  // namespace dgdo
