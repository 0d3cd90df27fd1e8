"""The bridge's delivery rules, fed engine records as bytes: the welcome waits for the engine's
SESSION_STATE and comes first, replays pass, and nothing is delivered twice.

The engine numbers and keeps reliable messages (engine/src/core/delivery.hpp); the bridge only
gates and de-duplicates them. End to end, with the real engine: test_resume.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from sidecar import events as E
from sidecar import records as R
from sidecar.bridge import Bridge
from sidecar.connections import Connection, Registry
from sidecar.protocol import JSON
from sidecar.ring import frame
from sidecar.stats import SidecarStats


class _Wire:
    """A picows-shaped transport that keeps what was written (JSON)."""

    is_disconnected = False

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, _msg_type: object, data: bytes) -> None:
        self.sent.append(json.loads(data))


def _bridge(last_seq: int | None = None) -> tuple[Bridge, Connection]:
    reg = Registry(1)
    bridge = Bridge(reg, SidecarStats())
    conn = reg.new(E.PASSENGER, "p1", JSON, last_seq)
    conn.transport = _Wire()  # type: ignore[assignment]
    reg.add(conn, on_replaced=lambda old: None)
    return bridge, conn


def _feed(bridge: Bridge, *records: tuple[int, bytes]) -> None:
    buf = bytearray()
    for type_, body in records:
        frame(buf, type_, body)
    bridge.on_records(SimpleNamespace(buffer=memoryview(bytes(buf))), len(buf))


def _update(seq: int, to_conn: int = 0, app: bytes = b"p1") -> tuple[int, bytes]:
    return R.T.OUT_ORDER_UPDATE, R.OUT_ORDER_UPDATE.pack(
        0, 0, to_conn, 1, R.Role.PASSENGER, app, 1001, R.OrderStatus.ACCEPTED, 0, b"d1", b"p1", seq)


def _state(conn_id: int, seq: int, resumed: bool) -> tuple[int, bytes]:
    return R.T.OUT_SESSION_STATE, R.OUT_SESSION.pack(0, 0, conn_id, 1, R.Role.PASSENGER, b"p1", seq, resumed)


def test_nothing_reaches_a_connection_before_the_engine_answers_its_session_and_the_welcome_comes_first() -> None:
    bridge, conn = _bridge()
    _feed(bridge, _update(5))  # committed before the engine took the open: part of the snapshot to come
    assert conn.transport.sent == []
    _feed(bridge, _state(conn.conn_id, 5, False), _update(6, conn.conn_id), _update(7))
    sent = conn.transport.sent
    assert [(m["type"], m.get("seq"), m.get("resumed")) for m in sent] == [
        ("welcome", 5, False), ("order_update", 6, None), ("order_update", 7, None)]


def test_a_resumed_welcome_lets_the_replay_through_and_a_re_announce_repeats_nothing() -> None:
    bridge, conn = _bridge(last_seq=3)
    _feed(bridge, _state(conn.conn_id, 5, True), _update(4, conn.conn_id), _update(5, conn.conn_id))
    assert [(m["type"], m["seq"]) for m in conn.transport.sent] == [("welcome", 5), ("order_update", 4),
                                                                    ("order_update", 5)]
    assert conn.last_seq == 5
    # The engine restarted; the sidecar re-announced the session from last_seq 3 (say): no second
    # welcome, and what was delivered already is not sent again.
    _feed(bridge, _state(conn.conn_id, 5, True), _update(4, conn.conn_id), _update(5, conn.conn_id), _update(6))
    assert [(m["type"], m["seq"]) for m in conn.transport.sent[3:]] == [("order_update", 6)]


def test_a_record_for_a_connection_id_now_held_by_another_app_is_not_delivered() -> None:
    bridge, conn = _bridge()
    _feed(bridge, _state(conn.conn_id, 0, False))
    _feed(bridge, _update(1, conn.conn_id, app=b"p2"))  # conn ids are per sidecar process
    assert [m["type"] for m in conn.transport.sent] == ["welcome"]
