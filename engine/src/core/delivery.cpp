#include "core/delivery.hpp"

#include <algorithm>
#include <cstring>

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
static_assert(sizeof(dgdo_out_order_update) <= sizeof(dgdo_out_new_order) &&
              sizeof(dgdo_out_cancel_order) <= sizeof(dgdo_out_new_order));  // Held's slot fits all three
constexpr size_t kOrderOffset = 64;

uint64_t read_u64(const uint8_t* body, size_t len, size_t off) {
    uint64_t v = 0;
    if (off + sizeof v <= len) std::memcpy(&v, body + off, sizeof v);
    return v;
}

// The recipient of a record, as (role, id key): read in place, no string.
std::pair<uint8_t, IdKey> recipient(const uint8_t* body) {
    const uint8_t role = body[offsetof(dgdo_out_meta, to_role)];
    const char* id = reinterpret_cast<const char*>(body + offsetof(dgdo_out_meta, to_id));
    return {role, IdKey::of(id, strnlen(id, DGDO_ID_MAX))};
}

IdKey key_of(const std::string& id) { return IdKey::of(id.data(), std::min<size_t>(id.size(), DGDO_ID_MAX)); }

// ---- save / load encoding: little-endian whatever the host ----

constexpr uint32_t kMagic = 0x4C444744;  // "DGDL"
// 2: each recipient's base, and the counter new recipients start at (jump()). Version 1
// still loads: its histories were consecutive up to the counter, so base is the seq before
// the oldest record (the counter when none is held), and nothing had jumped.
// 3: the stamp count and the records not dated yet (their publish time not journaled yet).
constexpr uint32_t kVersion = 3;

uint64_t commit_of(const uint8_t* body) {
    uint64_t v;
    std::memcpy(&v, body + offsetof(dgdo_out_meta, commit_real_ns), sizeof v);
    return v;
}
void set_commit(uint8_t* body, uint64_t real_ns) {
    std::memcpy(body + offsetof(dgdo_out_meta, commit_real_ns), &real_ns, sizeof real_ns);
}

void put(std::string& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put_key(std::string& out, const Deliveries::Key& k) {
    put(out, k.first, 1);
    put(out, k.second.size(), 1);
    out.append(k.second);
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
    // A count, refused when it could not fit in what is left (each item takes at least `min` bytes).
    bool count(uint64_t& n, size_t min) {
        n = get(4);
        return ok = ok && n <= static_cast<uint64_t>(end - p) / min;
    }
};

}  // namespace

uint64_t seq_of(const OutRecord& rec) {
    const size_t off = seq_offset(rec.type);
    return off == 0 ? 0 : read_u64(rec.body.data(), rec.body.size(), off);
}

bool Deliveries::reliable(int32_t type) { return seq_offset(type) != 0; }

// ---- Held ------------------------------------------------------------------------

Deliveries::Held Deliveries::Held::of(const OutRecord& r) {
    Held h;
    h.type = r.type;
    h.len = static_cast<uint32_t>(std::min(r.body.size(), h.bytes.size()));
    std::memcpy(h.bytes.data(), r.body.data(), h.len);
    return h;
}

OutRecord Deliveries::Held::record() const { return OutRecord{type, std::vector<uint8_t>(bytes.begin(), bytes.begin() + len)}; }

uint64_t Deliveries::Held::seq() const { return read_u64(bytes.data(), len, seq_offset(type)); }

bool Deliveries::Held::operator==(const Held& o) const {
    return type == o.type && len == o.len && std::equal(bytes.begin(), bytes.begin() + len, o.bytes.begin());
}

// ---- numbering and keeping ----------------------------------------------------------

Deliveries::Key Deliveries::Box::key() const {
    return {role, std::string(reinterpret_cast<const char*>(id.w), id.len)};
}

uint32_t Deliveries::find(uint8_t role, const IdKey& id) const {
    return index_.find(hash(role, id), [&](uint32_t v) { return boxes_[v].role == role && boxes_[v].id == id; });
}

const Deliveries::Box* Deliveries::find(const Key& k) const {
    const uint32_t i = find(k.first, key_of(k.second));
    return i == IdTable::kNone ? nullptr : &boxes_[i];
}

