"""Producer-side salvage after the consumer died mid-batch (Producer.unconsumed()).

The consumer zeroes (retires) each record as it reads it but releases head once per
batch, so a consumer killed mid-batch leaves, from head on: records it retired, maybe
one it was retiring (negated length, body half zeroed), then the committed records it
never took. Only the last group may be carried over, all of it, in order.
"""

from __future__ import annotations

import struct

from sidecar.engine import ring

I32 = struct.Struct("<i")


def _records(buf: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off < len(buf):
        length, type_ = ring.FRAME.unpack_from(buf, off)
        out.append((type_, bytes(buf[off + ring.RECORD_HEADER : off + length])))
        off += ring.aligned(length)
    return out


class DeadConsumer:
    """Retires records in the shared data area as the engine's dgdo_ring_read does, without releasing head."""

    def __init__(self, seg: ring.Segment, head: int = 0) -> None:
        self.data = memoryview(seg._map)[ring.HEADER_SIZE :]
        self.mask = len(self.data) - 1
        self.pos = head

    def retire(self, n: int, half_way: bool = False) -> None:
        """Retires the next `n` records (padding included); the last one only half-way when asked."""
        for i in range(n):
            index = self.pos & self.mask
            length, _type = ring.FRAME.unpack_from(self.data, index)
            assert length > 0
            size = ring.aligned(length)
            I32.pack_into(self.data, index, -size)  # step 1: "consumed, skip `size`"
            if half_way and i == n - 1:
                cut = 4 + (size - 4) // 2
                self.data[index + 4 : index + cut] = bytes(cut - 4)  # killed while zeroing the body
            else:
                self.data[index + 4 : index + size] = bytes(size - 4)
                I32.pack_into(self.data, index, 0)
            self.pos += size


def test_committed_records_behind_a_zeroed_prefix_are_all_carried_over() -> None:
    seg = ring.Segment.create(1024)
    p = ring.Producer(seg)
    sent = [(10 + i, bytes([i + 1]) * (3 + 5 * i)) for i in range(10)]
    for t, b in sent:
        assert p.write(t, b) == ring.OK
    DeadConsumer(seg).retire(4)  # the dead engine took 4 records of its batch; head never moved
    assert _records(p.unconsumed()) == sent[4:]
    seg.close()


def test_a_record_killed_half_way_through_its_zeroing_counts_as_consumed() -> None:
    seg = ring.Segment.create(1024)
    p = ring.Producer(seg)
    # Bodies of non-zero bytes that look like record headers, so a scan that lands inside one fails loudly.
    sent = [(7, I32.pack(16) * 12) for _ in range(6)]
    for t, b in sent:
        assert p.write(t, b) == ring.OK
    DeadConsumer(seg).retire(3, half_way=True)
    assert _records(p.unconsumed()) == sent[3:]
    seg.close()


def test_zeroed_prefix_across_the_wrap_and_its_padding() -> None:
    seg = ring.Segment.create(256)  # max record 32 bytes
    p, c = ring.Producer(seg), ring.Consumer(seg)
    for i in range(10):  # 10 x 24 = 240: leaves 16 bytes before the end
        assert p.write(1, bytes([i]) * 16) == ring.OK
    assert len(list(c.records(c.drain(limit=8)))) == 8  # a live consumer released head at 192
    sent = [(2, b"x" * 16), (3, b"y" * 16), (4, b"z" * 8)]
    for t, b in sent:  # the first needs a padding record over the last 16 bytes, then wraps
        assert p.write(t, b) == ring.OK
    dead = DeadConsumer(seg, head=8 * 24)
    dead.retire(4)  # two 24-byte records, the padding, and the first wrapped record
    assert _records(p.unconsumed()) == sent[1:]
    seg.close()


def test_nothing_retired_and_nothing_left() -> None:
    seg = ring.Segment.create(512)
    p = ring.Producer(seg)
    assert p.unconsumed() == b""
    sent = [(5, b"abc"), (6, b"")]
    for t, b in sent:
        assert p.write(t, b) == ring.OK
    assert _records(p.unconsumed()) == sent
    DeadConsumer(seg).retire(2)
    assert p.unconsumed() == b""
    seg.close()
