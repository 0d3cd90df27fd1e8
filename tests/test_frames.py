"""Server frames built by sidecar/wire/frames.py read back as RFC 6455 frames, at every length boundary."""

from __future__ import annotations

import struct

import pytest

from sidecar.wire.frames import frames, header


def parse(data: bytes) -> list[tuple[int, bool, bytes]]:
    """(opcode, fin, payload) of each unmasked frame in `data` (RFC 6455 §5.2)."""
    out, off = [], 0
    while off < len(data):
        b0, b1 = data[off], data[off + 1]
        assert not b1 & 0x80, "a server frame is never masked"
        n, off = b1 & 0x7F, off + 2
        if n == 126:
            (n,), off = struct.unpack_from("!H", data, off), off + 2
        elif n == 127:
            (n,), off = struct.unpack_from("!Q", data, off), off + 8
        out.append((b0 & 0x0F, bool(b0 & 0x80), data[off : off + n]))
        off += n
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("binary", [False, True])
def test_one_frame_of_any_size_reads_back(size: int, binary: bool) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert parse(frames(binary, [payload])) == [(2 if binary else 1, True, payload)]
    assert len(header(binary, size)) == (2 if size < 126 else 4 if size < 65536 else 10)


def test_several_payloads_become_as_many_frames_in_order() -> None:
    payloads = [b'{"type":"order_update"}', b"x" * 300, b""]
    assert parse(frames(False, payloads)) == [(1, True, p) for p in payloads]
