/*
 * dgdo/ring.h — single-producer single-consumer byte ring in shared memory.
 *
 * One ring per direction per sidecar worker: the engine produces on the
 * "out" ring and consumes the "in" ring; a sidecar worker does the reverse.
 * C11 (cffi, the sidecar) and C++20 (the engine) both compile this file as
 * it is: it is the single source of truth for every byte of the segment.
 *
 * Segment = header page (DGDO_RING_HEADER_SIZE bytes) + data area
 * (capacity bytes, a power of two). Each header field that one side writes
 * often sits on its own line, 128 bytes from the next, so that adjacent-line
 * prefetch never makes the two sides share a pair of cache lines.
 *
 *   offset  line          field                      written by
 *   ------  ------------  -------------------------  -------------------------
 *        0  META          magic "DGDORNG1" (u64)     creator, once
 *        8                version (u32)              creator, once
 *       12                header_size (u32)          creator, once
 *       16                capacity (u64)             creator, once
 *       24                epoch (u64)                creator, once
 *       32                producer_pid (i32)         producer, at attach
 *       36                consumer_pid (i32)         consumer, at attach
 *       40                max_record (u32)           creator, once
 *       44                (zero)
 *      128  TAIL          tail position (u64)        producer (release)
 *      256  HEAD          head position (u64)        consumer (release)
 *      384  PARKED        parked flag (u32)          consumer sets, producer clears
 *      512  PRODUCER_HB   producer heartbeat ns      producer (relaxed), CLOCK_MONOTONIC
 *      640  CONSUMER_HB   consumer heartbeat ns      consumer (relaxed), CLOCK_MONOTONIC
 *      768  (zero up to the end of the 4096-byte page)
 *     4096  DATA          records                    producer, zeroed by consumer
 *
 * A record, 8-byte aligned, never straddling the end of the data area:
 *
 *    0                   1                   2                   3
 *    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *   |R|                  length (incl. this header)                 |
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *   |                             type                              |
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *   |                       body (length - 8 bytes)                ...
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * A positive length means the record is complete: the producer writes body
 * and type first and the length last, with release order (the commit). The
 * consumer acquire-loads the length and stops at a length <= 0, so it never
 * needs the producer's tail. It zeroes what it consumed before it releases
 * head, so a slot the producer reuses always reads as "not yet committed".
 * Head is released once per batch, so a consumer killed mid-batch leaves
 * consumed-but-unreleased records behind head's successor. To let the
 * producer tell them from committed ones after such a death, a record is
 * retired in three steps (dgdo_ring_retire): length := -(aligned size),
 * zero the rest, length := 0. At any instant a retired or retiring record
 * therefore reads as "length < 0: skip -length bytes" or "length 0: skip 8",
 * never as a committed record with a half-zeroed body (see the sidecar's
 * dgdo_py_unconsumed).
 * When a record does not fit before the end, the producer first writes a
 * padding record (type DGDO_RING_PADDING) that fills the space to the end.
 *
 * Positions (head, tail) are byte counts that only grow; index = position &
 * (capacity - 1). Each side keeps the other's position in a private cache
 * (dgdo_ring_producer.head_cache): the producer re-reads the shared head
 * only when its cached copy says the ring is full, so in the steady state
 * the head line stays in the consumer's cache, exclusive, and the producer
 * touches it once per lap instead of once per record. The consumer has no
 * cache to keep: the length field of the next record is its cursor.
 *
 * Wake-up: a consumer with nothing to read sets PARKED, then checks once
 * more, then sleeps on its doorbell (an eventfd). A producer, after a
 * commit, fences and checks PARKED; only when it finds it set (and wins the
 * exchange back to 0) does it ring the doorbell. The two seq_cst fences make
 * this a Dekker handshake: at least one side sees the other's store, so a
 * wake-up is never lost and an awake consumer costs the producer no syscall.
 */
