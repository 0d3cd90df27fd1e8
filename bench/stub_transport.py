"""A picows WSTransport and its underlying transport in one object, for the benches that drive
the sidecar's shell without sockets (bench/push/core_cost.py, bench/protocol/ingest_cost.py)."""

from __future__ import annotations


class StubTransport:
    """Keeps what it is given: `out`, one bytes object per send or write, each whole frames."""

    is_disconnected = False
    is_close_frame_sent = False

    def __init__(self, binary: bool) -> None:
        self.underlying_transport = self
        self.binary = binary
        self.out: list[bytes] = []

    def send(self, _type: object, data: bytes) -> None:  # one frame's payload: framed as picows would
        n = len(data)
        op = 0x82 if self.binary else 0x81
        head = bytes((op, n)) if n < 126 else bytes((op, 126)) + n.to_bytes(2, "big") if n < 65536 else \
            bytes((op, 127)) + n.to_bytes(8, "big")
        self.out.append(head + bytes(data))

    def write(self, data: bytes) -> None:  # whole frames
        self.out.append(bytes(data))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass
