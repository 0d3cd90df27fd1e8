/*
 * dgdo/control.h — how a sidecar worker attaches to the engine.
 *
 * The engine listens on a UNIX SOCK_SEQPACKET socket (message boundaries
 * kept, EOF on peer death), either a path ("/run/dgdo/engine.sock") or, for
 * a control name starting with '@', a Linux abstract name ("@dgdo-run-42"):
 * an abstract name is no file, so it vanishes with the last process holding
 * it, kill -9 included. A worker connects and sends dgdo_ctl_hello. The
 * engine creates two fresh ring
 * segments as memfds (memfd_create, close-on-exec, sealed against resizing)
 * and answers dgdo_ctl_attach with DGDO_CTL_NFDS descriptors in one
 * SCM_RIGHTS message, in this order:
 *
 *   fds[DGDO_CTL_FD_ENGINE_BELL]  the sidecar writes it when the engine's
 *                                 "in" ring consumer is parked
 *   fds[DGDO_CTL_FD_WORKER_BELL]  the engine writes it when the worker's
 *                                 "out" ring consumer is parked; the worker
 *                                 waits on it
 *   fds[DGDO_CTL_FD_IN_RING]      the sidecar -> engine ring segment
 *   fds[DGDO_CTL_FD_OUT_RING]     the engine -> sidecar ring segment
 *
 * A segment has no name anywhere: it lives exactly as long as someone maps
 * it or holds its fd, so nothing of it can outlive the two processes. A
 * worker whose engine died keeps its own mapping of the old "in" ring until
 * it has carried the records the engine never consumed over to the next
 * engine, then unmaps it and the memory is gone. (The memfds are labelled
 * "dgdo.<instance>.w<worker>.{in,out}": /proc/<pid>/fd shows them.)
 *
 * The socket then stays open and silent. Its EOF is the death notice in
 * both directions: the engine drops the worker's sessions (their drivers go
 * offline after a grace period); the worker reports engine_unavailable and
 * reconnects. A hung engine keeps its socket open: the worker tells it by
 * the producer heartbeat of the "out" ring (ring.h), which the engine beats
 * every DGDO_CTL_HEARTBEAT_MS. The segments' epoch equals
 * dgdo_ctl_attach.epoch (one engine run).
 *
 * One worker id, one attachment. A hello for a worker id whose attachment is
 * still alive (its control socket connected) is refused with status -EBUSY
 * and no descriptors: two sidecars started with the same --worker would
 * otherwise take the id from each other forever. The refusal's pid is then
 * the pid of the worker holding the id (as its hello said), so the refused
 * one can name it. A worker that died (its socket hung up) is detached
 * first, so a restarted sidecar gets its id back at once.
 *
 * The engine answers only peers running as its own user (or root), by
 * SO_PEERCRED: an abstract name has no file mode to keep others out.
 */
#ifndef DGDO_CONTROL_H
#define DGDO_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define DGDO_CTL_STATIC_ASSERT static_assert
extern "C" {
#else
#define DGDO_CTL_STATIC_ASSERT _Static_assert
#endif

#define DGDO_CTL_MAGIC 0x4C54434Fu /* "OCTL" little-endian */
/* The version of everything an engine and a sidecar exchange: this handshake, the ring records
 * (events.h) and their layouts. Raised with any change to them, so that an engine and a sidecar of
 * different releases refuse each other at attach, saying so, rather than misread each other's
 * records. 2: segments passed as memfds, no shm names. 3: ENGINE_STATS carries the journal's
 * hold (264 bytes). */
#define DGDO_CTL_VERSION 3u
#define DGDO_CTL_HEARTBEAT_MS 100u  /* the engine's producer heartbeat period */

/* The descriptors of a dgdo_ctl_attach with status 0, by index. */
#define DGDO_CTL_FD_ENGINE_BELL 0
#define DGDO_CTL_FD_WORKER_BELL 1
#define DGDO_CTL_FD_IN_RING 2
#define DGDO_CTL_FD_OUT_RING 3
#define DGDO_CTL_NFDS 4

/* hello, 16 bytes: 0 magic u32; 4 version u16; 6 worker u16; 8 pid i32; 12 pad_ u32 */
typedef struct dgdo_ctl_hello {
    uint32_t magic;
    uint16_t version;
    uint16_t worker;
    int32_t pid;
    uint32_t pad_;
} dgdo_ctl_hello;
DGDO_CTL_STATIC_ASSERT(sizeof(dgdo_ctl_hello) == 16, "dgdo_ctl_hello");

/*
 * attach, 40 bytes (with DGDO_CTL_NFDS fds when status is 0, none otherwise):
 *    0 magic        u32
 *    4 version      u16
 *    6 worker       u16
 *    8 pid          i32      the engine's pid (-EBUSY: the pid of the worker
 *                            holding this worker id)
 *   12 status       i32      0 = ok; -EBUSY = the worker id is attached already;
 *                            -EPROTO = bad hello; -EINVAL = worker id 0;
 *                            else a negative
 *                            dgdo_ring_status / errno
 *   16 epoch        u64      this engine run
 *   24 in_capacity  u64      data bytes of the sidecar -> engine ring
 *   32 out_capacity u64      data bytes of the engine -> sidecar ring
 */
typedef struct dgdo_ctl_attach {
    uint32_t magic;
    uint16_t version;
    uint16_t worker;
    int32_t pid;
    int32_t status;
    uint64_t epoch;
    uint64_t in_capacity;
    uint64_t out_capacity;
} dgdo_ctl_attach;
DGDO_CTL_STATIC_ASSERT(offsetof(dgdo_ctl_attach, status) == 12, "status");
DGDO_CTL_STATIC_ASSERT(offsetof(dgdo_ctl_attach, epoch) == 16, "epoch");
DGDO_CTL_STATIC_ASSERT(offsetof(dgdo_ctl_attach, out_capacity) == 32, "out_capacity");
DGDO_CTL_STATIC_ASSERT(sizeof(dgdo_ctl_attach) == 40, "dgdo_ctl_attach");

#ifdef __cplusplus
}
#endif

#endif /* DGDO_CONTROL_H */