#ifndef DGDO_RING_H
#define DGDO_RING_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
#include <atomic>
#define DGDO_ATOMIC(T) std::atomic<T>
#define DGDO_LOAD(p, mo) std::atomic_load_explicit((p), std::memory_order_##mo)
#define DGDO_STORE(p, v, mo) std::atomic_store_explicit((p), (v), std::memory_order_##mo)
#define DGDO_XCHG(p, v, mo) std::atomic_exchange_explicit((p), (v), std::memory_order_##mo)
#define DGDO_FENCE() std::atomic_thread_fence(std::memory_order_seq_cst)
#define DGDO_COMPILER_FENCE() std::atomic_signal_fence(std::memory_order_seq_cst)
#define DGDO_STATIC_ASSERT static_assert
extern "C" {
#else
#include <stdatomic.h>
#define DGDO_ATOMIC(T) _Atomic(T)
#define DGDO_LOAD(p, mo) atomic_load_explicit((p), memory_order_##mo)
#define DGDO_STORE(p, v, mo) atomic_store_explicit((p), (v), memory_order_##mo)
#define DGDO_XCHG(p, v, mo) atomic_exchange_explicit((p), (v), memory_order_##mo)
#define DGDO_FENCE() atomic_thread_fence(memory_order_seq_cst)
#define DGDO_COMPILER_FENCE() atomic_signal_fence(memory_order_seq_cst)
#define DGDO_STATIC_ASSERT _Static_assert
#endif

/* ---- layout ------------------------------------------------------------ */

#define DGDO_RING_MAGIC 0x31474E524F444744ULL /* "DGDORNG1" little-endian */
#define DGDO_RING_VERSION 1u
#define DGDO_RING_LINE 128u /* two 64-byte lines: defeats adjacent-line prefetch */
#define DGDO_RING_HEADER_SIZE 4096u

#define DGDO_RING_META_OFFSET 0u
#define DGDO_RING_TAIL_OFFSET (DGDO_RING_META_OFFSET + DGDO_RING_LINE)
#define DGDO_RING_HEAD_OFFSET (DGDO_RING_TAIL_OFFSET + DGDO_RING_LINE)
#define DGDO_RING_PARKED_OFFSET (DGDO_RING_HEAD_OFFSET + DGDO_RING_LINE)
#define DGDO_RING_PRODUCER_HB_OFFSET (DGDO_RING_PARKED_OFFSET + DGDO_RING_LINE)
#define DGDO_RING_CONSUMER_HB_OFFSET (DGDO_RING_PRODUCER_HB_OFFSET + DGDO_RING_LINE)
#define DGDO_RING_HEADER_USED (DGDO_RING_CONSUMER_HB_OFFSET + DGDO_RING_LINE)

/* Record framing. */
#define DGDO_RECORD_HEADER 8u
#define DGDO_RECORD_ALIGN 8u
#define DGDO_RECORD_LENGTH_OFFSET 0u
#define DGDO_RECORD_TYPE_OFFSET 4u
#define DGDO_RECORD_BODY_OFFSET DGDO_RECORD_HEADER
#define DGDO_RING_PADDING (-1) /* record type that fills the space up to the wrap */

/* Smallest and largest data areas a segment may declare. */
#define DGDO_RING_MIN_CAPACITY 256u
#define DGDO_RING_MAX_CAPACITY (1ULL << 30)

/* Outcomes. Zero is success; the rest are negative and named. */
enum dgdo_ring_status {
    DGDO_RING_OK = 0,
    DGDO_RING_FULL = -1,         /* not enough free space now; retry after the consumer moves */
    DGDO_RING_TOO_LARGE = -2,    /* record longer than max_record: never fits */
    DGDO_RING_BAD_MAGIC = -3,    /* not a dgdo ring segment */
    DGDO_RING_BAD_VERSION = -4,  /* a segment of another layout version */
    DGDO_RING_BAD_CAPACITY = -5, /* capacity not a power of two, or out of range */
    DGDO_RING_BAD_SIZE = -6,     /* mapping smaller than header + capacity */
    DGDO_RING_BAD_EPOCH = -7     /* a live-looking segment of another engine run (stale) */
};

typedef struct dgdo_ring_header {
    /* META */
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint64_t capacity;
    uint64_t epoch;
    int32_t producer_pid;
    int32_t consumer_pid;
    uint32_t max_record;
    uint8_t meta_pad_[DGDO_RING_LINE - 44];
    /* TAIL */
    DGDO_ATOMIC(uint64_t) tail;
    uint8_t tail_pad_[DGDO_RING_LINE - 8];
    /* HEAD */
    DGDO_ATOMIC(uint64_t) head;
    uint8_t head_pad_[DGDO_RING_LINE - 8];
    /* PARKED */
    DGDO_ATOMIC(uint32_t) parked;
    uint8_t parked_pad_[DGDO_RING_LINE - 4];
    /* PRODUCER_HB */
    DGDO_ATOMIC(uint64_t) producer_heartbeat_ns;
    uint8_t producer_hb_pad_[DGDO_RING_LINE - 8];
    /* CONSUMER_HB */
    DGDO_ATOMIC(uint64_t) consumer_heartbeat_ns;
    uint8_t consumer_hb_pad_[DGDO_RING_LINE - 8];
    uint8_t reserved_[DGDO_RING_HEADER_SIZE - DGDO_RING_HEADER_USED];
} dgdo_ring_header;

DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, magic) == DGDO_RING_META_OFFSET, "magic");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, version) == 8, "version");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, header_size) == 12, "header_size");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, capacity) == 16, "capacity");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, epoch) == 24, "epoch");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, producer_pid) == 32, "producer_pid");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, consumer_pid) == 36, "consumer_pid");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, max_record) == 40, "max_record");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, tail) == DGDO_RING_TAIL_OFFSET, "tail line");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, head) == DGDO_RING_HEAD_OFFSET, "head line");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, parked) == DGDO_RING_PARKED_OFFSET, "parked line");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, producer_heartbeat_ns) == DGDO_RING_PRODUCER_HB_OFFSET,
                   "producer heartbeat line");
