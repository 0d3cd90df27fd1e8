// dgdo::Deliveries — the delivery state of reliable messages, per recipient.
//
// A reliable record (ORDER_UPDATE, NEW_ORDER, CANCEL_ORDER) is numbered with
// its recipient's next seq (+1 per (role, id), from 1) and a copy is kept, so
// that an app reconnecting with `last_seq` gets what it missed, in order, from
// whichever sidecar worker it lands on. Kept per recipient:
//
//   seq      the counter: the latest number handed out, or above it after a
//            recovery (jump()). Never dropped: a recipient's numbering only
//            ever grows, so a last_seq from before is never mistaken for a point
//            in a new numbering.
//   history  the last `depth` records (Config::history_depth), oldest first:
//            every seq handed out after `base`, in order. Seqs are consecutive
//            except across a jump, which leaves a gap of seqs never handed out.
//   base     the latest seq handed out before the history's oldest record (0 =
//            none). The seqs an app can hold that a resume continues from are
//            base and the history's: any other last_seq within reach is one
//            the engine never handed out (a jump's gap: a lost journal tail
//            numbered it for a message that no longer exists), not resumed.
//   commit   each kept record carries, in its meta's commit_real_ns, the wall-clock time the
//            engine first published it (dated()): a replay or a snapshot resending it says when
//            the change happened, as it did live. The core reads no clock, so that time comes
//            back to it as a journaled input (Committed), applied in order like any other.
//   ended    per order, the last word this recipient got about it: the terminal
//            ORDER_UPDATE, or the CANCEL_ORDER that ended a driver's part. A
//            resume that cannot replay sends these again (fresh seqs) with the
//            current state, so an order that ended while the app was away is
//            never silently lost.
//
// Memory bound. The core tells forget_order() when it forgets an order (its
// finished-order retention is over). Ended records go with it, and a recipient
// that no order still held by the core has sent a reliable record to (none
// live, none finished within retention_s) loses its history but keeps its
// counter. So at any time: history <= depth records for each recipient with a
// live order or one finished within retention_s; ended records <= a few per
// retained order; counters: one box (about 150 bytes, its history freed) per
// recipient ever seen.
//
// Pure state: no clock, no I/O. The hash tables are never iterated in an order
// that reaches an output; save() writes recipients and orders sorted. So the
// state, and its bytes, are a function of the core's input sequence.
//
// Cost: stamping is on the offer path. A recipient is found as a driver is
// (IdTable over fixed-width keys: no string, no allocation), boxes live in a
// dense deque (never erased: counters are kept), and records in fixed slots.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/id_table.hpp"
#include "core/out_record.hpp"
#include "dgdo/events.h"

namespace dgdo {

class Deliveries {
public:
    using Key = std::pair<uint8_t, std::string>;  // (enum dgdo_role, id)

    explicit Deliveries(uint32_t depth = 256) : depth_(depth) {}

    // ORDER_UPDATE, NEW_ORDER and CANCEL_ORDER: numbered and kept.
    static bool reliable(int32_t type);

    // Numbers `rec` (a reliable record; recipient and order read from its body) with
    // its recipient's next seq, writes the seq into it and keeps a copy. Returns the seq.
    uint64_t stamp(OutRecord& rec);
    // `rec`, already stamped, is the last word to its recipient about its order:
    // kept for snapshots until forget_order().
    void keep_final(const OutRecord& rec);
    // `rec` is a final record sent again (a snapshot) under a new seq, numbered `was` before:
    // the kept copy takes the new number, so that the next snapshot weighs the app's last_seq
    // against the number it was last sent under (an app that lost the resend gets it again).
    void resent_final(const OutRecord& rec, uint64_t was);

    // Records stamped so far (a running count): the loop names with it which ones a publish carried.
    uint64_t stamped() const { return stamped_; }
    // The records stamped up to count `upto` went out at wall-clock `real_ns`: their kept copies
    // carry that time from now on (those that carry one already keep it).
    void dated(uint64_t real_ns, uint64_t upto);
    // When the change the latest kept record to `k` about `order` reports was first published:
    // 0 when none is held or it has not been dated yet.
    uint64_t changed_at(const Key& k, uint64_t order) const;
    // `rec`, just stamped, reports a change published at `real_ns` (a snapshot's current state):
    // it and its kept copy carry that time.
    void date_as(OutRecord& rec, uint64_t real_ns);