uint32_t Deliveries::box(uint8_t role, const IdKey& id) {
    const uint32_t i = find(role, id);
    if (i != IdTable::kNone) return i;
    Box& b = boxes_.emplace_back();
    b.role = role;
    b.id = id;
    b.seq = floor_;  // after a jump: above any seq a lost journal tail handed out to it
    const auto fresh = static_cast<uint32_t>(boxes_.size() - 1);
    index_.insert(hash(role, id), fresh);
    return fresh;
}

uint32_t Deliveries::push(Box& b, const Held& rec) {
    if (depth_ == 0) {
        b.base = rec.seq();
        return kNoSlot;
    }
    if (b.ring.size() < depth_) {
        b.ring.push_back(rec);
        return static_cast<uint32_t>(b.ring.size() - 1);
    }
    b.base = b.ring[b.head].seq();  // the oldest goes: a resume from it still replays the rest
    const uint32_t slot = b.head;
    b.ring[slot] = rec;
    b.head = (b.head + 1) % static_cast<uint32_t>(b.ring.size());
    return slot;
}

uint64_t Deliveries::stamp(OutRecord& rec) {
    const size_t off = seq_offset(rec.type);
    if (off == 0 || rec.body.size() < off + sizeof(uint64_t)) return 0;
    const auto [role, id] = recipient(rec.body.data());
    const uint32_t me = box(role, id);
    Box& b = boxes_[me];
    const uint64_t seq = ++b.seq;
    std::memcpy(rec.body.data() + off, &seq, sizeof seq);
    const uint32_t slot = push(b, Held::of(rec));
    ++stamped_;
    const uint64_t order = read_u64(rec.body.data(), rec.body.size(), kOrderOffset);
    if (commit_of(rec.body.data()) == 0) undated_.push_back({stamped_, me, seq, order, slot});
    auto& who = recipients_of_[order];
    if (std::find(who.begin(), who.end(), me) == who.end()) {
        who.push_back(me);
        ++b.orders;
    }
    return seq;
}

void Deliveries::keep_final(const OutRecord& rec) {
    if (!reliable(rec.type) || rec.body.size() < sizeof(dgdo_out_meta)) return;
    const auto [role, id] = recipient(rec.body.data());
    const uint32_t i = find(role, id);
    if (i == IdTable::kNone) return;  // never stamped: nothing to keep
    boxes_[i].ended[read_u64(rec.body.data(), rec.body.size(), kOrderOffset)].push_back(Held::of(rec));
}

void Deliveries::resent_final(const OutRecord& rec, uint64_t was) {
    if (!reliable(rec.type) || rec.body.size() < sizeof(dgdo_out_meta)) return;
    const auto [role, id] = recipient(rec.body.data());
    const uint32_t i = find(role, id);
    if (i == IdTable::kNone) return;
    auto it = boxes_[i].ended.find(read_u64(rec.body.data(), rec.body.size(), kOrderOffset));
    if (it == boxes_[i].ended.end()) return;
    for (Held& h : it->second) {
        if (h.type == rec.type && h.seq() == was) {
            h = Held::of(rec);  // resent in seq order: the order's records stay in seq order
            return;
        }
    }
}

void Deliveries::dated(uint64_t real_ns, uint64_t upto) {
    // Each kept copy is found where it was put, never looked for: a burst of thousands of records to
    // one recipient (a tick's search timeouts) is dated in as many steps, whatever it has kept.
    while (!undated_.empty() && undated_.front().n <= upto) {
        const Undated u = undated_.front();
        undated_.pop_front();
        Box& b = boxes_[u.box];
        auto date = [&](Held& h) {
            if (h.seq() == u.seq && commit_of(h.bytes.data()) == 0) set_commit(h.bytes.data(), real_ns);
        };
        if (u.slot < b.ring.size()) date(b.ring[u.slot]);  // (a newer record in that slot since: another seq)
        if (auto it = b.ended.find(u.order); it != b.ended.end())
            for (Held& h : it->second) date(h);  // its copy among its order's final records, if it ended it
    }
}

