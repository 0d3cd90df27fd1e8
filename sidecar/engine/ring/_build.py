"""cffi API-mode build of the ring: compiles include/dgdo/*.h as they are.

The functions exposed here move whole batches, so Python pays one cffi call
per wake-up (drain) or per event-loop turn (publish), never one per field.
"""

from pathlib import Path

from cffi import FFI

INCLUDE = Path(__file__).resolve().parents[3] / "include"

CDEF = """
typedef struct { ...; } dgdo_ring_header;
typedef struct { ...; } dgdo_ring_producer;
typedef struct { ...; } dgdo_ring_consumer;

#define DGDO_RING_HEADER_SIZE ...
#define DGDO_RING_TAIL_OFFSET ...
#define DGDO_RING_HEAD_OFFSET ...
#define DGDO_RING_PARKED_OFFSET ...
#define DGDO_RING_PRODUCER_HB_OFFSET ...
#define DGDO_RING_CONSUMER_HB_OFFSET ...
#define DGDO_RECORD_HEADER ...
#define DGDO_RECORD_ALIGN ...
#define DGDO_RING_PADDING ...
#define DGDO_RING_MIN_CAPACITY ...
#define DGDO_CTL_MAGIC ...
#define DGDO_CTL_VERSION ...
#define DGDO_CTL_HEARTBEAT_MS ...
#define DGDO_CTL_FD_ENGINE_BELL ...
#define DGDO_CTL_FD_WORKER_BELL ...
#define DGDO_CTL_FD_IN_RING ...
#define DGDO_CTL_FD_OUT_RING ...
#define DGDO_CTL_NFDS ...
#define DGDO_LATENCY_BUCKETS ...

enum dgdo_ring_status {
    DGDO_RING_OK, DGDO_RING_FULL, DGDO_RING_TOO_LARGE, DGDO_RING_BAD_MAGIC,
    DGDO_RING_BAD_VERSION, DGDO_RING_BAD_CAPACITY, DGDO_RING_BAD_SIZE, DGDO_RING_BAD_EPOCH
};

size_t dgdo_ring_segment_size(uint64_t capacity);
int dgdo_ring_format(void *segment, uint64_t capacity, uint64_t epoch);
int dgdo_ring_check(const void *segment, size_t mapped, uint64_t epoch);
void dgdo_ring_producer_init(dgdo_ring_producer *p, void *segment, int32_t pid);
void dgdo_ring_consumer_init(dgdo_ring_consumer *c, void *segment, int32_t pid);
int dgdo_ring_write(dgdo_ring_producer *p, int32_t type, const void *body, uint32_t body_len);
int dgdo_ring_producer_should_wake(dgdo_ring_producer *p);
size_t dgdo_ring_drain_copy(dgdo_ring_consumer *c, uint8_t *out, size_t out_cap, uint32_t limit);
int dgdo_ring_pending(dgdo_ring_consumer *c);
int dgdo_ring_park(dgdo_ring_consumer *c);
void dgdo_ring_unpark(dgdo_ring_consumer *c);
void dgdo_ring_producer_heartbeat(dgdo_ring_producer *p, uint64_t now_ns);
void dgdo_ring_consumer_heartbeat(dgdo_ring_consumer *c, uint64_t now_ns);

uint64_t dgdo_py_depth(dgdo_ring_producer *p);
uint64_t dgdo_py_segment_depth(const void *segment);
uint64_t dgdo_py_epoch(const void *segment);
uint32_t dgdo_py_max_record(const void *segment);
uint64_t dgdo_py_producer_heartbeat(const void *segment);
size_t dgdo_py_publish(dgdo_ring_producer *p, const uint8_t *buf, size_t len, int *status);
size_t dgdo_py_unconsumed(dgdo_ring_producer *p, uint8_t *out, size_t cap);
size_t dgdo_py_sizeof(const char *name);
size_t dgdo_py_offsetof(const char *type_name, const char *field);
uint64_t dgdo_py_latency_bound(int i);
"""