DGDO_STATIC_ASSERT(offsetof(dgdo_ring_header, consumer_heartbeat_ns) == DGDO_RING_CONSUMER_HB_OFFSET,
                   "consumer heartbeat line");
DGDO_STATIC_ASSERT(sizeof(dgdo_ring_header) == DGDO_RING_HEADER_SIZE, "header is one page");
DGDO_STATIC_ASSERT(sizeof(DGDO_ATOMIC(uint64_t)) == 8, "lock-free 64-bit positions");
DGDO_STATIC_ASSERT(sizeof(DGDO_ATOMIC(int32_t)) == 4, "lock-free 32-bit lengths");

/* Process-local handles: each side's private view of one segment. */
typedef struct dgdo_ring_producer {
    dgdo_ring_header *hdr;
    uint8_t *data;
    uint64_t mask;
    uint64_t tail;       /* own position: only this side writes it */
    uint64_t head_cache; /* last head seen; refreshed only when it says "full" */
} dgdo_ring_producer;

typedef struct dgdo_ring_consumer {
    dgdo_ring_header *hdr;
    uint8_t *data;
    uint64_t mask;
    uint64_t head; /* own position: only this side writes it */
} dgdo_ring_consumer;

/* ---- helpers ------------------------------------------------------------ */

static inline uint32_t dgdo_record_aligned(uint32_t length) {
    return (length + (DGDO_RECORD_ALIGN - 1u)) & ~(DGDO_RECORD_ALIGN - 1u);
}

static inline size_t dgdo_ring_segment_size(uint64_t capacity) {
    return (size_t)(DGDO_RING_HEADER_SIZE + capacity);
}

static inline DGDO_ATOMIC(int32_t) *dgdo_record_length_at(uint8_t *data, uint64_t index) {
    return (DGDO_ATOMIC(int32_t) *)(void *)(data + index + DGDO_RECORD_LENGTH_OFFSET);
}

static inline int dgdo_ring_capacity_ok(uint64_t capacity) {
    return capacity >= DGDO_RING_MIN_CAPACITY && capacity <= DGDO_RING_MAX_CAPACITY &&
           (capacity & (capacity - 1u)) == 0;
}

/*
 * Formats a segment of dgdo_ring_segment_size(capacity) bytes. The data area must be
 * zero-filled (a fresh ftruncate'd shm object is): a zero length reads as "not committed".
 */
static inline int dgdo_ring_format(void *segment, uint64_t capacity, uint64_t epoch) {
    if (!dgdo_ring_capacity_ok(capacity)) return DGDO_RING_BAD_CAPACITY;
    dgdo_ring_header *h = (dgdo_ring_header *)segment;
    h->version = DGDO_RING_VERSION;
    h->header_size = DGDO_RING_HEADER_SIZE;
    h->capacity = capacity;
    h->epoch = epoch;
    h->producer_pid = 0;
    h->consumer_pid = 0;
    h->max_record = (uint32_t)(capacity / 8u); /* Agrona's limit: a record never hogs the ring */
    DGDO_STORE(&h->tail, 0, relaxed);
    DGDO_STORE(&h->head, 0, relaxed);
    DGDO_STORE(&h->parked, 0, relaxed);
    DGDO_FENCE(); /* magic last: a reader that sees it sees a formatted header */
    h->magic = DGDO_RING_MAGIC;
    return DGDO_RING_OK;
}

