/*
 * dgdo/events.h — the fixed-layout records that cross the rings.
 *
 * Little-endian, fixed-width fields, explicit named padding, every offset
 * checked below. The ring record's `type` field (dgdo/ring.h) holds one of
 * enum dgdo_event_type; the body is the struct named next to it. Type ids
 * are append-only: never renumber, never reuse.
 *
 * Inbound records (sidecar -> engine) start with dgdo_in_meta: when and where
 * the sidecar received the command, and on whose behalf (role and id of the
 * authenticated connection). Outbound records (engine -> sidecar) start with
 * dgdo_out_meta: the engine's commit time on both clocks and the recipient.
 *
 * Ids are opaque strings of 1-36 chars from [A-Za-z0-9_.:-], stored
 * NUL-padded in dgdo_id. Coordinates are WGS84 degrees as f64.
 */
#ifndef DGDO_EVENTS_H
#define DGDO_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define DGDO_EV_STATIC_ASSERT static_assert
extern "C" {
#else
#define DGDO_EV_STATIC_ASSERT _Static_assert
#endif

#define DGDO_ID_MAX 36
#define DGDO_REASON_MAX 64

enum dgdo_event_type {
    /* inbound: sidecar -> engine */
    DGDO_IN_SESSION_OPEN = 1,     /* dgdo_in_session */
    DGDO_IN_SESSION_CLOSE = 2,    /* dgdo_in_session */
    DGDO_IN_DRIVER_LOCATION = 3,  /* dgdo_in_driver_location */
    DGDO_IN_DRIVER_STATUS = 4,    /* dgdo_in_driver_status */
    DGDO_IN_RIDE_REQUEST = 5,     /* dgdo_in_ride_request */
    DGDO_IN_ORDER_COMMAND = 6,    /* dgdo_in_order_command */
    DGDO_IN_NEARBY = 7,           /* dgdo_in_nearby (subscribe / unsubscribe) */
    DGDO_IN_FLEET = 8,            /* dgdo_fleet: for the other workers' admins; not journaled */
    /* outbound: engine -> sidecar */
    DGDO_OUT_COMMAND_RESULT = 100, /* dgdo_out_command_result */
    DGDO_OUT_ORDER_UPDATE = 101,   /* dgdo_out_order_update */
    DGDO_OUT_NEW_ORDER = 102,      /* dgdo_out_new_order */
    DGDO_OUT_CANCEL_ORDER = 103,   /* dgdo_out_cancel_order */
    DGDO_OUT_DRIVER_POSITION = 104,/* dgdo_out_driver_position */
    DGDO_OUT_ESTIMATE_UPDATE = 105,/* dgdo_out_estimate_update */
    DGDO_OUT_NEARBY_DRIVERS = 106, /* dgdo_out_nearby_drivers */
    DGDO_OUT_ENGINE_STATS = 107,   /* dgdo_out_engine_stats */
    DGDO_OUT_SESSION_STATE = 108,  /* dgdo_out_session */
    DGDO_OUT_SESSION_REPLACED = 109,/* dgdo_out_session_replaced */
    DGDO_OUT_FLEET = 110           /* dgdo_fleet: another worker's DGDO_IN_FLEET, relayed */
};

enum dgdo_role { DGDO_ROLE_NONE = 0, DGDO_ROLE_DRIVER = 1, DGDO_ROLE_PASSENGER = 2, DGDO_ROLE_ADMIN = 3 };

enum dgdo_driver_status { DGDO_DRIVER_OFFLINE = 0, DGDO_DRIVER_ONLINE = 1 };

/* Commands on an existing order (dgdo_in_order_command.command). */
enum dgdo_order_command {
    DGDO_CMD_ACCEPT = 1,
    DGDO_CMD_REJECT = 2,
    DGDO_CMD_ARRIVED = 3,
    DGDO_CMD_START = 4,
    DGDO_CMD_COMPLETE = 5,
    DGDO_CMD_CANCEL = 6
};

/* Order status as apps see it (dgdo_out_order_update.status). */
enum dgdo_order_status {
    DGDO_ORDER_SEARCHING = 1,
    DGDO_ORDER_ACCEPTED = 2,
    DGDO_ORDER_ARRIVING = 3,
    DGDO_ORDER_ARRIVED = 4,
    DGDO_ORDER_STARTED = 5,
    DGDO_ORDER_COMPLETED = 6,
    DGDO_ORDER_CANCELED = 7,
    DGDO_ORDER_NO_DRIVER = 8
};

/* Why an order or offer ended (order_update.reason, cancel_order.reason). Append-only. */
enum dgdo_reason {
    DGDO_REASON_NONE = 0,
    DGDO_REASON_PASSENGER_CANCELED = 1,
    DGDO_REASON_DRIVER_CANCELED = 2,
    DGDO_REASON_OFFER_EXPIRED = 3,
    DGDO_REASON_OFFER_REJECTED = 4,  /* never sent: a driver's reject is answered by its ack alone */
    DGDO_REASON_NO_DRIVER = 5,
    DGDO_REASON_DRIVER_OFFLINE = 6,
    DGDO_REASON_DRIVER_DISCONNECTED = 7,
    DGDO_REASON_OPERATOR_CANCELED = 8 /* an admin's CANCEL (dgdo_in_order_command) */
};

/* Outcome of a command (dgdo_out_command_result.status): maps to ack / error codes. */
enum dgdo_result {
    DGDO_RESULT_OK = 0,
    DGDO_RESULT_CONFLICT = 1,   /* invalid transition for the order's state */
    DGDO_RESULT_NOT_FOUND = 2,  /* unknown order */
    DGDO_RESULT_FORBIDDEN = 3,  /* not this actor's order */
    DGDO_RESULT_BAD_MESSAGE = 4 /* a field the engine refuses (e.g. out of range) */
};

/* A NUL-padded id, 1-36 chars. */
typedef struct dgdo_id {
    char chars[40];
} dgdo_id;
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_id) == 40, "dgdo_id");

