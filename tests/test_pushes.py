"""The push path's typed messages and framing: the same bytes as before, one buffer per client per drain.

wire/pushes.py types the server messages made from engine records, which the previous core built
as maps; each must write the very bytes the map did, in both formats, with every optional field
present or absent. round_to must be `round` bit for bit. The core frames what one drain
owes a client into one buffer (SessionCore.writes_to_send) that reads back as the messages
data_to_send() gives one by one, never reuses a buffer it handed over, and cuts a replaced
position out however the replaced ones lie in the buffer.
"""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

import msgpack
import pytest

from sidecar.engine import records as R
from sidecar.session.core import SessionCore
from sidecar.session.session import Session
from sidecar.wire.codec import ENCODE_INTO, JSON, MSGPACK, encode
from sidecar.wire.frames import HEADERS, frames, header, payloads
from sidecar.wire.messages import Role
from sidecar.wire.pushes import (
    CancelOrder,
    DriverPosition,
    EstimateUpdate,
    NewOrder,
    OrderUpdate,
    Point,
    round_to,
)

TS = 1_764_090_000_000

# (typed, the map the previous core built for the same record: keys in the order it added them)
SAME_MESSAGES: list[tuple[Any, dict[str, Any]]] = [
    (OrderUpdate(1001, "accepted", TS, "d1", seq=2),
     {"type": "order_update", "order_id": 1001, "status": "accepted", "ts": TS, "driver_id": "d1", "seq": 2}),
    (OrderUpdate(1001, "canceled", TS, "d1", "p1", "passenger_canceled", 7),
     {"type": "order_update", "order_id": 1001, "status": "canceled", "ts": TS, "driver_id": "d1",
      "passenger_id": "p1", "reason": "passenger_canceled", "seq": 7}),
    (OrderUpdate(5, "searching", TS),
     {"type": "order_update", "order_id": 5, "status": "searching", "ts": TS}),
    (NewOrder(1001, "p1", Point(38.5598, 68.787), Point(38.575, 68.795), 610.2, 165.0, 15.0, TS, 1),
     {"type": "new_order", "order_id": 1001, "passenger_id": "p1", "pickup": {"lat": 38.5598, "lon": 68.787},
      "dropoff": {"lat": 38.575, "lon": 68.795}, "distance_m": 610.2, "eta_s": 165.0, "expires_in_s": 15.0,
      "ts": TS, "seq": 1}),
    (CancelOrder(1001, "offer_expired", TS, 3),
     {"type": "cancel_order", "order_id": 1001, "reason": "offer_expired", "ts": TS, "seq": 3}),
    (DriverPosition(2**63 - 1, "bench-driver", -38.5, 179.99, TS, 0.0, 31.1),
     {"type": "driver_location", "order_id": 2**63 - 1, "driver_id": "bench-driver", "lat": -38.5, "lon": 179.99,
      "ts": TS, "heading": 0.0, "speed_kmh": 31.1}),
    (DriverPosition(1001, "d1", 38.5605, 68.784, TS, speed_kmh=0.0),
     {"type": "driver_location", "order_id": 1001, "driver_id": "d1", "lat": 38.5605, "lon": 68.784, "ts": TS,
      "speed_kmh": 0.0}),
    (EstimateUpdate(1001, 123.5, 678.9, TS),
     {"type": "estimate_update", "order_id": 1001, "eta_s": 123.5, "distance_m": 678.9, "ts": TS}),
]


@pytest.mark.parametrize(("typed", "as_map"), SAME_MESSAGES)
def test_a_typed_push_writes_the_bytes_of_the_map_it_replaces_in_both_formats(typed: Any, as_map: dict) -> None:
    scratch = bytearray(b"left over from the last message")
    for binary, fmt in ((False, JSON), (True, MSGPACK)):
        ENCODE_INTO[binary](typed, scratch)
        assert bytes(scratch) == encode(typed, fmt) == encode(as_map, fmt)
    assert json.loads(encode(typed, JSON)) == msgpack.unpackb(encode(typed, MSGPACK)) == as_map
    assert typed.__struct_config__.tag == as_map["type"]


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_round_to_is_round_bit_for_bit() -> None:
    rng = random.Random(9)
    values = [0.0, -0.0, 1e-20, 0.05, 0.15, 0.25, 0.35, 2.5, 0.0625, 0.0005, 0.0015, 360.0, 400.0, math.nan,
              math.inf, -math.inf, -1.0, -0.04, 1e10, 123.45, 99_999_999.95]
    for _ in range(20_000):
        k = rng.randrange(800_000)
        tie = k / 2000  # halves at both precisions, and their neighbours
        values += [k / 20, k / 200, tie, math.nextafter(tie, 0.0), math.nextafter(tie, 1e9), _f32(k / 20)]
        values += [_f32(rng.uniform(0, 400)), rng.uniform(0, 1e6), rng.uniform(0, 100)]
    for v in values:
        for digits in (0, 1, 2, 3):
            a, b = round_to(v, digits), round(v, digits)
            assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), (
                v, digits, a, b)