/* Validates a mapped segment; epoch 0 accepts any epoch. */
static inline int dgdo_ring_check(const void *segment, size_t mapped, uint64_t epoch) {
    const dgdo_ring_header *h = (const dgdo_ring_header *)segment;
    if (mapped < DGDO_RING_HEADER_SIZE || h->magic != DGDO_RING_MAGIC) return DGDO_RING_BAD_MAGIC;
    if (h->version != DGDO_RING_VERSION || h->header_size != DGDO_RING_HEADER_SIZE)
        return DGDO_RING_BAD_VERSION;
    if (!dgdo_ring_capacity_ok(h->capacity)) return DGDO_RING_BAD_CAPACITY;
    if (mapped < dgdo_ring_segment_size(h->capacity)) return DGDO_RING_BAD_SIZE;
    if (epoch != 0 && h->epoch != epoch) return DGDO_RING_BAD_EPOCH;
    return DGDO_RING_OK;
}

static inline void dgdo_ring_producer_init(dgdo_ring_producer *p, void *segment, int32_t pid) {
    p->hdr = (dgdo_ring_header *)segment;
    p->data = (uint8_t *)segment + DGDO_RING_HEADER_SIZE;
    p->mask = p->hdr->capacity - 1u;
    p->tail = DGDO_LOAD(&p->hdr->tail, relaxed); /* resumes where a previous producer stopped */
    p->head_cache = DGDO_LOAD(&p->hdr->head, acquire); /* pairs with the consumer's head release */
    p->hdr->producer_pid = pid;
}

static inline void dgdo_ring_consumer_init(dgdo_ring_consumer *c, void *segment, int32_t pid) {
    c->hdr = (dgdo_ring_header *)segment;
    c->data = (uint8_t *)segment + DGDO_RING_HEADER_SIZE;
    c->mask = c->hdr->capacity - 1u;
    c->head = DGDO_LOAD(&c->hdr->head, relaxed);
    c->hdr->consumer_pid = pid;
}

/* ---- producer ----------------------------------------------------------- */

/*
 * Writes one record. Returns DGDO_RING_OK, DGDO_RING_FULL (nothing written;
 * retry later) or DGDO_RING_TOO_LARGE. After a batch of writes, call
 * dgdo_ring_producer_should_wake() once and ring the doorbell if it says so.
 */
static inline int dgdo_ring_write(dgdo_ring_producer *p, int32_t type, const void *body, uint32_t body_len) {
    const uint64_t capacity = p->mask + 1u;
    if (body_len > p->hdr->max_record - DGDO_RECORD_HEADER) return DGDO_RING_TOO_LARGE;
    const uint32_t length = body_len + DGDO_RECORD_HEADER;
    const uint32_t required = dgdo_record_aligned(length);
    uint64_t tail = p->tail;
    uint64_t index = tail & p->mask;
    const uint64_t to_end = capacity - index;
    const uint64_t needed = required <= to_end ? required : required + to_end;
    if (tail + needed - p->head_cache > capacity) {
        p->head_cache = DGDO_LOAD(&p->hdr->head, acquire); /* pairs with consumer's head release */
        if (tail + needed - p->head_cache > capacity) return DGDO_RING_FULL;
    }
    if (required > to_end) {
        /* Padding record up to the end; its body was zeroed by the consumer. */
        *(int32_t *)(void *)(p->data + index + DGDO_RECORD_TYPE_OFFSET) = DGDO_RING_PADDING;
        DGDO_STORE(dgdo_record_length_at(p->data, index), (int32_t)to_end, release); /* pairs with consumer's length acquire */
        tail += to_end;
        index = 0;
    }
    if (body_len) memcpy(p->data + index + DGDO_RECORD_BODY_OFFSET, body, body_len);
    *(int32_t *)(void *)(p->data + index + DGDO_RECORD_TYPE_OFFSET) = type;
    DGDO_STORE(dgdo_record_length_at(p->data, index), (int32_t)length, release); /* the commit; pairs with consumer's length acquire */
    p->tail = tail + required;
    DGDO_STORE(&p->hdr->tail, p->tail, release); /* for depth gauges only; the consumer never needs it */
    return DGDO_RING_OK;
}

