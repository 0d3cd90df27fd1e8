"""The ring in one process through cffi: framing, padding at the wrap, full and empty, stale segments."""

from __future__ import annotations

import os
import struct

import pytest

from sidecar.engine import ring


def test_records_round_trip_in_order() -> None:
    seg = ring.Segment.create(1024)
    p, c = ring.Producer(seg), ring.Consumer(seg)
    for i in range(5):
        assert p.write(100 + i, bytes([i]) * i) == ring.OK
    n = c.drain()
    got = [(r.type, bytes(r.body)) for r in c.records(n)]
    assert got == [(100 + i, bytes([i]) * i) for i in range(5)]
    assert c.drain() == 0


def test_padding_record_is_inserted_at_the_wrap_and_skipped() -> None:
    seg = ring.Segment.create(256)  # max record 32 bytes
    p, c = ring.Producer(seg), ring.Consumer(seg)
    # 24-byte records (16 body + 8 header): 10 fill 240 bytes, leaving 16 at the end.
    for i in range(10):
        assert p.write(1, bytes([i]) * 16) == ring.OK
    assert [bytes(r.body)[0] for r in c.records(c.drain())] == list(range(10))
    assert p.write(2, b"x" * 16) == ring.OK  # does not fit in 16: padding, then at index 0
    recs = list(c.records(c.drain()))
    assert [(r.type, bytes(r.body)) for r in recs] == [(2, b"x" * 16)]
    assert p.depth() == 0


def test_record_that_exactly_fills_the_end_needs_no_padding() -> None:
    seg = ring.Segment.create(256)
    p, c = ring.Producer(seg), ring.Consumer(seg)
    for _ in range(8):  # 8 x 32 = 256: the last ends exactly at the end
        assert p.write(1, b"a" * 24) == ring.OK
    assert p.write(1, b"") == ring.FULL
    assert len(list(c.records(c.drain()))) == 8
    assert p.write(3, b"b" * 24) == ring.OK
    assert [r.type for r in c.records(c.drain())] == [3]


def test_full_ring_refuses_until_the_consumer_moves() -> None:
    seg = ring.Segment.create(256)
    p, c = ring.Producer(seg), ring.Consumer(seg)
    writes = 0
    while p.write(1, b"z" * 20) == ring.OK:
        writes += 1
    assert writes == 256 // 32
    assert p.write(1, b"z" * 20) == ring.FULL
    assert c.drain(limit=1) > 0
    assert p.write(1, b"z" * 20) == ring.OK


def test_oversized_record_is_too_large() -> None:
    seg = ring.Segment.create(1024)  # max record 128 bytes incl. header
    p = ring.Producer(seg)
    assert p.write(1, b"q" * 121) == ring.TOO_LARGE
    assert p.write(1, b"q" * 120) == ring.OK


def test_park_refuses_when_a_record_is_pending_and_should_wake_claims_once() -> None:
    seg = ring.Segment.create(1024)
    p, c = ring.Producer(seg), ring.Consumer(seg)
    assert p.should_wake() is False  # nobody parked
    assert c.park() is True
    assert p.write(1, b"hi") == ring.OK
    assert p.should_wake() is True
    assert p.should_wake() is False  # one doorbell per park
    assert c.park() is False  # a record waits: read, do not sleep


def test_publish_writes_a_framed_batch_and_keeps_what_did_not_fit() -> None:
    seg = ring.Segment.create(256)
    p, c = ring.Producer(seg), ring.Consumer(seg)
    batch = bytearray()
    for i in range(12):
        ring.frame(batch, 5, struct.pack("<Q", i) + b"." * 8)  # 24 bytes each
    n, status = p.publish(batch)
    assert status == ring.FULL and n == 10 * 24
    del batch[:n]
    assert [struct.unpack_from("<Q", r.body)[0] for r in c.records(c.drain())] == list(range(10))
    n, status = p.publish(batch)
    assert (n, status) == (len(batch), ring.OK)


def test_a_segment_of_another_epoch_is_recognised_as_stale() -> None:
    seg = ring.Segment.create(1024, epoch=41)
    with pytest.raises(ring.RingError, match="stale"):
        ring.Segment.from_fd(seg.fd, epoch=42)
    again = ring.Segment.from_fd(seg.fd, epoch=41)  # a second mapping of the same memfd, as a peer's
    assert again.epoch == 41
    again.close()
    seg.close()


def test_garbage_is_not_a_ring() -> None:
    fd = os.memfd_create("dgdo.test.garbage", os.MFD_CLOEXEC)
    try:
        os.write(fd, b"\x00" * 8192)
        with pytest.raises(ring.RingError, match="not a dgdo ring"):
            ring.Segment.from_fd(fd)
        os.ftruncate(fd, 100)  # shorter than a header
        with pytest.raises(ring.RingError, match="smaller than its header"):
            ring.Segment.from_fd(fd)
    finally:
        os.close(fd)


def test_a_created_segment_is_a_memfd_and_nothing_in_dev_shm() -> None:
    seg = ring.Segment.create(1024, label="dgdo.test.memfd")
    try:
        assert os.readlink(f"/proc/self/fd/{seg.fd}").startswith("/memfd:dgdo.test.memfd")
        assert not [n for n in os.listdir("/dev/shm") if "dgdo.test.memfd" in n]
        assert seg.producer_heartbeat_ns() == 0  # never beat
        ring.Producer(seg).heartbeat(123_456)
        assert seg.producer_heartbeat_ns() == 123_456
    finally:
        seg.close()
    assert seg.fd == -1