typedef struct dgdo_point {
    double lat;
    double lon;
} dgdo_point;
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_point) == 16, "dgdo_point");

/*
 * dgdo_in_meta, 64 bytes, first in every inbound body:
 *    0 recv_ns    u64  sidecar receive time, CLOCK_MONOTONIC
 *    8 corr       u64  request correlation (0 = no reply wanted)
 *   16 conn       u32  connection id within the worker
 *   20 worker     u16  sidecar worker id
 *   22 role       u8   enum dgdo_role of the actor
 *   23 pad_       u8
 *   24 actor      id   the authenticated connection's id
 */
typedef struct dgdo_in_meta {
    uint64_t recv_ns;
    uint64_t corr;
    uint32_t conn;
    uint16_t worker;
    uint8_t role;
    uint8_t pad_;
    dgdo_id actor;
} dgdo_in_meta;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_meta, recv_ns) == 0, "recv_ns");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_meta, corr) == 8, "corr");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_meta, conn) == 16, "conn");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_meta, worker) == 20, "worker");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_meta, role) == 22, "role");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_meta, actor) == 24, "actor");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_in_meta) == 64, "dgdo_in_meta");

/*
 * dgdo_out_meta, 64 bytes, first in every outbound body:
 *    0 commit_mono_ns u64  engine commit time, CLOCK_MONOTONIC
 *    8 commit_real_ns u64  engine commit time, CLOCK_REALTIME
 *   16 to_conn        u32  recipient connection (0 = route by role + id)
 *   20 to_worker      u16  recipient's sidecar worker (1-65535; 0 = unknown: admin
 *                          records go to every worker)
 *   22 to_role        u8   enum dgdo_role of the recipient
 *   23 pad_           u8
 *   24 to_id          id   recipient id (empty for admin broadcasts)
 */
typedef struct dgdo_out_meta {
    uint64_t commit_mono_ns;
    uint64_t commit_real_ns;
    uint32_t to_conn;
    uint16_t to_worker;
    uint8_t to_role;
    uint8_t pad_;
    dgdo_id to_id;
} dgdo_out_meta;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_meta, commit_mono_ns) == 0, "commit_mono_ns");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_meta, commit_real_ns) == 8, "commit_real_ns");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_meta, to_conn) == 16, "to_conn");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_meta, to_worker) == 20, "to_worker");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_meta, to_role) == 22, "to_role");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_meta, to_id) == 24, "to_id");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_out_meta) == 64, "dgdo_out_meta");