@pytest.mark.parametrize("size", [0, 125, 126, 1023, 1024, 65535, 65536])
@pytest.mark.parametrize("binary", [False, True])
def test_headers_take_the_shortest_form_and_read_back(size: int, binary: bool) -> None:
    if size < 1024:
        assert HEADERS[binary][size] == header(binary, size)  # the table is the same as computing it
    assert len(header(binary, size)) == (2 if size < 126 else 4 if size < 65536 else 10)  # RFC 6455 §5.2
    data = [bytes([size % 251]) * size, b"{}"]
    assert payloads(frames(binary, data)) == data


# ---- the core's buffers --------------------------------------------------------------------------

WALL_NS = 1_700_000_000_123_000_000


def _core() -> SessionCore:
    core = SessionCore(1, wall_ns=lambda: WALL_NS, mono_ns=lambda: 5_000_000_000)
    core.engine_attached()
    core.records_to_send()
    return core


def _feed(core: SessionCore, *records: tuple[int, bytes]) -> None:
    buf = bytearray()
    for type_, body in records:
        R.frame(buf, type_, body)
    core.receive_records(memoryview(bytes(buf)), len(buf))


def _welcomed(core: SessionCore, app_id: str, fmt: Any = JSON) -> Session:
    s = core.new_session(Role.PASSENGER, app_id, fmt)
    core.open(s)
    core.records_to_send()
    _feed(core, (R.T.OUT_SESSION_STATE, R.OUT_SESSION.pack(0, WALL_NS, s.conn_id, 1, s.wire_role, app_id.encode(),
                                                           0, 0, 0)))
    core.writes_to_send()
    return s


def _meta(s: Session) -> tuple:
    return (0, WALL_NS - 250_000, 0, 1, s.wire_role, s.app_id.encode())


def _update(s: Session, seq: int) -> tuple[int, bytes]:
    return R.T.OUT_ORDER_UPDATE, R.OUT_ORDER_UPDATE.pack(*_meta(s), 1001, R.OrderStatus.ARRIVING, 0, b"d1", b"p1", seq)


def _position(s: Session, lat: float, driver: bytes = b"d1", order_id: int = 1001) -> tuple[int, bytes]:
    return R.T.OUT_DRIVER_POSITION, R.OUT_DRIVER_POSITION.pack(*_meta(s), order_id, driver, lat, 68.78, 80.0, 31.1)


def _read(s: Session, data: bytes | bytearray) -> list[dict[str, Any]]:
    return [msgpack.unpackb(p) if s.binary else json.loads(p) for p in payloads(data)]


def test_one_drain_is_one_buffer_of_whole_frames_per_client_and_never_reused() -> None:
    core = _core()
    p1, p2 = _welcomed(core, "p1"), _welcomed(core, "p2", MSGPACK)
    _feed(core, _update(p1, 1), _position(p2, 38.1), _position(p1, 38.2), _update(p2, 1))
    writes = core.writes_to_send()
    assert [s for s, _ in writes] == [p1, p2]  # in the order of their first frame
    (_, b1), (_, b2) = writes
    assert [(m["type"], m.get("seq"), m.get("lat")) for m in _read(p1, b1)] == [
        ("order_update", 1, None), ("driver_location", None, 38.2)]
    assert [(m["type"], m.get("seq"), m.get("lat")) for m in _read(p2, b2)] == [
        ("driver_location", None, 38.1), ("order_update", 1, None)]
    assert b1[0] == 0x81 and b2[0] == 0x82  # text frames for JSON, binary for msgpack
    assert core.writes_to_send() == []
    _feed(core, _update(p1, 2))
    ((_, again),) = core.writes_to_send()
    assert again is not b1 and len(b1) > len(again)  # a new buffer: the one handed over is left alone
    assert [m["seq"] for m in _read(p1, again)] == [2]


def test_replaced_positions_are_cut_out_wherever_they_lie_in_the_buffer() -> None:
    core = _core()
    p = _welcomed(core, "p1")
    # Two streams (two drivers): the later one is replaced first, then the earlier one.
    _feed(core, _position(p, 38.1, b"dA", 1), _position(p, 38.2, b"dB", 2), _update(p, 1),
          _position(p, 38.3, b"dB", 2), _position(p, 38.4, b"dA", 1), _position(p, 38.5, b"dB", 2))
    assert [(m["type"], m.get("driver_id"), m.get("lat")) for m in _read(p, core.writes_to_send()[0][1])] == [
        ("order_update", "d1", None), ("driver_location", "dA", 38.4), ("driver_location", "dB", 38.5)]
    assert core.stats.positions_coalesced == 3 and core.stats.messages_out == 3
    assert core.stats.push_latency.count == 3


def test_data_to_send_gives_the_same_messages_one_by_one() -> None:
    core = _core()
    p = _welcomed(core, "p1")
    _feed(core, _update(p, 1), _position(p, 38.1), _position(p, 38.2))
    out = core.data_to_send()
    assert [(s, json.loads(d)["type"]) for s, d in out] == [(p, "order_update"), (p, "driver_location")]
    assert json.loads(out[1][1])["lat"] == 38.2
