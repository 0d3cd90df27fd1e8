"""Server-to-client WebSocket frames as bytes (RFC 6455 §5.2), sans-I/O.

picows writes one frame per `send()` call, and each is a `send(2)` system call: on a small VM
that call costs more than everything the sidecar does in Python to make the message (half of
the push path's CPU in a profile, bench/push). So the sidecar frames messages itself: the
session core appends each message owed to a client in one drain as a whole frame to that
client's buffer (`HEADERS` / `header()`, then the payload), and the shell writes the
buffer in one write (session/core.py `writes_to_send`). A server's frames are never masked
(§5.3), so a frame is a 2-, 4- or 10-byte header and the payload; the header always takes the
shortest form that holds the length (§5.2: "the minimal number of bytes MUST be used").

`frames()` builds several at once from payloads; `payloads()` reads whole frames back (for
tests, and for callers that want one payload per message).
"""

from __future__ import annotations

import struct

FIN = 0x80
OP_TEXT = 0x1
OP_BINARY = 0x2
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
_SHORT = [bytes((FIN | OP_TEXT, n)) for n in range(126)], [bytes((FIN | OP_BINARY, n)) for n in range(126)]
HEADERS = tuple([*short, *(_LEN16.pack(short[0][0], 126, n) for n in range(126, 1024))] for short in _SHORT)
"""`HEADERS[binary][n]`: the header of a final frame of n < 1024 payload bytes (every push), made once."""


def header(binary: bool, size: int) -> bytes:
    """The header of one final, unmasked data frame of `size` payload bytes."""
    if size < 126:
        return _SHORT[binary][size]
    first = FIN | (OP_BINARY if binary else OP_TEXT)
    if size < 65536:
        return _LEN16.pack(first, 126, size)
    return _LEN64.pack(first, 127, size)


def frames(binary: bool, payloads: list[bytes]) -> bytes:
    """Whole frames, one per payload, back to back: one write puts them all on the wire."""
    parts = []
    for p in payloads:
        parts.append(header(binary, len(p)))
        parts.append(p)
    return b"".join(parts)


def payloads(data: bytes | bytearray) -> list[bytes]:
    """The payloads of the whole, unmasked frames in `data`, in order (what `frames()` and the core write)."""
    out, off, end = [], 0, len(data)
    while off < end:
        n, off = data[off + 1] & 0x7F, off + 2
        if n == 126:
            (n,), off = struct.unpack_from("!H", data, off), off + 2
        elif n == 127:
            (n,), off = struct.unpack_from("!Q", data, off), off + 8
        out.append(bytes(data[off:off + n]))
        off += n
    return out