/* ---- inbound ------------------------------------------------------------ */

/* dgdo_in_session.flags */
#define DGDO_SESSION_HAS_LAST_SEQ 0x01u /* last_seq holds the app's ?last_seq */

/*
 * SESSION_OPEN / SESSION_CLOSE, 80 bytes:
 *    0 meta        64    role, actor, conn, worker; OPEN: recv_ns is when the sidecar took the
 *                        upgrade (before its 101), the same in every re-announcement
 *   64 flags       u8    OPEN only: DGDO_SESSION_HAS_LAST_SEQ
 *   65 pad_[7]
 *   72 last_seq    u64   OPEN only, with the flag: the highest seq the app has processed
 *
 * Of two connections of one app, the engine keeps the one with the later recv_ns, whichever OPEN
 * reaches it first, and sends the other SESSION_REPLACED (an OPEN that loses gets no SESSION_STATE).
 * The engine answers every other OPEN with a SESSION_STATE to the opening connection and decides
 * resume vs snapshot itself: the reliable messages after last_seq if it still holds them all,
 * else the current state of the actor's orders (and, with last_seq, of those that ended since).
 */
typedef struct dgdo_in_session {
    dgdo_in_meta meta;
    uint8_t flags;
    uint8_t pad_[7];
    uint64_t last_seq;
} dgdo_in_session;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_session, flags) == 64, "flags");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_session, last_seq) == 72, "last_seq");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_in_session) == 80, "dgdo_in_session");

/*
 * DRIVER_LOCATION, 96 bytes:
 *    0 meta        64
 *   64 pos         point   lat, lon
 *   80 heading     f32     degrees 0-360, NaN = unknown
 *   84 speed_kmh   f32     NaN = unknown
 *   88 accuracy_m  f32     NaN = unknown
 *   92 pad_        u32
 */
typedef struct dgdo_in_driver_location {
    dgdo_in_meta meta;
    dgdo_point pos;
    float heading;
    float speed_kmh;
    float accuracy_m;
    uint32_t pad_;
} dgdo_in_driver_location;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_driver_location, pos) == 64, "pos");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_driver_location, heading) == 80, "heading");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_driver_location, speed_kmh) == 84, "speed_kmh");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_driver_location, accuracy_m) == 88, "accuracy_m");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_in_driver_location) == 96, "dgdo_in_driver_location");

/* DRIVER_STATUS, 72 bytes: 0 meta; 64 status u8 (enum dgdo_driver_status); 65 pad_[7]. */
typedef struct dgdo_in_driver_status {
    dgdo_in_meta meta;
    uint8_t status;
    uint8_t pad_[7];
} dgdo_in_driver_status;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_driver_status, status) == 64, "status");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_in_driver_status) == 72, "dgdo_in_driver_status");

/*
 * RIDE_REQUEST, 104 bytes:
 *    0 meta        64
 *   64 idem_key    u64    hash of (passenger, client request id); 0 = none.
 *                         The same key again returns the same order.
 *   72 pickup      point
 *   88 dropoff     point
 */
typedef struct dgdo_in_ride_request {
    dgdo_in_meta meta;
    uint64_t idem_key;
    dgdo_point pickup;
    dgdo_point dropoff;
} dgdo_in_ride_request;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_ride_request, idem_key) == 64, "idem_key");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_ride_request, pickup) == 72, "pickup");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_ride_request, dropoff) == 88, "dropoff");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_in_ride_request) == 104, "dgdo_in_ride_request");

/*
 * ORDER_COMMAND, 144 bytes:
 *    0 meta        64
 *   64 order_id    u64
 *   72 command     u8     enum dgdo_order_command
 *   73 pad_[7]
 *   80 reason      char[64]  free text for a cancel, NUL-padded
 *
 * meta.role says whose command it is: a driver's or passenger's on its own order, or, with
 * DGDO_ROLE_ADMIN, an operator's. An operator may only CANCEL, and any live order (started
 * included): it ends `canceled` with DGDO_REASON_OPERATOR_CANCELED; an order that has ended
 * is DGDO_RESULT_NOT_FOUND to it, any other command DGDO_RESULT_FORBIDDEN.
 */
