"""The shared-memory ring (include/dgdo/ring.h) from Python, through cffi.

A `Segment` maps one ring segment (a memfd: the engine passes its fd at
attach); a `Producer` or `Consumer` is this process's side of it. Both move batches: `Consumer.drain()` copies every
committed record (up to a limit) into one reusable buffer with one C call, and
`Producer.publish()` writes a buffer of pre-framed records with one C call.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

from sidecar.engine import records
from sidecar.engine.ring._dgdo_ring import ffi, lib

HEADER_SIZE: int = lib.DGDO_RING_HEADER_SIZE
RECORD_HEADER: int = lib.DGDO_RECORD_HEADER
RECORD_ALIGN: int = lib.DGDO_RECORD_ALIGN
PADDING: int = lib.DGDO_RING_PADDING

OK: int = lib.DGDO_RING_OK
FULL: int = lib.DGDO_RING_FULL
TOO_LARGE: int = lib.DGDO_RING_TOO_LARGE

STATUS_NAMES = {
    lib.DGDO_RING_OK: "ok",
    lib.DGDO_RING_FULL: "full",
    lib.DGDO_RING_TOO_LARGE: "too large",
    lib.DGDO_RING_BAD_MAGIC: "not a dgdo ring segment",
    lib.DGDO_RING_BAD_VERSION: "ring layout version mismatch",
    lib.DGDO_RING_BAD_CAPACITY: "bad capacity",
    lib.DGDO_RING_BAD_SIZE: "segment smaller than its header says",
    lib.DGDO_RING_BAD_EPOCH: "stale segment (epoch of another engine run)",
}

FRAME = records.HEADER  # {int32 length incl. header, int32 type}
aligned = records.aligned  # a record's footprint in the ring: the batch layout is the ring's
frame = records.frame


class RingError(Exception):
    """A segment that cannot be used: wrong magic, version, size or epoch."""

    def __init__(self, status: int, where: str) -> None:
        super().__init__(f"{where}: {STATUS_NAMES.get(status, status)}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Record:
    type: int
    body: memoryview


class Segment:
    """One ring segment, mapped read-write: a memfd, never a name in /dev/shm.

    The engine creates its segments and passes their fds at attach
    (include/dgdo/control.h): `Segment.from_fd()` maps one. Tests and benches
    that play both sides make their own with `Segment.create()`. Either way
    the memory lives exactly as long as some process maps it or holds its fd:
    nothing is left behind, whatever kills whom.

    Raises (both constructors):
        RingError: not a valid ring of this layout (or of another epoch).
    """

    def __init__(self, mapping: mmap.mmap, epoch: int, label: str, fd: int = -1) -> None:
        self.label = label
        self._map: mmap.mmap | None = mapping
        self.fd = -1
        self.ptr = ffi.from_buffer(mapping)
        rc = lib.dgdo_ring_check(self.ptr, len(mapping), epoch)
        if rc != OK:
            self.close()  # unmaps; `fd` stays the caller's
            raise RingError(rc, label)
        self.fd = fd  # kept only by create(): the fd a test passes to the other side
        self.epoch: int = lib.dgdo_py_epoch(self.ptr)
        self.max_record: int = lib.dgdo_py_max_record(self.ptr)

    @classmethod
    def from_fd(cls, fd: int, epoch: int = 0, label: str = "ring") -> Segment:
        """Maps the segment behind `fd` (the caller still owns and closes `fd`).

        Args:
            epoch: the engine run's epoch the segment must carry (0 = any).
        """
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE:
            raise RingError(lib.DGDO_RING_BAD_SIZE, label)
        return cls(mmap.mmap(fd, size), epoch, label)

    @classmethod
    def create(cls, capacity: int, epoch: int = 0, label: str = "dgdo.test") -> Segment:
        """A new, formatted segment of `capacity` data bytes in a close-on-exec memfd.

        The segment keeps the fd (`.fd`, closed by close()) so that another process can map
        it too: pass it with `subprocess.Popen(pass_fds=...)` or over SCM_RIGHTS.
        """
        fd = os.memfd_create(label, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, lib.dgdo_ring_segment_size(capacity))
            mapping = mmap.mmap(fd, 0)
            rc = lib.dgdo_ring_format(ffi.from_buffer(mapping), capacity, epoch)
            if rc != OK:
                mapping.close()
                raise RingError(rc, label)
            return cls(mapping, 0, label, fd)
        except BaseException:
            os.close(fd)
            raise

    def producer_heartbeat_ns(self) -> int:
        """The producer's last beat, CLOCK_MONOTONIC ns as `time.monotonic_ns()` reads it; 0 = never."""
        return lib.dgdo_py_producer_heartbeat(self.ptr)

    def close(self) -> None:
        self.ptr = None
        m = self._map
        if m is not None:
            with contextlib.suppress(BufferError):  # a cffi buffer still points at it; unmapped at exit
                m.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Producer:
    """This process's producing side of a segment."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self._p = ffi.new("dgdo_ring_producer *")
        lib.dgdo_ring_producer_init(self._p, segment.ptr, os.getpid())
        self._status = ffi.new("int *")

    def write(self, type_: int, body: bytes) -> int:
        """Writes one record; returns OK, FULL or TOO_LARGE. Call should_wake() after a batch."""
        return lib.dgdo_ring_write(self._p, type_, body, len(body))

    def publish(self, framed: bytearray) -> tuple[int, int]:
        """Writes records framed by `frame()` until one does not fit.

        Returns:
            (bytes consumed from `framed`, last status). The caller keeps the
            unconsumed tail and retries it before anything newer.
        """
        n = lib.dgdo_py_publish(self._p, ffi.from_buffer(framed), len(framed), self._status)
        return n, self._status[0]

    def unconsumed(self) -> bytes:
        """The records a dead consumer never took, framed for publish() to another ring."""
        cap = self.depth() + RECORD_ALIGN
        buf = bytearray(cap)
        n = lib.dgdo_py_unconsumed(self._p, ffi.from_buffer(buf), cap)
        return bytes(buf[:n])

    def should_wake(self) -> bool:
        """After committing: True when the consumer parked and we must ring its doorbell."""
        return bool(lib.dgdo_ring_producer_should_wake(self._p))

    def depth(self) -> int:
        return lib.dgdo_py_depth(self._p)

    def heartbeat(self, now_ns: int) -> None:
        lib.dgdo_ring_producer_heartbeat(self._p, now_ns)


class Consumer:
    """This process's consuming side of a segment.

    `drain()` returns records whose bodies are views into a buffer that the
    next drain() overwrites: decode them before draining again.
    """

    def __init__(self, segment: Segment, buffer_size: int | None = None) -> None:
        self.segment = segment
        self._c = ffi.new("dgdo_ring_consumer *")
        lib.dgdo_ring_consumer_init(self._c, segment.ptr, os.getpid())
        # At least one maximal record must fit, or a drain could never progress.
        size = max(buffer_size or 0, segment.max_record + RECORD_ALIGN, 64 * 1024)
        self._buf = bytearray(size)
        self._cbuf = ffi.from_buffer(self._buf)
        self._view = memoryview(self._buf)

    def drain(self, limit: int = 4096) -> int:
        """Copies up to `limit` records into the buffer; returns the bytes copied."""
        return lib.dgdo_ring_drain_copy(self._c, self._cbuf, len(self._buf), limit)

    def records(self, nbytes: int) -> Iterator[Record]:
        """Iterates the records of the last drain() that copied `nbytes`."""
        view, off = self._view, 0
        unpack = FRAME.unpack_from
        while off < nbytes:
            length, type_ = unpack(view, off)
            yield Record(type_, view[off + RECORD_HEADER : off + length])
            off += aligned(length)

    @property
    def buffer(self) -> memoryview:
        return self._view

    def pending(self) -> bool:
        return bool(lib.dgdo_ring_pending(self._c))

    def depth(self) -> int:
        """Bytes the producer has committed and this side has not released (a gauge)."""
        return lib.dgdo_py_segment_depth(self.segment.ptr)

    def park(self) -> bool:
        """Announces sleep; False when a record arrived meanwhile (read instead)."""
        return bool(lib.dgdo_ring_park(self._c))

    def unpark(self) -> None:
        lib.dgdo_ring_unpark(self._c)

    def heartbeat(self, now_ns: int) -> None:
        lib.dgdo_ring_consumer_heartbeat(self._c, now_ns)


def sizeof(name: str) -> int:
    """sizeof() of a struct in include/dgdo, as the C compiler laid it out."""
    return lib.dgdo_py_sizeof(name.encode())


def offsetof(type_name: str, field: str) -> int:
    return lib.dgdo_py_offsetof(type_name.encode(), field.encode())


# The records' Python layout must be the C compiler's: checked once, here, where cffi is at hand.
records.check_layout(sizeof, offsetof, RECORD_HEADER, RECORD_ALIGN,
                     tuple(lib.dgdo_py_latency_bound(i) for i in range(lib.DGDO_LATENCY_BUCKETS)))