    // The counter of `k`: the latest seq handed out to it, or above that after a jump; the
    // next one is latest() + 1 (0 = none yet and no jump).
    uint64_t latest(const Key& k) const;
    // The app counts beyond what this engine handed out (its state was lost): number
    // on above `seq`, so the app's numbering stays increasing. The history is dropped:
    // nothing can be replayed across the jump.
    void raise(const Key& k, uint64_t seq);
    // The engine recovered from its state directory, whose unsynced tail may have been lost
    // with seqs it had handed out: every counter, and the one a new recipient starts from,
    // moves `gap` up, so that no seq is handed out twice. Histories stay (their seqs were
    // handed out): a resume from one of them replays across the gap.
    void jump(uint64_t gap);
    // Copies of the records to `k` after `last_seq`, oldest first, appended to `out`; false
    // (and `out` untouched) when some are no longer held, or last_seq is not a seq the engine
    // handed out to `k` (ahead of the counter, or in a jump's gap: see base). 0 (nothing
    // processed) is always one.
    bool since(const Key& k, uint64_t last_seq, std::vector<OutRecord>& out) const;
    // The latest seq actually handed out to `k` (below latest() after a jump): where a
    // replay from since() ends.
    uint64_t issued(const Key& k) const;
    // Copies of the final records to `k` whose seq is above `after`, in seq order.
    void ended_since(const Key& k, uint64_t after, std::vector<OutRecord>& out) const;
    // The core forgot `order`: drop its final records; recipients no held order refers
    // to any more lose their history (not their counter).
    void forget_order(uint64_t order);

    // Read-only views (tests, gauges).
    uint32_t depth() const { return depth_; }
    std::size_t recipients() const { return boxes_.size(); }
    std::size_t held(const Key& k) const;  // history records kept for k
    std::size_t held_total() const;
    std::size_t ended_total() const;
    bool operator==(const Deliveries& o) const;  // (without the dating still to come: see delivery.cpp)

    // The whole state, little-endian and versioned, recipients in key order: the same
    // state always gives the same bytes. Appends to `out`.
    void save(std::string& out) const;
    // Replaces the state with one save() wrote, advancing `p`; false (state unchanged)
    // on malformed or truncated input. A history longer than this depth keeps its newest.
    bool load(const uint8_t*& p, const uint8_t* end);

private:
    // A kept record: the largest reliable record fits its fixed slot.
    struct Held {
        int32_t type = 0;
        uint32_t len = 0;
        std::array<uint8_t, sizeof(dgdo_out_new_order)> bytes{};
        static Held of(const OutRecord& r);
        OutRecord record() const;
        uint64_t seq() const;
        bool operator==(const Held& o) const;
    };
    struct Box {
        uint8_t role = 0;
        IdKey id;                 // the recipient's id bytes (ids are at most 36 chars: all in id.w)
        uint64_t seq = 0;         // the counter: latest handed out, or above it after a jump
        uint64_t base = 0;        // latest handed out before ring's oldest (see the file comment)
        uint32_t orders = 0;      // orders in recipients_of_ that name this box
        uint32_t head = 0;        // oldest record in ring once it is full
        std::vector<Held> ring;   // history; grows to depth_, then wraps
        std::map<uint64_t, std::vector<Held>> ended;  // order -> final records, seq order
        Key key() const;
        bool operator==(const Box& o) const;
        template <class F>
        void each(F&& f) const {  // history, oldest first
            for (std::size_t i = 0; i < ring.size(); ++i) f(ring[(head + i) % ring.size()]);
        }
    };
    static uint64_t hash(uint8_t role, const IdKey& id) { return IdKey::mix(id.hash() ^ role); }
    uint32_t find(uint8_t role, const IdKey& id) const;  // index into boxes_, or IdTable::kNone
    const Box* find(const Key& k) const;
    uint32_t box(uint8_t role, const IdKey& id);  // found or made: its index
    static constexpr uint32_t kNoSlot = UINT32_MAX;
    uint32_t push(Box& b, const Held& rec);  // its slot in b.ring (kNoSlot: no history kept)

    struct Undated {  // a stamped record whose kept copies wait for dated()
        uint64_t n;       // its stamped_ count
        uint32_t box;
        uint64_t seq;
        uint64_t order;   // its order: where its final copy, if any, is kept (Box::ended)
        uint32_t slot;    // where its history copy was put (Box::ring), unless overwritten since
    };

    uint32_t depth_;
    uint64_t stamped_ = 0;
    std::deque<Undated> undated_;  // stamp order
    uint64_t floor_ = 0;     // the counter a recipient first seen now starts at: the jumps so far
    std::deque<Box> boxes_;  // dense, never erased
    IdTable index_;          // (role, id) -> index into boxes_
    std::unordered_map<uint64_t, std::vector<uint32_t>> recipients_of_;  // order -> boxes that got records about it
};

// The seq field of a reliable record's body (0 if it is not one or too short).
uint64_t seq_of(const OutRecord& rec);

}  // namespace dgdo
