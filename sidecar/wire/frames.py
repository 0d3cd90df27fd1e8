"""Server-to-client WebSocket frames as bytes (RFC 6455 §5.2), sans-I/O.

picows writes one frame per `send()` call, and each is a `send(2)` system call: on a small VM
that call costs more than everything the sidecar does in Python to make the message (half of
the push path's CPU in a profile, bench/push). Several messages owed to one client in one
drain can instead go out as one buffer of whole frames, in one write: what `frames()` builds.
A server's frames are never masked (§5.3), so a frame is a 2-, 4- or 10-byte header and the
payload.
"""

from __future__ import annotations

import struct

FIN = 0x80
OP_TEXT = 0x1
OP_BINARY = 0x2
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
_SHORT = [bytes((FIN | OP_TEXT, n)) for n in range(126)], [bytes((FIN | OP_BINARY, n)) for n in range(126)]


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
