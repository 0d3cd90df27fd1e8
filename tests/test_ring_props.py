"""Property tests of the ring's framing against a model of positions, padding and free space."""

from __future__ import annotations

import itertools
from collections import deque

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.engine import ring


class Model:
    """What the ring must do, in positions: padding at the wrap, FULL exactly when space is short."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.max_body = capacity // 8 - ring.RECORD_HEADER
        self.head = self.tail = 0
        self.records: deque[tuple[int, bytes, int]] = deque()  # (type, body, bytes it occupies incl. padding)

    def write(self, type_: int, body: bytes) -> int:
        if len(body) > self.max_body:
            return ring.TOO_LARGE
        required = ring.aligned(len(body) + ring.RECORD_HEADER)
        to_end = self.capacity - (self.tail % self.capacity)
        needed = required if required <= to_end else required + to_end
        if self.tail + needed - self.head > self.capacity:
            return ring.FULL
        self.tail += needed
        self.records.append((type_, body, needed))
        return ring.OK

    def read(self, limit: int) -> list[tuple[int, bytes]]:
        out = []
        while self.records and len(out) < limit:
            type_, body, needed = self.records.popleft()
            self.head += needed
            out.append((type_, body))
        return out


def _free_region_is_zero(seg: ring.Segment, capacity: int, head: int, tail: int) -> bool:
    """Every byte the producer may write next (tail up to head + capacity) reads as zero: uncommitted."""
    data = memoryview(seg._map)[ring.HEADER_SIZE : ring.HEADER_SIZE + capacity]
    start, free = tail % capacity, capacity - (tail - head)
    first = min(free, capacity - start)
    return not any(data[start : start + first]) and not any(data[: free - first])


ops = st.lists(
    st.one_of(
        # Body sizes as a share of the largest allowed one, so every capacity sees small, large and
        # just-too-large (TOO_LARGE) records.
        st.tuples(st.just("write"), st.integers(0, 110)),
        st.tuples(st.just("write_max"), st.just(0)),
        st.tuples(st.just("fill_end"), st.just(0)),  # a record that ends exactly at the end: no padding
        st.tuples(st.just("read"), st.integers(1, 12)),
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.sampled_from([256, 512, 1024, 4096]), script=ops)
def test_ring_matches_the_model_for_any_sequence_of_writes_and_reads(capacity: int, script: list) -> None:
    seg = ring.Segment.create(capacity)
    try:
        p, c, model = ring.Producer(seg), ring.Consumer(seg), Model(capacity)
        counter = itertools.count()
        for op, arg in script:
            if op in ("write", "write_max", "fill_end"):
                n = next(counter)
                if op == "write_max":
                    size = model.max_body
                elif op == "fill_end":
                    to_end = capacity - model.tail % capacity
                    size = min(to_end, capacity // 8) - ring.RECORD_HEADER  # exact fit when the max allows it
                else:
                    size = (model.max_body + 8) * arg // 100
                body = bytes((n + i) & 0xFF for i in range(size))
                before = model.tail
                assert p.write(n % 1000, body) == model.write(n % 1000, body)
                if op == "fill_end" and model.tail != before and to_end <= capacity // 8:
                    assert model.tail % capacity == 0 and model.tail - before == to_end  # filled, no padding
            else:
                got = [(r.type, bytes(r.body)) for r in c.records(c.drain(limit=arg))]
                assert got == model.read(arg)
            assert p.depth() == model.tail - model.head
            assert _free_region_is_zero(seg, capacity, model.head, model.tail), f"after {op}"
        # Empty: after draining everything both agree there is nothing left.
        rest = [(r.type, bytes(r.body)) for r in c.records(c.drain())]
        assert rest == model.read(10**6)
        assert c.drain() == 0 and not c.pending()
        assert _free_region_is_zero(seg, capacity, model.head, model.tail)
    finally:
        seg.close()