typedef struct dgdo_in_order_command {
    dgdo_in_meta meta;
    uint64_t order_id;
    uint8_t command;
    uint8_t pad_[7];
    char reason[DGDO_REASON_MAX];
} dgdo_in_order_command;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_order_command, order_id) == 64, "order_id");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_order_command, command) == 72, "command");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_order_command, reason) == 80, "reason");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_in_order_command) == 144, "dgdo_in_order_command");

/*
 * NEARBY, 96 bytes:
 *    0 meta        64
 *   64 center      point
 *   80 radius_m    f64
 *   88 subscribe   u8     1 = subscribe, 0 = unsubscribe
 *   89 pad_[7]
 */
typedef struct dgdo_in_nearby {
    dgdo_in_meta meta;
    dgdo_point center;
    double radius_m;
    uint8_t subscribe;
    uint8_t pad_[7];
} dgdo_in_nearby;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_nearby, center) == 64, "center");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_nearby, radius_m) == 80, "radius_m");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_in_nearby, subscribe) == 88, "subscribe");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_in_nearby) == 96, "dgdo_in_nearby");

/* ---- outbound ----------------------------------------------------------- */

/*
 * COMMAND_RESULT, 88 bytes (to the connection that asked; meta.to_conn set):
 *    0 meta        64
 *   64 corr        u64    the command's meta.corr
 *   72 order_id    u64    the order created or acted on (0 = none)
 *   80 status      u8     enum dgdo_result
 *   81 pad_[7]
 */
typedef struct dgdo_out_command_result {
    dgdo_out_meta meta;
    uint64_t corr;
    uint64_t order_id;
    uint8_t status;
    uint8_t pad_[7];
} dgdo_out_command_result;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_command_result, corr) == 64, "corr");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_command_result, order_id) == 72, "order_id");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_command_result, status) == 80, "status");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_out_command_result) == 88, "dgdo_out_command_result");

/*
 * Reliable records (ORDER_UPDATE, NEW_ORDER, CANCEL_ORDER) end with `seq`: +1 per recipient
 * (role, id), stamped by the engine, which keeps the recent ones for resume.
 *
 * ORDER_UPDATE, 168 bytes (to the passenger or the driver of the order):
 *    0 meta        64
 *   64 order_id    u64
 *   72 status      u8     enum dgdo_order_status
 *   73 reason      u8     enum dgdo_reason
 *   74 pad_[6]
 *   80 driver_id   id     empty until assigned
 *  120 passenger_id id
 *  160 seq         u64
 */
typedef struct dgdo_out_order_update {
    dgdo_out_meta meta;
    uint64_t order_id;
    uint8_t status;
    uint8_t reason;
    uint8_t pad_[6];
    dgdo_id driver_id;
    dgdo_id passenger_id;
    uint64_t seq;
} dgdo_out_order_update;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_order_update, order_id) == 64, "order_id");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_order_update, status) == 72, "status");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_order_update, reason) == 73, "reason");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_order_update, driver_id) == 80, "driver_id");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_order_update, passenger_id) == 120, "passenger_id");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_order_update, seq) == 160, "seq");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_out_order_update) == 168, "dgdo_out_order_update");

/*
 * NEW_ORDER (an offer to one driver), 176 bytes:
 *    0 meta          64
 *   64 order_id      u64
 *   72 passenger_id  id
 *  112 pickup        point
 *  128 dropoff       point
 *  144 distance_m    f64   driver -> pickup
 *  152 eta_s         f64   driver -> pickup
 *  160 expires_in_s  f64
 *  168 seq           u64
 */