/*
 * After committing, true when the consumer is parked and this call claimed
 * the wake-up: the caller then writes 1 to the consumer's doorbell eventfd.
 */
static inline int dgdo_ring_producer_should_wake(dgdo_ring_producer *p) {
    DGDO_FENCE(); /* pairs with the fence in dgdo_ring_park(): orders our commit before reading PARKED */
    if (DGDO_LOAD(&p->hdr->parked, relaxed) == 0) return 0;
    return DGDO_XCHG(&p->hdr->parked, 0u, acq_rel) != 0; /* one doorbell per park */
}

/* Bytes the consumer has not yet released (for gauges). */
static inline uint64_t dgdo_ring_depth(const dgdo_ring_header *h) {
    return DGDO_LOAD(&((dgdo_ring_header *)h)->tail, acquire) - DGDO_LOAD(&((dgdo_ring_header *)h)->head, acquire);
}

/* ---- consumer ----------------------------------------------------------- */

/*
 * Zeroes a consumed record (or padding) of `aligned` bytes at `index` so
 * that the slot reads as uncommitted, in an order that stays unambiguous if
 * this process is killed half-way: first the negated length (a "consumed,
 * skip me" marker that still says how far to skip), then the type and body,
 * then the length. The compiler fences keep that program order (a SIGKILL
 * leaves exactly a program-order prefix of our stores); the head release
 * that follows publishes the zeroes to the producer.
 */
static inline void dgdo_ring_retire(uint8_t *data, uint64_t index, uint32_t aligned) {
    DGDO_ATOMIC(int32_t) *len = dgdo_record_length_at(data, index);
    DGDO_STORE(len, -(int32_t)aligned, relaxed);
    DGDO_COMPILER_FENCE();
    memset(data + index + DGDO_RECORD_TYPE_OFFSET, 0, aligned - DGDO_RECORD_TYPE_OFFSET);
    DGDO_COMPILER_FENCE();
    DGDO_STORE(len, 0, relaxed);
}

typedef void (*dgdo_ring_handler)(void *ctx, int32_t type, const uint8_t *body, uint32_t body_len);

/*
 * Two-phase read, for a consumer that must make a record durable before the
 * producer may forget it (the engine journals a batch, then releases it).
 *
 * dgdo_ring_peek hands up to `limit` committed records to `handler` without
 * consuming them and returns how many; *end is the position just past the
 * last one (padding included). Bodies stay valid until dgdo_ring_release.
 * Peeking again without a release sees the same records. A peek never reads
 * more than one lap: with nothing retired yet, the slot one capacity past
 * head is the first record peeked, not a new one.
 *
 * dgdo_ring_release retires every record from head up to `end` (a position a
 * peek returned) and releases head once. Until then a dead consumer's records
 * are still committed, so the producer's salvage carries them over.
 */
static inline uint32_t dgdo_ring_peek(const dgdo_ring_consumer *c, dgdo_ring_handler handler, void *ctx,
                                      uint32_t limit, uint64_t *end) {
    uint64_t head = c->head;
    uint32_t count = 0;
    while (count < limit && head - c->head <= c->mask) { /* at most one lap (capacity = mask + 1) */
        const uint64_t index = head & c->mask;
        const int32_t length = DGDO_LOAD(dgdo_record_length_at(c->data, index), acquire); /* pairs with producer's commit */
        if (length <= 0) break;
        const int32_t type = *(const int32_t *)(const void *)(c->data + index + DGDO_RECORD_TYPE_OFFSET);
        if (type != DGDO_RING_PADDING) {
            handler(ctx, type, c->data + index + DGDO_RECORD_BODY_OFFSET, (uint32_t)length - DGDO_RECORD_HEADER);
            ++count;
        }
        head += dgdo_record_aligned((uint32_t)length);
    }
    *end = head;
    return count;
}

