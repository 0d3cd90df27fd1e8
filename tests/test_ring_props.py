"""Property tests of the ring's framing against a model of positions, padding and free space."""

from __future__ import annotations

import itertools
import uuid
from collections import deque

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import ring


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


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 140)),  # up to past the max record: TOO_LARGE
        st.tuples(st.just("write_max"), st.just(0)),
        st.tuples(st.just("read"), st.integers(1, 12)),
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.sampled_from([256, 512, 1024]), script=ops)
def test_ring_matches_the_model_for_any_sequence_of_writes_and_reads(capacity: int, script: list) -> None:
    name = f"/dgdo-prop-{uuid.uuid4().hex[:12]}"
    seg = ring.Segment(name, create_capacity=capacity)
    try:
        p, c, model = ring.Producer(seg), ring.Consumer(seg), Model(capacity)
        counter = itertools.count()
        for op, arg in script:
            if op in ("write", "write_max"):
                n = next(counter)
                size = model.max_body if op == "write_max" else arg
                body = bytes((n + i) & 0xFF for i in range(size))
                assert p.write(n % 1000, body) == model.write(n % 1000, body)
            else:
                got = [(r.type, bytes(r.body)) for r in c.records(c.drain(limit=arg))]
                assert got == model.read(arg)
            assert p.depth() == model.tail - model.head
        # Empty: after draining everything both agree there is nothing left.
        rest = [(r.type, bytes(r.body)) for r in c.records(c.drain())]
        assert rest == model.read(10**6)
        assert c.drain() == 0 and not c.pending()
    finally:
        seg.close()
        seg.unlink()