uint64_t Deliveries::changed_at(const Key& k, uint64_t order) const {
    const Box* b = find(k);
    if (b == nullptr) return 0;
    for (std::size_t i = b->ring.size(); i-- > 0;) {  // newest first
        const Held& h = b->ring[(b->head + i) % b->ring.size()];
        if (read_u64(h.bytes.data(), h.len, kOrderOffset) == order) return commit_of(h.bytes.data());
    }
    return 0;
}

void Deliveries::date_as(OutRecord& rec, uint64_t real_ns) {
    if (real_ns == 0 || !reliable(rec.type) || rec.body.size() < sizeof(dgdo_out_meta)) return;
    set_commit(rec.body.data(), real_ns);
    const auto [role, id] = recipient(rec.body.data());
    const uint32_t i = find(role, id);
    if (i == IdTable::kNone) return;
    const uint64_t seq = seq_of(rec);
    for (Held& h : boxes_[i].ring)
        if (h.seq() == seq) set_commit(h.bytes.data(), real_ns);
}

uint64_t Deliveries::latest(const Key& k) const {
    const Box* b = find(k);
    return b == nullptr ? floor_ : b->seq;
}

// The history must stay every seq handed out after base (since() relies on it): the app
// takes `seq` as handed out, and nothing can be replayed across the raise, so it goes.
void Deliveries::raise(const Key& k, uint64_t seq) {
    Box& b = boxes_[box(k.first, key_of(k.second))];
    if (seq <= b.seq) return;
    b.seq = seq;
    b.base = seq;
    std::vector<Held>().swap(b.ring);
    b.head = 0;
}

void Deliveries::jump(uint64_t gap) {
    floor_ += gap;
    for (Box& b : boxes_) b.seq += gap;
}

uint64_t Deliveries::issued(const Key& k) const {
    const Box* b = find(k);
    if (b == nullptr) return 0;
    return b->ring.empty() ? b->base : b->ring[(b->head + b->ring.size() - 1) % b->ring.size()].seq();
}

// The seqs handed out to k that the engine still knows are base and the history's, in order
// (see delivery.hpp): a last_seq that is one of them is continued from; any other is either
// out of reach or was never handed out (a jump's gap), and replaying "what follows" it would
// skip, unsaid, whatever the app took for it.
bool Deliveries::since(const Key& k, uint64_t last_seq, std::vector<OutRecord>& out) const {
    const Box* found = find(k);
    if (found == nullptr) return last_seq == 0;  // nothing handed out: nothing missed from 0
    const Box& b = *found;
    if (last_seq > b.seq) return false;
    bool from = last_seq == b.base;
    b.each([&](const Held& r) {
        if (from) out.push_back(r.record());
        else from = r.seq() == last_seq;
    });
    return from;
}

void Deliveries::ended_since(const Key& k, uint64_t after, std::vector<OutRecord>& out) const {
    const Box* b = find(k);
    if (b == nullptr) return;
    std::vector<const Held*> found;
    for (const auto& [order, recs] : b->ended)
        for (const Held& r : recs)
            if (r.seq() > after) found.push_back(&r);
    std::stable_sort(found.begin(), found.end(), [](const Held* a, const Held* b) { return a->seq() < b->seq(); });
    for (const Held* r : found) out.push_back(r->record());
}

void Deliveries::forget_order(uint64_t order) {
    auto it = recipients_of_.find(order);
    if (it == recipients_of_.end()) return;
    for (uint32_t i : it->second) {
        Box& b = boxes_[i];
        b.ended.erase(order);
        if (--b.orders == 0) {
            if (!b.ring.empty()) b.base = b.ring[(b.head + b.ring.size() - 1) % b.ring.size()].seq();
            std::vector<Held>().swap(b.ring);  // free it: idle recipients cost their counter only
            b.head = 0;
        }
    }
    recipients_of_.erase(it);
}

// ---- views ---------------------------------------------------------------------------

std::size_t Deliveries::held(const Key& k) const {
    const Box* b = find(k);
    return b == nullptr ? 0 : b->ring.size();
}

std::size_t Deliveries::held_total() const {
    std::size_t n = 0;
    for (const Box& b : boxes_) n += b.ring.size();
    return n;
}

std::size_t Deliveries::ended_total() const {
    std::size_t n = 0;
    for (const Box& b : boxes_)
        for (const auto& [order, recs] : b.ended) n += recs.size();
    return n;
}