static inline void dgdo_ring_release(dgdo_ring_consumer *c, uint64_t end) {
    uint64_t head = c->head;
    while (head < end) {
        const uint64_t index = head & c->mask;
        const int32_t length = DGDO_LOAD(dgdo_record_length_at(c->data, index), relaxed); /* peeked: already acquired */
        const int32_t type = *(const int32_t *)(const void *)(c->data + index + DGDO_RECORD_TYPE_OFFSET);
        const uint32_t aligned = dgdo_record_aligned((uint32_t)length);
        dgdo_ring_retire(c->data, index, type == DGDO_RING_PADDING ? DGDO_RECORD_HEADER : aligned);
        head += aligned;
    }
    if (head != c->head) {
        c->head = head;
        DGDO_STORE(&c->hdr->head, head, release); /* pairs with producer's head acquire; publishes the zeroing */
    }
}

/*
 * Hands up to `limit` committed records to `handler`, then releases them all
 * (peek + release). Returns the number of records handled.
 */
static inline uint32_t dgdo_ring_read(dgdo_ring_consumer *c, dgdo_ring_handler handler, void *ctx, uint32_t limit) {
    uint64_t end = 0;
    const uint32_t count = dgdo_ring_peek(c, handler, ctx, limit, &end);
    dgdo_ring_release(c, end);
    return count;
}

/*
 * Copies up to `limit` records, each as {int32 length, int32 type, body}
 * padded to 8 bytes, into `out`, stopping before a record that would not fit
 * in `out_cap`. Returns the bytes written. One call drains a batch: the
 * Python side makes one cffi call per wake-up, not one per record.
 */
static inline size_t dgdo_ring_drain_copy(dgdo_ring_consumer *c, uint8_t *out, size_t out_cap, uint32_t limit) {
    uint64_t head = c->head;
    size_t used = 0;
    uint32_t count = 0;
    while (count < limit) {
        const uint64_t index = head & c->mask;
        const int32_t length = DGDO_LOAD(dgdo_record_length_at(c->data, index), acquire); /* pairs with producer's commit */
        if (length <= 0) break;
        const int32_t type = *(const int32_t *)(const void *)(c->data + index + DGDO_RECORD_TYPE_OFFSET);
        const uint32_t aligned = dgdo_record_aligned((uint32_t)length);
        if (type != DGDO_RING_PADDING) {
            if (used + aligned > out_cap) break;
            memcpy(out + used, c->data + index, (size_t)length);
            if (aligned > (uint32_t)length) memset(out + used + length, 0, aligned - (uint32_t)length);
            used += aligned;
            ++count;
            dgdo_ring_retire(c->data, index, aligned);
        } else {
            dgdo_ring_retire(c->data, index, DGDO_RECORD_HEADER);
        }
        head += aligned;
    }
    if (head != c->head) {
        c->head = head;
        DGDO_STORE(&c->hdr->head, head, release); /* pairs with producer's head acquire */
    }
    return used;
}

/* True when a committed record waits at head. */
static inline int dgdo_ring_pending(dgdo_ring_consumer *c) {
    return DGDO_LOAD(dgdo_record_length_at(c->data, c->head & c->mask), acquire) > 0; /* pairs with producer's commit */
}

/*
 * Announces that the consumer is about to sleep on its doorbell. Returns 1
 * when it may sleep, 0 when a record arrived meanwhile (PARKED is cleared
 * again and the caller should read instead of sleeping).
 */
static inline int dgdo_ring_park(dgdo_ring_consumer *c) {
    DGDO_STORE(&c->hdr->parked, 1u, relaxed);
    DGDO_FENCE(); /* pairs with the fence in dgdo_ring_producer_should_wake() */
    if (dgdo_ring_pending(c)) {
        DGDO_STORE(&c->hdr->parked, 0u, relaxed);
        return 0;
    }
    return 1;
}

/* Clears PARKED after a wake-up (the producer may already have). */
static inline void dgdo_ring_unpark(dgdo_ring_consumer *c) {
    DGDO_STORE(&c->hdr->parked, 0u, relaxed);
}

static inline void dgdo_ring_producer_heartbeat(dgdo_ring_producer *p, uint64_t now_ns) {
    DGDO_STORE(&p->hdr->producer_heartbeat_ns, now_ns, relaxed);
}

static inline void dgdo_ring_consumer_heartbeat(dgdo_ring_consumer *c, uint64_t now_ns) {
    DGDO_STORE(&c->hdr->consumer_heartbeat_ns, now_ns, relaxed);
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DGDO_RING_H */
