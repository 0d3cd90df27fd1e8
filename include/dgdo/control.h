/*
 * dgdo/control.h — how a sidecar worker attaches to the engine.
 *
 * The engine listens on a UNIX SOCK_SEQPACKET socket (message boundaries
 * kept, EOF on peer death). A worker connects and sends dgdo_ctl_hello. The
 * engine creates (or, for a worker id it already knows, re-creates) two ring
 * segments in /dev/shm and answers dgdo_ctl_attach with two eventfds in one
 * SCM_RIGHTS message, in this order:
 *
 *   fds[0]  engine doorbell   the sidecar writes it when the engine's "in"
 *                             ring consumer is parked
 *   fds[1]  worker doorbell   the engine writes it when the worker's "out"
 *                             ring consumer is parked; the worker waits on it
 *
 * The socket then stays open and silent. Its EOF is the death notice in
 * both directions: the engine drops the worker's sessions (their drivers go
 * offline after a grace period); the worker reports engine_unavailable and
 * reconnects. Ring names carry the engine's instance name and the worker id,
 * and the segments' epoch equals dgdo_ctl_attach.epoch: a segment with
 * another epoch is a stale one from an earlier run.
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
#define DGDO_CTL_VERSION 1u
#define DGDO_SHM_NAME_MAX 64

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
 * attach, 168 bytes:
 *    0 magic        u32
 *    4 version      u16
 *    6 worker       u16
 *    8 pid          i32      the engine's pid
 *   12 status       i32      0 = ok, else a negative dgdo_ring_status / errno
 *   16 epoch        u64      this engine run
 *   24 in_capacity  u64      data bytes of the sidecar -> engine ring
 *   32 out_capacity u64      data bytes of the engine -> sidecar ring
 *   40 in_name      char[64] shm name ("/dgdo.<instance>.w<worker>.in")
 *  104 out_name     char[64]
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
    char in_name[DGDO_SHM_NAME_MAX];
    char out_name[DGDO_SHM_NAME_MAX];
} dgdo_ctl_attach;
DGDO_CTL_STATIC_ASSERT(offsetof(dgdo_ctl_attach, epoch) == 16, "epoch");
DGDO_CTL_STATIC_ASSERT(offsetof(dgdo_ctl_attach, in_name) == 40, "in_name");
DGDO_CTL_STATIC_ASSERT(offsetof(dgdo_ctl_attach, out_name) == 104, "out_name");
DGDO_CTL_STATIC_ASSERT(sizeof(dgdo_ctl_attach) == 168, "dgdo_ctl_attach");

#ifdef __cplusplus
}
#endif

#endif /* DGDO_CONTROL_H */