typedef struct dgdo_out_new_order {
    dgdo_out_meta meta;
    uint64_t order_id;
    dgdo_id passenger_id;
    dgdo_point pickup;
    dgdo_point dropoff;
    double distance_m;
    double eta_s;
    double expires_in_s;
    uint64_t seq;
} dgdo_out_new_order;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_new_order, order_id) == 64, "order_id");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_new_order, passenger_id) == 72, "passenger_id");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_new_order, pickup) == 112, "pickup");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_new_order, dropoff) == 128, "dropoff");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_new_order, distance_m) == 144, "distance_m");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_new_order, eta_s) == 152, "eta_s");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_new_order, expires_in_s) == 160, "expires_in_s");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_new_order, seq) == 168, "seq");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_out_new_order) == 176, "dgdo_out_new_order");

/* CANCEL_ORDER (offer withdrawn / order canceled, to a driver), 88 bytes:
 *    0 meta 64; 64 order_id u64; 72 reason u8 (enum dgdo_reason); 73 pad_[7]; 80 seq u64 */
typedef struct dgdo_out_cancel_order {
    dgdo_out_meta meta;
    uint64_t order_id;
    uint8_t reason;
    uint8_t pad_[7];
    uint64_t seq;
} dgdo_out_cancel_order;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_cancel_order, order_id) == 64, "order_id");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_cancel_order, reason) == 72, "reason");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_cancel_order, seq) == 80, "seq");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_out_cancel_order) == 88, "dgdo_out_cancel_order");

/*
 * DRIVER_POSITION (the assigned driver's position, to its passenger), 144 bytes:
 *    0 meta        64
 *   64 order_id    u64
 *   72 driver_id   id
 *  112 pos         point
 *  128 heading     f32   NaN = unknown
 *  132 speed_kmh   f32   NaN = unknown
 *  136 pad_        u64
 */
typedef struct dgdo_out_driver_position {
    dgdo_out_meta meta;
    uint64_t order_id;
    dgdo_id driver_id;
    dgdo_point pos;
    float heading;
    float speed_kmh;
    uint64_t pad_;
} dgdo_out_driver_position;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_driver_position, order_id) == 64, "order_id");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_driver_position, driver_id) == 72, "driver_id");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_driver_position, pos) == 112, "pos");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_driver_position, heading) == 128, "heading");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_driver_position, speed_kmh) == 132, "speed_kmh");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_out_driver_position) == 144, "dgdo_out_driver_position");

/* ESTIMATE_UPDATE (to the passenger), 88 bytes:
 *    0 meta 64; 64 order_id u64; 72 eta_s f64; 80 distance_m f64 */
typedef struct dgdo_out_estimate_update {
    dgdo_out_meta meta;
    uint64_t order_id;
    double eta_s;
    double distance_m;
} dgdo_out_estimate_update;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_estimate_update, order_id) == 64, "order_id");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_estimate_update, eta_s) == 72, "eta_s");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_estimate_update, distance_m) == 80, "distance_m");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_out_estimate_update) == 88, "dgdo_out_estimate_update");

/*
 * NEARBY_DRIVERS (snapshot to a subscribed passenger): variable length, only the
 * `count` entries used are sent, so a record is DGDO_NEARBY_HEAD_SIZE + 56 * count bytes:
 *    0 meta     64
 *   64 count    u32   entries that follow (at most DGDO_NEARBY_MAX)
 *   68 pad_     u32
 *   72 drivers  dgdo_nearby_entry[count]
 */
#define DGDO_NEARBY_MAX 32
#define DGDO_NEARBY_HEAD_SIZE 72
typedef struct dgdo_nearby_entry {
    dgdo_id driver_id;
    dgdo_point pos;
} dgdo_nearby_entry;
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_nearby_entry) == 56, "dgdo_nearby_entry");
typedef struct dgdo_out_nearby_drivers {
    dgdo_out_meta meta;
    uint32_t count;
    uint32_t pad_;
    dgdo_nearby_entry drivers[DGDO_NEARBY_MAX];
} dgdo_out_nearby_drivers;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_nearby_drivers, count) == 64, "count");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_nearby_drivers, drivers) == DGDO_NEARBY_HEAD_SIZE, "drivers");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_out_nearby_drivers) == DGDO_NEARBY_HEAD_SIZE + 56 * DGDO_NEARBY_MAX,
                      "dgdo_out_nearby_drivers");

/*
 * ENGINE_STATS (admin broadcast, about once a second), 264 bytes:
 *    0 meta                64
 *   64 drivers_online      u32
 *   68 drivers_available   u32
 *   72 active_orders       u32
 *   76 workers             u32   sidecar workers attached (filled in by the engine's loop):
 *                                a worker alone sends no FLEET records
 *   80 orders_created      u64   since start
 *   88 orders_matched      u64   accepted
 *   96 orders_completed    u64
 *  104 match_p99_ns        u64   offer decision time, recent window
 *  112 match_p50_ns        u64   the same window's median
 *  120 match_count         u64   offer decisions since the engine started (a Prometheus
 *  128 match_sum_ns        u64   histogram: count, sum, and one count per bucket below,
 *  136 match_buckets       u64[DGDO_LATENCY_BUCKETS + 1]  not cumulative; the last slot
 *                                counts decisions above the largest bound)
 *  248 journal_errno       u32   0: the journal takes writes. Else the errno of the write it
 *                                refused (ENOSPC, EIO, EROFS...): the engine holds, and its loop
 *                                sends this record itself, once per stats interval, while its
 *                                heartbeats stay stopped (filled in by the engine's loop)
 *  252 held_inputs         u32   inputs held unapplied meanwhile (0 when not holding)
 *  256 held_since_ns       u64   CLOCK_MONOTONIC when the hold began (0 when not holding)
 *
 * While holding, the figures are those of the last input applied: only journaled inputs are ever
 * applied, so the record depends on nothing the journal lacks. It is no sign of life: a sidecar
 * judges that by the heartbeat alone, and refuses commands while the engine holds.
 *
 * The bucket bounds are the ones the sidecar's push-latency histogram uses, so an operator reads
 * both on one scale: 10 us to 100 ms (DGDO_LATENCY_BOUNDS_NS, upper bounds, inclusive).
 */
#define DGDO_LATENCY_BUCKETS 13
#define DGDO_LATENCY_BOUNDS_NS                                                                  \
    10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 25000000, \
        50000000, 100000000
typedef struct dgdo_out_engine_stats {
    dgdo_out_meta meta;
    uint32_t drivers_online;
    uint32_t drivers_available;
    uint32_t active_orders;
    uint32_t workers;
    uint64_t orders_created;
    uint64_t orders_matched;
    uint64_t orders_completed;
    uint64_t match_p99_ns;
    uint64_t match_p50_ns;
    uint64_t match_count;
    uint64_t match_sum_ns;
    uint64_t match_buckets[DGDO_LATENCY_BUCKETS + 1];
    uint32_t journal_errno;
    uint32_t held_inputs;
    uint64_t held_since_ns;
} dgdo_out_engine_stats;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_engine_stats, drivers_online) == 64, "drivers_online");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_engine_stats, orders_created) == 80, "orders_created");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_engine_stats, match_p99_ns) == 104, "match_p99_ns");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_engine_stats, match_p50_ns) == 112, "match_p50_ns");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_engine_stats, match_count) == 120, "match_count");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_engine_stats, match_buckets) == 136, "match_buckets");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_engine_stats, journal_errno) == 248, "journal_errno");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_engine_stats, held_since_ns) == 256, "held_since_ns");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_out_engine_stats) == 264, "dgdo_out_engine_stats");

/*
 * SESSION_STATE (the answer to every SESSION_OPEN that is not a late one, to the opening connection), 80 bytes:
 *    0 meta        64    to_conn = the opening connection, to_worker, to_role, to_id
 *   64 seq         u64   the recipient's latest seq at the open, before anything replayed
 *                        or snapshotted (the app's welcome.seq)
 *   72 resumed     u8    1: the reliable messages after last_seq follow (original bytes and
 *                        seqs), or none were missed; 0: a snapshot follows (fresh seqs)
 *   73 online      u8    a driver's session: 1 when the engine has the driver online (its last
 *                        DRIVER_STATUS said so and no grace ran out since), else 0; 0 for the
 *                        other roles. The operator's map shows the driver as the engine sees it.
 *   74 pad_[6]
 */
