"""The record pattern dgdo-ringpeer writes and checks, so Python can play either side."""

from __future__ import annotations

import struct

SEQ = struct.Struct("<Q")
PEER_TYPE = 7
_PATTERN = bytes(range(256)) * 64  # byte i of record seq is (seq + i) & 0xff: a slice of this


def payload_len(seq: int, max_payload: int) -> int:
    return (seq * 7919) % (max_payload + 1)


def body(seq: int, max_payload: int) -> bytes:
    start = seq & 0xFF
    return SEQ.pack(seq) + _PATTERN[start : start + payload_len(seq, max_payload)]


def check(expected_seq: int, type_: int, data: bytes | memoryview, max_payload: int) -> None:
    """Raises AssertionError naming the first difference."""
    assert type_ == PEER_TYPE, f"record {expected_seq}: type {type_}"
    (seq,) = SEQ.unpack_from(data)
    assert seq == expected_seq, f"expected seq {expected_seq}, got {seq} (loss, duplicate or reorder)"
    assert data == body(seq, max_payload), f"record {seq}: torn or corrupt body"