bool Deliveries::Box::operator==(const Box& o) const {
    if (role != o.role || !(id == o.id) || seq != o.seq || base != o.base || orders != o.orders || ring.size() != o.ring.size() || ended != o.ended) return false;
    for (std::size_t i = 0; i < ring.size(); ++i)
        if (!(ring[(head + i) % ring.size()] == o.ring[(o.head + i) % o.ring.size()])) return false;
    return true;
}

// Equal state, whatever order the recipients were first seen in: what a resume answers (the
// dates each kept record carries included). The dating still to come (stamped_, undated_) is
// not compared: a state saved before it existed loads without it and answers the same. save()
// writes it, so a digest covers it.
bool Deliveries::operator==(const Deliveries& o) const {
    if (depth_ != o.depth_ || floor_ != o.floor_ || boxes_.size() != o.boxes_.size() || recipients_of_.size() != o.recipients_of_.size())
        return false;
    for (const Box& b : boxes_) {
        const uint32_t i = o.find(b.role, b.id);
        if (i == IdTable::kNone || !(b == o.boxes_[i])) return false;
    }
    for (const auto& [order, who] : recipients_of_) {
        auto it = o.recipients_of_.find(order);
        if (it == o.recipients_of_.end() || it->second.size() != who.size()) return false;
        for (size_t i = 0; i < who.size(); ++i)
            if (boxes_[who[i]].key() != o.boxes_[it->second[i]].key()) return false;
    }
    return true;
}

// ---- save / load ------------------------------------------------------------------------
//
// Layout (all little-endian):
//   u32 magic "DGDL", u32 version, u64 floor (version 2)
//   u32 recipients, then per recipient in key order:
//     key (u8 role, u8 len, id), u64 seq, u64 base (version 2),
//     u32 n, n records oldest first (u32 type, u32 len, body),
//     u32 orders with final records, per order in id order: u64 order, u32 n, n records
//   u32 orders with recipients, per order in id order: u64 order, u32 n, n keys in first-stamp order
//   u64 stamped, u32 n, n undated records in stamp order: u64 count, key, u64 seq, u64 order (version 3)
void Deliveries::save(std::string& out) const {
    auto put_held = [&out](const Held& r) {
        put(out, static_cast<uint32_t>(r.type), 4);
        put(out, r.len, 4);
        out.append(reinterpret_cast<const char*>(r.bytes.data()), r.len);
    };
    std::vector<std::pair<Key, const Box*>> sorted;
    sorted.reserve(boxes_.size());
    for (const Box& b : boxes_) sorted.emplace_back(b.key(), &b);
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    put(out, kMagic, 4);
    put(out, kVersion, 4);
    put(out, floor_, 8);
    put(out, sorted.size(), 4);
    for (const auto& [key, box] : sorted) {
        const Box& b = *box;
        put_key(out, key);
        put(out, b.seq, 8);
        put(out, b.base, 8);
        put(out, b.ring.size(), 4);
        b.each(put_held);
        put(out, b.ended.size(), 4);
        for (const auto& [order, recs] : b.ended) {
            put(out, order, 8);
            put(out, recs.size(), 4);
            for (const Held& r : recs) put_held(r);
        }
    }
    std::vector<uint64_t> orders;
    orders.reserve(recipients_of_.size());
    for (const auto& [order, who] : recipients_of_) orders.push_back(order);
    std::sort(orders.begin(), orders.end());
    put(out, orders.size(), 4);
    for (uint64_t order : orders) {
        const auto& who = recipients_of_.at(order);
        put(out, order, 8);
        put(out, who.size(), 4);
        for (uint32_t i : who) put_key(out, boxes_[i].key());
    }
    put(out, stamped_, 8);
    put(out, undated_.size(), 4);
    for (const Undated& u : undated_) {
        put(out, u.n, 8);
        put_key(out, boxes_[u.box].key());
        put(out, u.seq, 8);
        put(out, u.order, 8);  // (its slot is where the loaded history puts it: found again by load())
    }
}