typedef struct dgdo_out_session {
    dgdo_out_meta meta;
    uint64_t seq;
    uint8_t resumed;
    uint8_t online;
    uint8_t pad_[6];
} dgdo_out_session;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_session, seq) == 64, "seq");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_session, resumed) == 72, "resumed");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_session, online) == 73, "online");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_out_session) == 80, "dgdo_out_session");

/*
 * SESSION_REPLACED, 72 bytes: a session opened for the same role and id on another connection
 * (another worker, or another connection of the same one). Emitted by the engine as part of its
 * answer to that SESSION_OPEN, to the older session (older by recv_ns: a late OPEN of an older
 * connection gets it itself), which the sidecar closes with 4001. One app id is connected on at
 * most one worker at a time.
 *    0 meta        64    to_conn, to_worker: the older session; to_role, to_id: the app
 *   64 by_worker   u16   the worker the newer connection is on
 *   66 pad_[6]
 */
typedef struct dgdo_out_session_replaced {
    dgdo_out_meta meta;
    uint16_t by_worker;
    uint8_t pad_[6];
} dgdo_out_session_replaced;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_out_session_replaced, by_worker) == 64, "by_worker");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_out_session_replaced) == 72, "dgdo_out_session_replaced");

/*
 * FLEET (IN_FLEET from a worker, OUT_FLEET to the others), 72 bytes + 64 per entry.
 *
 * What admins on other workers need about the drivers connected here and nowhere in the
 * engine's outputs: where they are (folded: the latest fix per driver per feed tick), their
 * online/offline status and their disconnects. A worker sends it at its admin feed's rate
 * (sidecar/session/admin_feed.py); the engine loop does not journal or apply it (it is no
 * input to dispatch) and writes it, as OUT_FLEET with meta.to_worker = the sender, to every
 * other worker. Best effort: a lost one is healed by the next fix.
 * The engine writes one of its own, with no entries, when a worker attaches or detaches while
 * others are attached (`notice`, to_worker = that worker): the others forget what a detached
 * worker said of its drivers (they are disconnected: nobody else will say so), and pass on all
 * of theirs to one that attached (its admins know nothing of them yet).
 *    0 meta        64    IN: worker = the sender; OUT: to_worker = the sender, to_role admin
 *   64 count       u32   entries that follow
 *   68 notice      u32   enum dgdo_fleet_notice: 0 in a worker's own
 *   72 entries     dgdo_fleet_entry x count
 *
 * dgdo_fleet_entry, 64 bytes:
 *    0 driver_id   id
 *   40 pos         point  DGDO_FLEET_MOVED only
 *   56 kind        u8     enum dgdo_fleet_kind
 *   57 pad_[7]
 */
enum dgdo_fleet_kind { DGDO_FLEET_MOVED = 1, DGDO_FLEET_ONLINE = 2, DGDO_FLEET_OFFLINE = 3, DGDO_FLEET_GONE = 4 };
enum dgdo_fleet_notice { DGDO_FLEET_NOTICE_NONE = 0, DGDO_FLEET_WORKER_ATTACHED = 1, DGDO_FLEET_WORKER_DETACHED = 2 };

typedef struct dgdo_fleet_entry {
    dgdo_id driver_id;
    dgdo_point pos;
    uint8_t kind;
    uint8_t pad_[7];
} dgdo_fleet_entry;
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_fleet_entry, pos) == 40, "pos");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_fleet_entry, kind) == 56, "kind");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_fleet_entry) == 64, "dgdo_fleet_entry");

/* The fixed head; `count` dgdo_fleet_entry follow it (a record is 72 + 64 x count bytes). */
typedef struct dgdo_fleet {
    dgdo_out_meta meta; /* dgdo_in_meta on the way in: the same 64 bytes */
    uint32_t count;
    uint32_t notice;
} dgdo_fleet;
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_in_meta) == sizeof(dgdo_out_meta), "metas");
DGDO_EV_STATIC_ASSERT(offsetof(dgdo_fleet, count) == 64, "count");
DGDO_EV_STATIC_ASSERT(sizeof(dgdo_fleet) == 72, "dgdo_fleet");

#ifdef __cplusplus
}
#endif

#endif /* DGDO_EVENTS_H */