SOURCE = r"""
#include <string.h>
#include "dgdo/ring.h"
#include "dgdo/events.h"
#include "dgdo/control.h"

static uint64_t dgdo_py_depth(dgdo_ring_producer *p) { return dgdo_ring_depth(p->hdr); }
/* Either side's view of a segment's depth: the consumer's gauge of what the engine wrote and it has not taken. */
static uint64_t dgdo_py_segment_depth(const void *segment) {
    return dgdo_ring_depth((const dgdo_ring_header *)segment);
}
static uint64_t dgdo_py_epoch(const void *segment) { return ((const dgdo_ring_header *)segment)->epoch; }
static uint32_t dgdo_py_max_record(const void *segment) {
    return ((const dgdo_ring_header *)segment)->max_record;
}
/* The producer's last beat (CLOCK_MONOTONIC ns; 0 = never): how a worker tells a hung engine. */
static uint64_t dgdo_py_producer_heartbeat(const void *segment) {
    /* pairs with dgdo_ring_producer_heartbeat's relaxed store: a lone value, no ordering needed */
    return DGDO_LOAD(&((dgdo_ring_header *)segment)->producer_heartbeat_ns, relaxed);
}

/*
 * Publishes records framed as the ring frames them ({int32 length incl.
 * header, int32 type, body} padded to 8) from one Python buffer. Stops at
 * the first record that does not fit now; returns the bytes consumed from
 * `buf` and the last dgdo_ring_status in *status.
 */
static size_t dgdo_py_publish(dgdo_ring_producer *p, const uint8_t *buf, size_t len, int *status) {
    size_t off = 0;
    *status = DGDO_RING_OK;
    while (off + DGDO_RECORD_HEADER <= len) {
        int32_t length, type;
        memcpy(&length, buf + off + DGDO_RECORD_LENGTH_OFFSET, 4);
        memcpy(&type, buf + off + DGDO_RECORD_TYPE_OFFSET, 4);
        if (length < (int32_t)DGDO_RECORD_HEADER || off + (size_t)length > len) {
            *status = DGDO_RING_BAD_SIZE;
            break;
        }
        int rc = dgdo_ring_write(p, type, buf + off + DGDO_RECORD_BODY_OFFSET,
                                 (uint32_t)length - DGDO_RECORD_HEADER);
        if (rc != DGDO_RING_OK) { *status = rc; break; }
        off += dgdo_record_aligned((uint32_t)length);
    }
    return off < len ? off : len;
}

/*
 * After the consumer died: copies the records it never consumed (head to
 * our tail, padding skipped) into `out`, framed as dgdo_py_publish takes
 * them, so they can be published again to the next consumer. Returns the
 * bytes copied; stops early when `cap` is too small.
 *
 * The consumer releases head once per batch, so a consumer killed mid-batch
 * leaves records it already took between head and the first one it did not:
 * those read as retired (ring.h, dgdo_ring_retire): length < 0 while being
 * zeroed (skip -length bytes) or length 0 once zeroed (skip the 8-byte
 * header word; a zeroed record is zero throughout). Everything committed
 * after them, up to our own tail, is carried over. A header that cannot be
 * a record (out of bounds) stops the scan rather than copy garbage.
 */
static size_t dgdo_py_unconsumed(dgdo_ring_producer *p, uint8_t *out, size_t cap) {
    uint64_t pos = DGDO_LOAD(&p->hdr->head, acquire); /* pairs with the dead consumer's last release */
    const uint64_t capacity = p->mask + 1u;
    size_t used = 0;
    while (pos < p->tail) {
        const uint64_t index = pos & p->mask;
        const uint64_t room = capacity - index < p->tail - pos ? capacity - index : p->tail - pos;
        const int32_t length = DGDO_LOAD(dgdo_record_length_at(p->data, index), acquire);
        if (length == 0) { /* retired and zeroed by the dead consumer */
            pos += DGDO_RECORD_HEADER;
            continue;
        }
        if (length < 0) { /* the dead consumer was zeroing it: consumed */
            const uint64_t skip = (uint64_t)-(int64_t)length;
            if (skip % DGDO_RECORD_ALIGN || skip > room) break;
            pos += skip;
            continue;
        }
        const uint32_t aligned = dgdo_record_aligned((uint32_t)length);
        if ((uint32_t)length < DGDO_RECORD_HEADER || aligned > room) break;
        const int32_t type = *(const int32_t *)(const void *)(p->data + index + DGDO_RECORD_TYPE_OFFSET);
        if (type != DGDO_RING_PADDING) {
            if (used + aligned > cap) break;
            memcpy(out + used, p->data + index, aligned);
            used += aligned;
        }
        pos += aligned;
    }
    return used;
}

#define DGDO_SIZE(T) if (!strcmp(name, #T)) return sizeof(T);
static size_t dgdo_py_sizeof(const char *name) {
    DGDO_SIZE(dgdo_ring_header) DGDO_SIZE(dgdo_in_meta) DGDO_SIZE(dgdo_out_meta)
    DGDO_SIZE(dgdo_in_session) DGDO_SIZE(dgdo_in_driver_location) DGDO_SIZE(dgdo_in_driver_status)
    DGDO_SIZE(dgdo_in_ride_request) DGDO_SIZE(dgdo_in_order_command) DGDO_SIZE(dgdo_in_nearby)
    DGDO_SIZE(dgdo_out_command_result) DGDO_SIZE(dgdo_out_order_update) DGDO_SIZE(dgdo_out_new_order)
    DGDO_SIZE(dgdo_out_cancel_order) DGDO_SIZE(dgdo_out_driver_position)
    DGDO_SIZE(dgdo_out_estimate_update) DGDO_SIZE(dgdo_out_nearby_drivers)
    DGDO_SIZE(dgdo_nearby_entry) DGDO_SIZE(dgdo_out_engine_stats) DGDO_SIZE(dgdo_out_session)
    DGDO_SIZE(dgdo_out_session_replaced) DGDO_SIZE(dgdo_fleet) DGDO_SIZE(dgdo_fleet_entry)
    DGDO_SIZE(dgdo_ctl_hello) DGDO_SIZE(dgdo_ctl_attach)
    return 0;
}

#define DGDO_OFF(T, F) if (!strcmp(type_name, #T) && !strcmp(field, #F)) return offsetof(T, F);
static size_t dgdo_py_offsetof(const char *type_name, const char *field) {
    DGDO_OFF(dgdo_in_driver_location, pos) DGDO_OFF(dgdo_in_driver_location, heading)
    DGDO_OFF(dgdo_in_ride_request, pickup) DGDO_OFF(dgdo_in_order_command, reason)
    DGDO_OFF(dgdo_in_nearby, subscribe)
    DGDO_OFF(dgdo_out_order_update, driver_id) DGDO_OFF(dgdo_out_order_update, passenger_id)
    DGDO_OFF(dgdo_out_new_order, expires_in_s) DGDO_OFF(dgdo_out_driver_position, speed_kmh)
    DGDO_OFF(dgdo_out_estimate_update, distance_m) DGDO_OFF(dgdo_out_nearby_drivers, drivers)
    DGDO_OFF(dgdo_out_engine_stats, match_p99_ns)
    DGDO_OFF(dgdo_out_engine_stats, match_p50_ns) DGDO_OFF(dgdo_out_engine_stats, match_buckets)
    DGDO_OFF(dgdo_ctl_attach, out_capacity)
    return (size_t)-1;
}

/* The latency histograms' bucket bounds (ns), for the Python copy's check at import. */
static uint64_t dgdo_py_latency_bound(int i) {
    static const uint64_t bounds[DGDO_LATENCY_BUCKETS] = {DGDO_LATENCY_BOUNDS_NS};
    return i >= 0 && i < DGDO_LATENCY_BUCKETS ? bounds[i] : 0;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "sidecar.engine.ring._dgdo_ring",
    SOURCE,
    include_dirs=[str(INCLUDE)],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