bool Deliveries::load(const uint8_t*& p, const uint8_t* end) {
    Reader in{p, end};
    auto held = [&in](Held& r) {
        r.type = static_cast<int32_t>(in.get(4));
        const uint64_t n = in.get(4);
        const size_t off = seq_offset(r.type);
        if (!in.ok || off == 0 || n < off + sizeof(uint64_t) || n > r.bytes.size() ||
            static_cast<uint64_t>(in.end - in.p) < n)
            return in.ok = false;
        r.len = static_cast<uint32_t>(n);
        std::memcpy(r.bytes.data(), in.p, n);
        in.p += n;
        return true;
    };
    if (in.get(4) != kMagic) return false;
    const uint64_t version = in.get(4);
    if (!in.ok || version < 1 || version > kVersion) return false;
    Deliveries fresh(depth_);  // built aside: this one stays as it was until all is read
    if (version >= 2) fresh.floor_ = in.get(8);
    std::vector<std::pair<uint64_t, std::vector<Key>>> orders;
    uint64_t nboxes = 0;
    if (!in.count(nboxes, 18)) return false;
    for (uint64_t i = 0; i < nboxes; ++i) {
        Key k;
        if (!in.key(k)) return false;
        const IdKey id = key_of(k.second);
        if (fresh.find(k.first, id) != IdTable::kNone) return false;  // a recipient twice: corrupt
        Box& b = fresh.boxes_[fresh.box(k.first, id)];
        b.seq = in.get(8);
        if (version >= 2) b.base = in.get(8);
        uint64_t n = 0;
        if (!in.count(n, 8)) return false;
        std::vector<Held> ring(n);
        for (Held& r : ring)
            if (!held(r)) return false;
        if (version < 2) b.base = ring.empty() ? b.seq : ring.front().seq() - 1;  // consecutive up to seq
        const size_t keep = std::min<size_t>(ring.size(), depth_);  // a smaller depth now: the newest
        if (keep < ring.size()) b.base = ring[ring.size() - keep - 1].seq();
        b.ring.assign(ring.end() - static_cast<std::ptrdiff_t>(keep), ring.end());
        uint64_t nended = 0;
        if (!in.count(nended, 12)) return false;
        for (uint64_t j = 0; j < nended; ++j) {
            const uint64_t order = in.get(8);
            if (!in.count(n, 8)) return false;
            auto& recs = b.ended[order];
            recs.resize(n);
            for (Held& r : recs)
                if (!held(r)) return false;
        }
    }
    uint64_t norders = 0;
    if (!in.count(norders, 12)) return false;
    for (uint64_t i = 0; i < norders; ++i) {
        auto& [order, keys] = orders.emplace_back();
        order = in.get(8);
        uint64_t n = 0;
        if (!in.count(n, 2)) return false;
        keys.resize(n);
        for (Key& k : keys)
            if (!in.key(k) || fresh.find(k.first, key_of(k.second)) == IdTable::kNone)
                return false;  // a recipient the bytes do not hold: corrupt
    }
    if (version >= 3) {
        fresh.stamped_ = in.get(8);
        uint64_t n = 0;
        if (!in.count(n, 26)) return false;
        for (uint64_t i = 0; i < n; ++i) {
            Undated u{};
            u.n = in.get(8);
            Key k;
            if (!in.key(k)) return false;
            u.box = fresh.find(k.first, key_of(k.second));
            if (u.box == IdTable::kNone) return false;
            u.seq = in.get(8);
            u.order = in.get(8);
            u.slot = kNoSlot;
            const Box& b = fresh.boxes_[u.box];
            for (uint32_t j = 0; j < b.ring.size(); ++j)
                if (b.ring[j].seq() == u.seq) u.slot = j;
            fresh.undated_.push_back(u);
        }
    }
    if (!in.ok) return false;
    for (auto& [order, keys] : orders) {
        auto& who = fresh.recipients_of_[order];
        for (const Key& k : keys) {
            const uint32_t i = fresh.find(k.first, key_of(k.second));
            who.push_back(i);
            ++fresh.boxes_[i].orders;
        }
    }
    floor_ = fresh.floor_;
    stamped_ = fresh.stamped_;
    undated_ = std::move(fresh.undated_);
    boxes_ = std::move(fresh.boxes_);
    index_ = std::move(fresh.index_);
    recipients_of_ = std::move(fresh.recipients_of_);
    p = in.p;
    return true;
}

}  // namespace dgdo
