"""The record pattern dgdo-ringpeer writes and checks, so Python can play either side."""

from __future__ import annotations

import struct

SEQ = struct.Struct("<Q")
PEER_TYPE = 7


def payload_len(seq: int, max_payload: int) -> int:
    return (seq * 7919) % (max_payload + 1)


def body(seq: int, max_payload: int) -> bytes:
    n = payload_len(seq, max_payload)
    return SEQ.pack(seq) + bytes((seq + i) & 0xFF for i in range(n))


def check(expected_seq: int, type_: int, data: bytes | memoryview, max_payload: int) -> None:
    """Raises AssertionError naming the first difference."""
    assert type_ == PEER_TYPE, f"record {expected_seq}: type {type_}"
    (seq,) = SEQ.unpack_from(data)
    assert seq == expected_seq, f"expected seq {expected_seq}, got {seq} (loss, duplicate or reorder)"
    assert bytes(data) == body(seq, max_payload), f"record {seq}: torn or corrupt body"
