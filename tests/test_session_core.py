"""The session core, driven with bytes and typed values only: no socket, no event loop, no ring.

Engine records go in as the bytes a ring drain yields; client messages as the codec's typed
values; what comes out is checked as the frames (decoded by the independent `msgpack`/`json`
readers), records and closes a shell would write. End to end, with the real engine and
sidecar: test_resume.py, test_e2e_*.py, test_engine_death.py, test_admin.py.
"""

from __future__ import annotations

import ast
import errno
import json
import math
import pathlib
import subprocess
import sys
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.engine import records as R
from sidecar.session.core import (
    CLOSE_EXPIRED,
    CLOSE_REPLACED,
    CLOSE_SLOW_READER,
    CLOSE_TOO_BIG,
    SessionCore,
    ToEngine,
)
from sidecar.session.session import Session
from sidecar.session.stats import LinkGauges
from sidecar.wire import auth
from sidecar.wire.codec import JSON, MSGPACK, Decoder, Format, Request
from sidecar.wire.errors import BadMessage, ErrorCode
from sidecar.wire.frames import payloads
from sidecar.wire.messages import Role

WALL_NS = 1_700_000_000_123_000_000


def make_core(attached: bool = True, **kw: Any) -> SessionCore:
    core = SessionCore(1, wall_ns=lambda: WALL_NS, mono_ns=lambda: 5_000_000_000, **kw)
    if attached:
        core.engine_attached()
    core.records_to_send()
    return core


def connect(core: SessionCore, role: Role, app_id: str, fmt: Format = JSON, last_seq: int | None = None,
            welcome: bool = True, expires: int | None = None) -> Session:
    """A registered session; welcomed (and its welcome and announcement drained) unless `welcome` is False."""
    s = core.new_session(role, app_id, fmt, last_seq, expires=expires)
    core.open(s)
    if welcome:
        core.records_to_send()
        feed(core, state(s, 0, False))
        core.stats.records_in = 0
        assert sent(core)[s][0]["type"] == "welcome"
    return s


def feed(core: SessionCore, *records: tuple[int, bytes]) -> None:
    buf = bytearray()
    for type_, body in records:
        R.frame(buf, type_, body)
    core.receive_records(memoryview(bytes(buf)), len(buf))


def sent(core: SessionCore) -> dict[Session, list[dict[str, Any]]]:
    """The frames of one drain, decoded per session, in order."""
    out: dict[Session, list[dict[str, Any]]] = {}
    for s, data in core.data_to_send():
        out.setdefault(s, []).append(msgpack.unpackb(data) if s.binary else json.loads(data))
    return out


def request(message: dict[str, Any], session: Session) -> Request:
    return Decoder(session.role, session.app_id).feed(False, True, json.dumps(message).encode())  # type: ignore[return-value]


def meta(to: Session | None = None, conn: int = 0, role: int = R.Role.PASSENGER, app: bytes = b"p1") -> tuple:
    if to is not None:
        role, app = to.wire_role, to.app_id.encode()
    return (0, WALL_NS - 250_000, conn, 1, role, app)


def state(s: Session, seq: int, resumed: bool, online: bool = False) -> tuple[int, bytes]:
    return R.T.OUT_SESSION_STATE, R.OUT_SESSION.pack(*meta(s, s.conn_id), seq, resumed, online)


def update(seq: int, to_conn: int = 0, app: bytes = b"p1", status: R.OrderStatus = R.OrderStatus.ACCEPTED,
           role: int = R.Role.PASSENGER, reason: int = 0) -> tuple[int, bytes]:
    return R.T.OUT_ORDER_UPDATE, R.OUT_ORDER_UPDATE.pack(*meta(None, to_conn, role, app), 1001, status, reason,
                                                         b"d1", b"p1", seq)


def position(to: Session, lat: float, driver: bytes = b"d1", order_id: int = 1001,
             heading: float = math.nan) -> tuple[int, bytes]:
    return R.T.OUT_DRIVER_POSITION, R.OUT_DRIVER_POSITION.pack(*meta(to), order_id, driver, lat, 68.78, heading, 30.0)


def result(corr: int, status: R.Result = R.Result.OK, order_id: int = 0) -> tuple[int, bytes]:
    return R.T.OUT_COMMAND_RESULT, R.OUT_COMMAND_RESULT.pack(*meta(), corr, order_id, status)


# ---- delivery: welcome gating, seq continuity, de-duplication, resume -----------------------------


def test_nothing_reaches_a_session_before_the_engine_answers_it_and_the_welcome_comes_first() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1", welcome=False)
    feed(core, update(5))  # committed before the engine took the open: part of the snapshot to come
    assert sent(core) == {}
    feed(core, state(p, 5, False), update(6, p.conn_id), update(7))
    assert [(m["type"], m.get("seq"), m.get("resumed")) for m in sent(core)[p]] == [
        ("welcome", 5, False), ("order_update", 6, None), ("order_update", 7, None)]
    assert core.stats.messages_out == 2  # the welcome is a handshake, not a message


def test_the_operators_map_shows_a_driver_as_the_engine_has_it_online_or_not() -> None:
    """A driver app open off shift (no `online` yet), or one back after its grace ran out, is offline
    in the engine: never offered a ride. The map and `drivers_by_state` must not call it available."""
    core = make_core()
    d1 = connect(core, Role.DRIVER, "d1", welcome=False)
    d2 = connect(core, Role.DRIVER, "d2", welcome=False)
    feed(core, state(d1, 0, False, online=False), state(d2, 0, False, online=True))
    for s in (d1, d2):
        core.receive(s, request({"type": "driver_location", "lat": 38.56, "lon": 68.78}, s))
    assert core.feed.driver_counts() == {"available": 1, "offered": 0, "on_trip": 0, "offline": 1}
    assert {r[0]: r[3] for r in core.feed.snapshot(0)["drivers"]} == {"d1": "offline", "d2": "available"}


def test_a_resumed_welcome_lets_the_replay_through_and_a_re_announce_repeats_nothing() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1", last_seq=3, welcome=False)
    feed(core, state(p, 5, True), update(4, p.conn_id), update(5, p.conn_id))
    assert [(m["type"], m["seq"]) for m in sent(core)[p]] == [("welcome", 5), ("order_update", 4),
                                                             ("order_update", 5)]
    assert p.last_seq == 5
    # The engine restarted; the session was re-announced: no second welcome, nothing delivered twice.
    feed(core, state(p, 5, True), update(4, p.conn_id), update(5, p.conn_id), update(6))
    assert [(m["type"], m["seq"]) for m in sent(core)[p]] == [("order_update", 6)]


def test_a_live_message_of_a_restarted_engine_before_its_answer_to_the_re_announce_skips_nothing() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    feed(core, update(1))
    assert [m["seq"] for m in sent(core)[p]] == [1]
    # The engine died having committed seq 2 for p1 (journaled) but before publishing it.
    core.engine_detached()
    core.engine_attached()
    assert [R.IN_SESSION.unpack(r.body)[-1] for r in core.records_to_send() if r.type == R.T.IN_SESSION_OPEN] == [1]
    # The restarted engine numbers a change (another worker's command, a timer) before it reads
    # the re-announcement; its answer then replays what p1 missed since 1, that change included.
    feed(core, update(3))
    feed(core, state(p, 3, True), update(2, p.conn_id), update(3, p.conn_id), update(4))
    assert [m["seq"] for m in sent(core)[p]] == [2, 3, 4]


def test_a_record_for_a_conn_id_now_held_by_another_app_is_not_delivered() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    sent(core)
    feed(core, update(1, p.conn_id, app=b"p2"))  # conn ids are per sidecar process
    assert sent(core) == {}


def test_a_snapshot_welcome_numbers_fresh_messages_above_its_seq() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1", last_seq=2, welcome=False)
    feed(core, state(p, 9, False), update(8), update(10))  # 8 predates the snapshot: in it already
    assert [(m["type"], m["seq"]) for m in sent(core)[p]] == [("welcome", 9), ("order_update", 10)]


def test_open_forwards_last_seq_and_a_re_attached_engine_hears_how_far_each_session_got() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1", last_seq=7, welcome=False)
    d = connect(core, Role.DRIVER, "d1", welcome=False)
    opens = core.records_to_send()
    sent(core)
    assert [r.type for r in opens] == [R.T.IN_SESSION_OPEN] * 2
    fields = R.IN_SESSION.unpack(opens[0].body)
    assert (fields[2], fields[5].rstrip(b"\0"), fields[6], fields[7]) == (p.conn_id, b"p1",
                                                                           R.SESSION_HAS_LAST_SEQ, 7)
    assert R.IN_SESSION.unpack(opens[1].body)[6] == 0  # no ?last_seq: a snapshot is asked for
    feed(core, state(p, 7, True), update(8), state(d, 0, False))
    core.receive(d, request({"type": "driver_status", "status": "online"}, d))
    core.receive(d, request({"type": "driver_location", "lat": 38.5, "lon": 68.7}, d))
    core.records_to_send()
    core.engine_detached()
    core.engine_attached()
    again = core.records_to_send()
    assert [r.type for r in again] == [R.T.IN_SESSION_OPEN, R.T.IN_SESSION_OPEN, R.T.IN_DRIVER_STATUS,
                                       R.T.IN_DRIVER_LOCATION]
    assert R.IN_SESSION.unpack(again[0].body)[6:] == (R.SESSION_HAS_LAST_SEQ, 8)  # resumes from what it got
    assert all(r.session is None for r in again)  # announcements: nobody to answer if not taken


def test_every_announcement_of_a_session_carries_when_its_upgrade_was_taken() -> None:
    # The engine keeps, of two connections of one app on two workers, the one opened later by this
    # time (recv_ns), not the one announced later: taken at the upgrade, kept for the session's life.
    clock = iter(range(1_000, 10**9, 1_000))
    core = SessionCore(1, wall_ns=lambda: WALL_NS, mono_ns=lambda: next(clock))
    core.engine_attached()
    s = core.new_session(Role.PASSENGER, "p1", JSON)  # the upgrade (before the 101 goes out)
    core.open(s)  # the socket is up, later
    (first,) = core.records_to_send()
    core.engine_detached()
    core.engine_attached()
    (again,) = core.records_to_send()
    assert R.IN_SESSION.unpack(first.body)[0] == R.IN_SESSION.unpack(again.body)[0] == s.opened_ns > 0
    later = core.new_session(Role.PASSENGER, "p1", JSON)  # the app reconnects: a later time
    assert later.opened_ns > s.opened_ns


def test_a_session_gone_while_no_engine_was_attached_is_closed_to_the_next_one() -> None:
    # The link carries to the next engine what the dead one never read, which may hold the open of
    # a session that has gone since: the next engine must hear its close too, after that, or it
    # takes the session for a live one (a driver offered rides it never hears of).
    core = make_core()
    gone = connect(core, Role.DRIVER, "d1", welcome=False)
    replaced = connect(core, Role.PASSENGER, "p1", welcome=False)
    stays = connect(core, Role.PASSENGER, "p2", welcome=False)
    core.records_to_send()  # their opens: in the ring when the engine dies
    core.engine_detached()
    core.disconnected(gone)
    newer = connect(core, Role.PASSENGER, "p1", welcome=False)  # p1 again, on this worker
    assert core.records_to_send() == []  # nothing while no engine is attached
    core.engine_attached()
    again = [(r.type, R.IN_SESSION.unpack(r.body)[2]) for r in core.records_to_send()]
    assert again[:2] == [(R.T.IN_SESSION_CLOSE, gone.conn_id), (R.T.IN_SESSION_CLOSE, replaced.conn_id)]
    assert sorted(again[2:]) == [(R.T.IN_SESSION_OPEN, stays.conn_id), (R.T.IN_SESSION_OPEN, newer.conn_id)]
    core.engine_detached()
    core.engine_attached()  # said once: the next engine after this one hears only the live sessions
    assert [r.type for r in core.records_to_send()] == [R.T.IN_SESSION_OPEN] * 2


def test_no_session_is_announced_while_no_engine_is_attached() -> None:
    core = make_core(attached=False)
    connect(core, Role.PASSENGER, "p1", welcome=False)
    assert core.records_to_send() == []  # announced when an engine attaches
    core.engine_attached()
    assert [r.type for r in core.records_to_send()] == [R.T.IN_SESSION_OPEN]


# ---- routing of every engine record type ----------------------------------------------------------


def test_every_engine_record_type_reaches_its_recipient_as_its_public_message() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    d = connect(core, Role.DRIVER, "d1", fmt=MSGPACK)
    sent(core)
    feed(core,
         (R.T.OUT_NEW_ORDER, R.OUT_NEW_ORDER.pack(*meta(d), 1001, b"p1", 38.5, 68.7, 38.6, 68.8, 812.34, 97.06,
                                                   14.9999, 1)),
         update(2, role=R.Role.DRIVER, app=b"d1"),
         update(1, status=R.OrderStatus.CANCELED, reason=R.Reason.PASSENGER_CANCELED),
         (R.T.OUT_CANCEL_ORDER, R.OUT_CANCEL_ORDER.pack(*meta(d), 1001, R.Reason.OFFER_EXPIRED, 3)),
         position(p, 38.55, heading=90.04),
         (R.T.OUT_ESTIMATE_UPDATE, R.OUT_ESTIMATE_UPDATE.pack(*meta(p), 1001, 123.45, 678.91)),
         (R.T.OUT_NEARBY_DRIVERS, R.OUT_NEARBY_HEAD.pack(*meta(p), 2) + R.NEARBY_ENTRY.pack(b"d1", 38.5, 68.7)
          + R.NEARBY_ENTRY.pack(b"d2", 38.6, 68.8)),
         (R.T.OUT_ENGINE_STATS, R.OUT_ENGINE_STATS.pack(*meta(None, 0, R.Role.ADMIN, b""), 3, 2, 1, 1, 10, 8, 5, 4200,
                                                           1800, 6, 31_000, 4, 2, *[0] * 12, 0, 0, 0)))
    out = sent(core)
    ts = (WALL_NS - 250_000) // 1_000_000
    assert out[d] == [
        {"type": "new_order", "order_id": 1001, "passenger_id": "p1", "pickup": {"lat": 38.5, "lon": 68.7},
         "dropoff": {"lat": 38.6, "lon": 68.8}, "distance_m": 812.3, "eta_s": 97.1, "expires_in_s": 15.0,
         "ts": ts, "seq": 1},
        {"type": "order_update", "order_id": 1001, "status": "accepted", "driver_id": "d1", "passenger_id": "p1",
         "ts": ts, "seq": 2},
        {"type": "cancel_order", "order_id": 1001, "reason": "offer_expired", "ts": ts, "seq": 3},
    ]
    assert out[p] == [
        {"type": "order_update", "order_id": 1001, "status": "canceled", "driver_id": "d1",
         "reason": "passenger_canceled", "ts": ts, "seq": 1},
        {"type": "driver_location", "order_id": 1001, "driver_id": "d1", "lat": 38.55, "lon": 68.78,
         "heading": 90.0, "speed_kmh": 30.0, "ts": ts},
        {"type": "estimate_update", "order_id": 1001, "eta_s": 123.5, "distance_m": 678.9, "ts": ts},
        {"type": "nearby_drivers", "drivers": [{"driver_id": "d1", "lat": 38.5, "lon": 68.7},
                                               {"driver_id": "d2", "lat": 38.6, "lon": 68.8}], "ts": ts},
    ]
    e = core.stats.engine
    assert (e.drivers_online, e.drivers_available, e.active_orders, e.orders_created, e.match_p99_ns,
            e.match_p50_ns) == (3, 2, 1, 10, 4200, 1800)
    assert (e.match_count, e.match_sum_ns, e.match_buckets[:3]) == (6, 31_000, (4, 2, 0))  # the offer histogram
    assert core.stats.records_in == 8
    assert core.stats.push_latency.count == 7  # every delivered message, measured from its commit
    assert core.stats.push_latency.percentiles(50) == [250_000]


def test_a_replay_or_snapshot_carries_the_time_of_its_change_and_counts_no_push_latency() -> None:
    # What the engine sends again to one connection (to_conn) says when its change first went out,
    # an hour ago maybe: the app sees that in ts, and push latency (commit -> socket write) leaves it out.
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    d = connect(core, Role.DRIVER, "d1")
    sent(core)
    then = WALL_NS - 3_600_000_000_000
    back = (0, then, p.conn_id, 1, R.Role.PASSENGER, b"p1")
    to_d = (0, then, d.conn_id, 1, R.Role.DRIVER, b"d1")
    feed(core,
         (R.T.OUT_ORDER_UPDATE, R.OUT_ORDER_UPDATE.pack(*back, 1001, R.OrderStatus.ACCEPTED, 0, b"d1", b"p1", 1)),
         (R.T.OUT_NEW_ORDER, R.OUT_NEW_ORDER.pack(*to_d, 1002, b"p2", 38.5, 68.7, 38.6, 68.8, 800.0, 90.0, 0.0, 1)),
         (R.T.OUT_CANCEL_ORDER, R.OUT_CANCEL_ORDER.pack(*to_d, 1002, R.Reason.OFFER_EXPIRED, 2)))
    out = sent(core)
    assert [m["ts"] for m in out[p] + out[d]] == [then // 1_000_000] * 3
    assert core.stats.messages_out == 3 and core.stats.push_latency.count == 0
    feed(core, update(2))  # live: measured
    assert sent(core)[p][0]["seq"] == 2
    assert core.stats.push_latency.count == 1 and core.stats.push_latency.percentiles(100) == [250_000]


def test_a_unknown_or_broken_record_is_skipped_and_the_batch_goes_on() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    sent(core)
    feed(core, (999, b"\0" * 16), (R.T.OUT_ORDER_UPDATE, b"\0" * 8), update(1))
    assert [m["seq"] for m in sent(core)[p]] == [1]
    assert core.stats.records_in == 3


def test_a_position_without_heading_leaves_it_out() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    sent(core)
    feed(core, position(p, 38.5))
    (m,) = sent(core)[p]
    assert "heading" not in m and m["speed_kmh"] == 30.0


def test_positions_are_latest_wins_per_recipient_within_one_drain_and_never_overtake_an_update() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    p2 = connect(core, Role.PASSENGER, "p2")
    sent(core)
    feed(core, position(p, 38.50), position(p2, 38.60), update(1), position(p, 38.51), position(p, 38.52),
         position(p, 38.40, driver=b"d9", order_id=7))
    out = sent(core)
    assert [(m["type"], m.get("lat")) for m in out[p]] == [("order_update", None), ("driver_location", 38.52),
                                                           ("driver_location", 38.40)]
    assert [m["lat"] for m in out[p2]] == [38.60]
    assert core.stats.positions_coalesced == 2
    assert core.stats.messages_out == 4
    assert core.stats.push_latency.count == 4
    feed(core, position(p, 38.53))  # another drain: nothing left to replace
    assert [m["lat"] for m in sent(core)[p]] == [38.53]


def test_admins_each_see_an_order_change_once_by_topic_and_not_again_in_a_replay() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    orders = connect(core, Role.ADMIN, "ops1")
    everything = connect(core, Role.ADMIN, "ops2", fmt=MSGPACK)
    core.receive(orders, request({"type": "subscribe", "topics": ["active_orders"]}, orders))
    core.receive(everything, request({"type": "subscribe", "topics": ["active_orders", "assignments", "drivers"]},
                                     everything))
    sent(core)
    feed(core, update(1), update(1, p.conn_id))  # the second is a replay to one session
    out = sent(core)
    assert [m["type"] for m in out[orders]] == ["active_orders"]
    assert [m["type"] for m in out[everything]] == ["active_orders", "assignment"]
    assert out[everything][1] == {"type": "assignment", "order_id": 1001, "driver_id": "d1", "passenger_id": "p1",
                                  "ts": out[everything][1]["ts"]}
    d = connect(core, Role.DRIVER, "d1")
    core.receive(d, request({"type": "driver_status", "status": "online"}, d))
    core.disconnected(d)
    out = sent(core)
    assert orders not in out
    assert [(m["type"], m["status"]) for m in out[everything]] == [("driver_status", "online"),
                                                                   ("driver_status", "disconnected")]


def test_admin_log_and_system_stats_go_only_to_their_subscribers_and_stats_come_at_once() -> None:
    core = make_core(gauges=lambda: R_GAUGES)
    logs = connect(core, Role.ADMIN, "ops1")
    quiet = connect(core, Role.ADMIN, "ops2")
    core.receive(logs, request({"type": "subscribe", "topics": ["log", "system_stats"], "id": "s"}, logs))
    out = sent(core)[logs]
    assert out[0] == {"type": "ack", "id": "s", "topics": ["log", "system_stats"], "ts": WALL_NS // 1_000_000}
    assert out[1]["type"] == "system_stats" and out[1]["engine_attached"] is True
    assert out[1]["engine_heartbeat_age_ms"] == 12
    assert out[1]["ring_depths"] == {"in_bytes": 64, "in_backlog_bytes": 0, "out_bytes": 8}
    assert out[1]["connections"] == 2
    core.tick()
    core.engine_available(False, 2.0)
    out = sent(core)
    assert quiet not in out
    assert [m["type"] for m in out[logs]] == ["system_stats", "log"]
    assert out[logs][1]["level"] == "error" and "silent for over 2 s" in out[logs][1]["message"]


# ---- commands: correlation, refusal, detach --------------------------------------------------------


def test_a_command_is_correlated_with_its_answer() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    sent(core)
    core.receive(p, request({"type": "ride_request", "id": "r1", "pickup": {"lat": 38.5, "lon": 68.7},
                             "dropoff": {"lat": 38.6, "lon": 68.8}}, p))
    core.receive(p, request({"type": "order_cancel", "order_id": 99}, p))  # no id: still correlated
    ride, cancel = core.records_to_send()
    assert ride.type == R.T.IN_RIDE_REQUEST and ride.corr and ride.request_id == "r1" and ride.latest is None
    assert R.IN_RIDE_REQUEST.unpack(ride.body)[1] == ride.corr
    assert cancel.corr and cancel.corr != ride.corr
    feed(core, result(cancel.corr, R.Result.NOT_FOUND), result(ride.corr, order_id=1001), result(ride.corr))
    assert sent(core)[p] == [
        {"type": "error", "code": "not_found", "message": "order_id: no such order", "ts": meta()[1] // 1_000_000},
        {"type": "ack", "id": "r1", "order_id": 1001, "ts": meta()[1] // 1_000_000},
    ]  # the second answer to r1 finds nothing pending: not answered twice
    assert core.pending == {}


def test_an_admins_order_cancel_goes_to_the_engine_as_its_cancel_and_is_answered_to_it() -> None:
    """The admin's order_cancel is the order command CANCEL with the admin's role and id: the engine
    decides (any live order; not_found for one that ended) and its answer goes to that admin."""
    core = make_core()
    ops = connect(core, Role.ADMIN, "ops1")
    core.receive(ops, request({"type": "order_cancel", "order_id": 1001, "reason": "phone dead", "id": "k1"}, ops))
    core.receive(ops, request({"type": "order_cancel", "order_id": 999, "id": "k2"}, ops))
    cancel, unknown = core.records_to_send()
    assert cancel.type == R.T.IN_ORDER_COMMAND and cancel.session is ops and cancel.request_id == "k1"
    fields = R.IN_ORDER_COMMAND.unpack(cancel.body)
    assert fields[1] == cancel.corr and fields[2:5] == (ops.conn_id, 1, R.Role.ADMIN)
    assert fields[5].rstrip(b"\0") == b"ops1"
    assert fields[6:] == (1001, R.Command.CANCEL, b"phone dead".ljust(64, b"\0"))
    feed(core, result(cancel.corr, order_id=1001), result(unknown.corr, R.Result.NOT_FOUND, 999))
    ts = meta()[1] // 1_000_000
    assert sent(core)[ops] == [
        {"type": "ack", "id": "k1", "order_id": 1001, "ts": ts},
        {"type": "error", "code": "not_found", "message": "order_id: no such order", "order_id": 999, "id": "k2",
         "ts": ts},
    ]


def test_an_operator_cancel_reaches_the_passenger_and_the_admins_with_its_reason() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    ops = connect(core, Role.ADMIN, "ops1")
    core.receive(ops, request({"type": "subscribe", "topics": ["active_orders"]}, ops))
    sent(core)
    feed(core, update(3, status=R.OrderStatus.CANCELED, reason=R.Reason.OPERATOR_CANCELED))
    out = sent(core)
    assert [(m["type"], m["status"], m["reason"], m["seq"]) for m in out[p]] == [
        ("order_update", "canceled", "operator_canceled", 3)]
    assert [(m["type"], m["status"], m["reason"]) for m in out[ops]] == [
        ("active_orders", "canceled", "operator_canceled")]


def test_a_reused_ride_id_conflict_says_so() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    sent(core)
    core.receive(p, request({"type": "ride_request", "id": 7, "pickup": {"lat": 38.5, "lon": 68.7},
                             "dropoff": {"lat": 38.6, "lon": 68.8}}, p))
    (ride,) = core.records_to_send()
    feed(core, result(ride.corr, R.Result.CONFLICT, 1001))
    (err,) = sent(core)[p]
    assert (err["code"], err["id"], err["order_id"]) == ("conflict", 7, 1001)
    assert err["message"].startswith("id: already used")


def test_positions_go_latest_wins_to_the_engine_and_commands_with_an_id_are_answered() -> None:
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    core.receive(d, request({"type": "driver_location", "lat": 38.5, "lon": 68.7}, d))
    core.receive(d, request({"type": "driver_location", "lat": 38.5, "lon": 68.7, "id": "x"}, d))
    plain, asked = core.records_to_send()
    assert (plain.corr, plain.latest) == (0, "d1")
    assert asked.corr and asked.latest is None  # an answer is due: never coalesced away


def reply_due(core: SessionCore, d: Session) -> bool:
    """Whether a position the driver sends now is marked as answered through this worker at once."""
    core.receive(d, request({"type": "driver_location", "lat": 38.5, "lon": 68.7}, d))
    rec = core.records_to_send()[-1]  # (after a SESSION_CLOSE when a session just left)
    assert rec.type == R.T.IN_DRIVER_LOCATION
    return rec.reply_due


def test_a_position_is_marked_reply_due_only_while_its_driver_has_a_trip_whose_passenger_is_here() -> None:
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")

    assert not reply_due(core, d)  # no trip
    feed(core, update(1, app=b"d1", role=R.Role.DRIVER))  # accepted: the engine forwards to p1 ...
    sent(core)
    assert not reply_due(core, d)  # ... who is not connected here
    p = connect(core, Role.PASSENGER, "p1")
    assert reply_due(core, d)
    for seq, status in ((2, R.OrderStatus.ARRIVING), (3, R.OrderStatus.ARRIVED), (4, R.OrderStatus.STARTED)):
        feed(core, update(seq, app=b"d1", role=R.Role.DRIVER, status=status))
        assert reply_due(core, d), status
    core.disconnected(p)
    assert not reply_due(core, d)  # the passenger left this worker: its positions go elsewhere, or nowhere
    p = connect(core, Role.PASSENGER, "p1")
    assert reply_due(core, d)
    feed(core, update(9, app=b"d1", role=R.Role.DRIVER, status=R.OrderStatus.COMPLETED))
    assert not reply_due(core, d)  # the trip is over
    feed(core, update(10, app=b"d1", role=R.Role.DRIVER))
    feed(core, update(11, status=R.OrderStatus.CANCELED))  # the passenger's copy changes nothing
    assert reply_due(core, d)
    feed(core, update(12, app=b"d1", role=R.Role.DRIVER, status=R.OrderStatus.CANCELED))
    assert not reply_due(core, d)
    feed(core, update(13, app=b"d1", role=R.Role.DRIVER))
    core.disconnected(d)
    d = connect(core, Role.DRIVER, "d1")
    # A new session: it knows its trip again from a replay, a snapshot or a forwarded position.
    assert not reply_due(core, d)


def test_a_driver_that_gives_up_its_trip_no_longer_marks_its_positions_reply_due() -> None:
    # The engine tells a driver that gave up an accepted trip with a cancel_order, not an order_update
    # (core.cpp: back to search without it); its positions are no longer forwarded to that passenger.
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    connect(core, Role.PASSENGER, "p1")
    feed(core, update(1, app=b"d1", role=R.Role.DRIVER))
    feed(core, (R.T.OUT_CANCEL_ORDER, R.OUT_CANCEL_ORDER.pack(*meta(d), 1001, R.Reason.DRIVER_CANCELED, 2)))
    sent(core)
    assert not reply_due(core, d)


def test_a_driver_resumed_mid_trip_is_reply_due_again_once_a_position_reaches_its_passenger() -> None:
    # A resume with nothing missed replays nothing (core.cpp, Core::session_open): no order_update
    # tells the new session of its trip, but the engine's next forward of its position to the
    # passenger here does.
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    p = connect(core, Role.PASSENGER, "p1")
    feed(core, update(1, app=b"d1", role=R.Role.DRIVER, status=R.OrderStatus.STARTED))
    core.disconnected(d)
    d = connect(core, Role.DRIVER, "d1", last_seq=1)
    sent(core)

    assert not reply_due(core, d)
    feed(core, position(p, 38.5))
    assert reply_due(core, d)
    feed(core, update(2, app=b"d1", role=R.Role.DRIVER, status=R.OrderStatus.COMPLETED))
    assert not reply_due(core, d)
    core.disconnected(d)
    feed(core, position(p, 38.6))  # a position of a driver not (or no longer) here teaches nothing
    d = connect(core, Role.DRIVER, "d1", last_seq=2)
    assert not reply_due(core, d)
    feed(core, update(3, app=b"d1", role=R.Role.DRIVER))
    assert reply_due(core, d)
    feed(core, (R.T.OUT_SESSION_REPLACED, R.OUT_SESSION_REPLACED.pack(*meta(d, d.conn_id), 2)))
    d = connect(core, Role.DRIVER, "d1", last_seq=3)  # back here later, its trip over on worker 2
    assert not reply_due(core, d)


def test_trips_are_forgotten_with_the_engine_and_learnt_again_from_the_next_one() -> None:
    # A restarted engine may have lost them (no journal) and says nothing of trips it kept.
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    p = connect(core, Role.PASSENGER, "p1")
    feed(core, update(1, app=b"d1", role=R.Role.DRIVER))
    core.engine_detached()
    core.engine_attached()
    sent(core)
    core.records_to_send()

    assert not reply_due(core, d)
    feed(core, position(p, 38.5))
    assert reply_due(core, d)


def test_detach_fails_the_commands_in_flight_except_those_carried_to_the_next_engine() -> None:
    core = make_core()
    p = connect(core, Role.PASSENGER, "p1")
    sent(core)
    for rid in ("a", "b", "c"):
        core.receive(p, request({"type": "order_cancel", "order_id": 5, "id": rid}, p))
    _a, b, _c = core.records_to_send()
    core.engine_detached(carried={b.corr})
    out = sent(core)[p]
    assert [(m["type"], m["code"], m["id"]) for m in out] == [("error", "engine_unavailable", "a"),
                                                               ("error", "engine_unavailable", "c")]
    assert out[0]["message"] == "engine restarted; retry the command"
    assert set(core.pending) == {b.corr}
    core.engine_attached()
    feed(core, result(b.corr))  # the next engine answers the carried-over command
    assert sent(core)[p] == [{"type": "ack", "id": "b", "ts": meta()[1] // 1_000_000}]


def test_commands_are_refused_at_once_while_the_engine_is_silent_or_gone() -> None:
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    sent(core)
    core.engine_available(False, 2.0)
    core.receive(d, request({"type": "order_accept", "order_id": 5, "id": 1}, d))
    core.engine_detached()
    core.receive(d, request({"type": "driver_location", "lat": 1, "lon": 2}, d))
    assert core.records_to_send() == []
    assert [(m["code"], m["message"], m.get("id")) for m in sent(core)[d]] == [
        ("engine_unavailable", "engine not responding", 1), ("engine_unavailable", "engine not attached", None)]
    assert core.pending == {}


def test_a_record_the_link_did_not_take_is_answered_with_the_links_reason() -> None:
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    sent(core)
    core.receive(d, request({"type": "trip_start", "order_id": 5, "id": "t"}, d))
    (rec,) = core.records_to_send()
    core.not_taken(rec, ErrorCode.OVERLOADED, "engine is not keeping up; retry shortly")
    core.not_taken(ToEngine(R.T.IN_SESSION_OPEN, b""), ErrorCode.OVERLOADED, "x")  # an announcement: no answer
    assert sent(core)[d] == [{"type": "error", "code": "overloaded", "message": "engine is not keeping up; retry "
                              "shortly", "id": "t", "ts": WALL_NS // 1_000_000}]
    assert core.pending == {}


def test_records_out_never_goes_down_when_the_link_refuses_a_record() -> None:
    """`dgdo_records_out_total` is a Prometheus counter: a drop reads as a process restart, and a rate
    over it goes wrong. The core used to count a command as it queued it and take it back when the
    link refused it (and an announcement it never counted): the shell counts what the link takes."""
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    sent(core)
    seen = [core.stats.records_out]
    core.receive(d, request({"type": "trip_start", "order_id": 5, "id": "t"}, d))
    seen.append(core.stats.records_out)
    (rec,) = core.records_to_send()
    core.not_taken(rec, ErrorCode.OVERLOADED, "engine is not keeping up; retry shortly")
    seen.append(core.stats.records_out)
    core.not_taken(ToEngine(R.T.IN_SESSION_OPEN, b""), ErrorCode.ENGINE_UNAVAILABLE, "engine not attached")
    seen.append(core.stats.records_out)
    assert seen == sorted(seen) and seen[-1] >= 0, seen


def test_ping_refusals_and_too_large() -> None:
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    sent(core)
    core.receive(d, request({"type": "ping", "id": "p"}, d))
    core.refuse(d, BadMessage("lat: must be a number between -90 and 90", "q"))
    core.rate_limited(d, None)
    core.too_large(d, "message of 70000 bytes exceeds the limit of 65536 bytes")
    core.receive(d, request({"type": "ping"}, d))  # closing: nothing more
    assert [(m["type"], m.get("code"), m.get("id")) for m in sent(core)[d]] == [
        ("pong", None, "p"), ("error", "bad_message", "q"), ("error", "rate_limited", None),
        ("error", "too_large", None)]
    assert core.closes_to_send() == [(d, CLOSE_TOO_BIG, "message too big")]
    s = core.stats
    assert (s.errors_sent, s.rate_limited, s.too_large_closes) == (3, 1, 1)
    assert {code: n for code, n in s.errors.items() if n} == {"bad_message": 1, "rate_limited": 1, "too_large": 1}



def test_too_large_comes_just_before_the_close_even_to_a_paused_session() -> None:
    # docs/protocol.md: `too_large` is "sent just before the server closes with 1009". The close drops
    # what a paused session owes: the error cannot wait in its outbox.
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    core.receive(d, request({"type": "ping", "id": "p"}, d))  # framed before the pause: written
    core.pause(d)
    core.receive(d, request({"type": "ping", "id": "q"}, d))  # owed: dropped with the close
    core.too_large(d, "message of 70000 bytes exceeds the limit of 65536 bytes")
    assert [(m["type"], m.get("code"), m.get("id")) for m in sent(core)[d]] == [
        ("pong", None, "p"), ("error", "too_large", None)]
    assert core.closes_to_send() == [(d, CLOSE_TOO_BIG, "message too big")]
    assert core.stats.errors["too_large"] == 1


# ---- token expiry ---------------------------------------------------------------------------------------


def test_a_session_is_closed_4401_when_its_token_expires_and_not_a_tick_before() -> None:
    core = make_core()
    soon = connect(core, Role.DRIVER, "d1", expires=1_000)
    later = connect(core, Role.PASSENGER, "p1", fmt=MSGPACK, expires=5_000)
    no_auth = connect(core, Role.DRIVER, "d2")  # auth off: no token, no deadline
    admin = connect(core, Role.ADMIN, "ops", expires=10**9)
    core.receive(admin, request({"type": "subscribe", "topics": ["log"]}, admin))
    sent(core)
    core.tick(999.9)
    assert sent(core) == {} and core.closes_to_send() == []
    core.tick(1_000.0)
    out = sent(core)
    assert out[soon] == [{"type": "error", "code": "unauthorized", "message": "token expired",
                          "ts": WALL_NS // 1_000_000}]
    assert core.closes_to_send() == [(soon, CLOSE_EXPIRED, "unauthorized: token expired")]
    assert CLOSE_EXPIRED == auth.CLOSE_UNAUTHORIZED  # as a browser's upgrade with that token is refused
    assert out[admin][0]["message"] == "closed driver d1 with 4401: token expired"
    assert later not in out and no_auth not in out
    assert (core.stats.expired_closes, core.stats.errors["unauthorized"]) == (1, 1)
    # The close is a disconnect like any other: the engine hears of it only when the socket is gone
    # (its orders stay), and a tick later closes nothing twice.
    assert core.records_to_send() == []
    core.tick(4_999.0)
    assert sent(core) == {} and core.closes_to_send() == []
    core.disconnected(soon)
    (gone,) = core.records_to_send()
    assert gone.type == R.T.IN_SESSION_CLOSE
    core.tick(10**8)
    assert [m["code"] for m in sent(core)[later]] == ["unauthorized"]
    assert core.closes_to_send() == [(later, CLOSE_EXPIRED, "unauthorized: token expired")]
    core.tick(10**10)
    assert [s for s, _code, _reason in core.closes_to_send()] == [admin]
    assert not no_auth.closing


def test_tick_reads_the_wall_clock_when_given_no_time() -> None:
    core = make_core()
    due = connect(core, Role.DRIVER, "d1", expires=WALL_NS // 10**9)
    kept = connect(core, Role.DRIVER, "d2", expires=WALL_NS // 10**9 + 1)
    core.tick()
    assert [s for s, _code, _reason in core.closes_to_send()] == [due]
    assert not kept.closing


def test_an_expired_token_is_said_even_to_a_paused_session_just_before_its_close() -> None:
    core = make_core()
    d = connect(core, Role.DRIVER, "d1", expires=1_000)
    core.pause(d)
    core.receive(d, request({"type": "ping", "id": "q"}, d))  # owed: dropped with the close
    core.tick(1_000.0)
    assert [(m["type"], m.get("code")) for m in sent(core)[d]] == [("error", "unauthorized")]
    assert core.closes_to_send() == [(d, CLOSE_EXPIRED, "unauthorized: token expired")]


def test_a_session_gone_or_replaced_before_its_token_expires_leaves_no_deadline_to_act_on() -> None:
    core = make_core()
    old = connect(core, Role.DRIVER, "d1", expires=1_000)
    new = connect(core, Role.DRIVER, "d1", expires=3_000)  # replaces it (4001)
    assert core.closes_to_send() == [(old, CLOSE_REPLACED, "replaced by a newer connection")]
    p = connect(core, Role.PASSENGER, "p1", expires=1_000)
    core.disconnected(p)
    core.disconnected(old)
    sent(core)
    core.records_to_send()
    core.tick(2_000.0)
    assert sent(core) == {} and core.closes_to_send() == [] and core.stats.expired_closes == 0
    core.tick(3_000.0)
    assert core.closes_to_send() == [(new, CLOSE_EXPIRED, "unauthorized: token expired")]


def test_deadlines_of_sessions_long_gone_do_not_pile_up() -> None:
    # Apps reconnecting all day with day-long tokens: each old connection's deadline is a day away.
    core = make_core(attached=False)
    live = [connect(core, Role.DRIVER, f"d{i}", welcome=False, expires=10**9 + i) for i in range(100)]
    for i in range(20_000):
        s = connect(core, Role.PASSENGER, f"p{i}", welcome=False, expires=10**9)
        core.disconnected(s)
    assert len(core._deadlines) <= 2 * len(live) + 2 * 1024
    core.tick(10**9 + 99)
    assert [s for s, _code, _reason in core.closes_to_send()] == live
    assert core._deadlines == [] and core._stale_deadlines == 0


def test_a_crowd_expiring_at_once_is_one_line_in_the_admin_log() -> None:
    core = make_core()
    admin = connect(core, Role.ADMIN, "ops")
    core.receive(admin, request({"type": "subscribe", "topics": ["log"]}, admin))
    for i in range(50):
        connect(core, Role.DRIVER, f"d{i}", expires=1_000)
    sent(core)
    core.tick(1_000.0)
    logs = [m for m in sent(core)[admin] if m["type"] == "log"]
    assert [m["message"] for m in logs] == ["closed 50 connections with 4401: token expired"]
    assert core.stats.expired_closes == 50


# ---- sessions: replacement, flow control --------------------------------------------------------------


def test_a_second_session_with_the_same_role_and_id_replaces_the_first() -> None:
    core = make_core()
    old = connect(core, Role.DRIVER, "d1")
    new = connect(core, Role.DRIVER, "d1")
    assert core.closes_to_send() == [(old, CLOSE_REPLACED, "replaced by a newer connection")]
    assert core.find(Role.DRIVER, "d1") is new and len(core) == 1
    core.disconnected(old)  # its socket closes later: the new one stays registered, no SESSION_CLOSE
    assert core.find(Role.DRIVER, "d1") is new
    assert core.records_to_send() == []
    core.disconnected(new)
    (close,) = core.records_to_send()
    assert close.type == R.T.IN_SESSION_CLOSE and core.find(Role.DRIVER, "d1") is None


def test_a_paused_session_owes_in_its_outbox_gets_it_on_resume_and_is_closed_when_it_owes_too_much() -> None:
    core = make_core(max_queued=3)
    p = connect(core, Role.PASSENGER, "p1")
    sent(core)
    core.pause(p)
    feed(core, update(1), position(p, 38.1), position(p, 38.2), update(2))
    assert sent(core) == {} and core.stats.paused == 1
    core.resume(p)
    assert [(m["type"], m.get("seq"), m.get("lat")) for m in sent(core)[p]] == [
        ("order_update", 1, None), ("driver_location", None, 38.2), ("order_update", 2, None)]
    assert core.stats.paused == 0
    core.pause(p)
    feed(core, update(3), update(4), update(5), update(6))
    assert core.closes_to_send() == [(p, CLOSE_SLOW_READER, "slow reader: too much owed")]
    assert core.stats.slow_reader_closes == 1
    core.resume(p)
    assert sent(core) == {}



def test_what_a_paused_session_owes_is_counted_and_timed_when_it_goes_out() -> None:
    # dgdo_messages_out counts messages written to sockets, dgdo_push_latency_seconds is engine commit ->
    # socket write: a message owed while paused counts once it goes out, with the time it waited; one
    # replaced in the outbox by a newer version, or dropped by a close, never went out.
    clock = [WALL_NS]
    core = SessionCore(1, wall_ns=lambda: clock[0], mono_ns=lambda: 5_000_000_000)
    core.engine_attached()
    core.records_to_send()
    p = connect(core, Role.PASSENGER, "p1")
    ops = connect(core, Role.ADMIN, "ops1")
    core.receive(ops, request({"type": "subscribe", "topics": ["system_stats"]}, ops))
    core.receive(p, request({"type": "ride_request", "id": "r1", "pickup": {"lat": 38.5, "lon": 68.7},
                             "dropoff": {"lat": 38.6, "lon": 68.8}}, p))
    (ride,) = core.records_to_send()
    sent(core)
    core.pause(p)
    core.pause(ops)
    feed(core, position(p, 38.1), update(1), position(p, 38.2), result(ride.corr, order_id=1001), position(p, 38.3))
    core.tick()
    core.tick()  # system_stats is latest-wins: the second replaces the first in the outbox
    assert core.stats.messages_out == 0 and core.stats.push_latency.count == 0  # owed, nothing written yet
    clock[0] += 2_000_000_000  # the clients read again two seconds later
    core.resume(p)
    core.resume(ops)
    out = sent(core)
    assert [(m["type"], m.get("lat")) for m in out[p]] == [("order_update", None), ("ack", None),
                                                           ("driver_location", 38.3)]
    assert [m["type"] for m in out[ops]] == ["system_stats"]
    assert core.stats.messages_out == 4
    assert core.stats.push_latency.count == 3  # the pushes and the ack; admin messages carry no commit
    assert min(core.stats.push_latency.percentiles(0, 100)) >= 2_000_000_000
    core.pause(p)
    feed(core, update(2), update(3))
    core.close_for(p, CLOSE_SLOW_READER, "slow reader: not reading")  # what it owed is dropped, not written
    assert sent(core) == {}
    assert core.stats.messages_out == 4 and core.stats.push_latency.count == 3



# Any interleaving of engine batches (updates, two drivers' positions, estimates), pauses, resumes
# and drains, to JSON and msgpack clients: what each client reads back is checked as a whole.
_PUSH = st.tuples(st.sampled_from(["update", "position", "position", "estimate"]), st.integers(0, 2),
                  st.integers(0, 1))
_STEP = st.one_of(st.lists(_PUSH, min_size=1, max_size=10), st.tuples(st.sampled_from(["pause", "resume"]),
                  st.integers(0, 2)), st.just("drain"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, max_size=40), formats=st.lists(st.sampled_from([JSON, MSGPACK]), min_size=3,
                                                             max_size=3))
def test_every_client_reads_its_stream_whole_in_order_and_counted_whatever_the_flow_control(
        steps: list[Any], formats: list[Format]) -> None:
    core = make_core()
    names = ("p1", "p2", "p3")
    sessions = [connect(core, Role.PASSENGER, n, fmt) for n, fmt in zip(names, formats, strict=True)]
    got: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    seqs = dict.fromkeys(names, 0)
    lats: dict[tuple[str, str], float] = {}

    def drain() -> None:
        for s, buf in core.writes_to_send():
            got[s.app_id] += [msgpack.unpackb(p) if s.binary else json.loads(p) for p in payloads(buf)]

    for step in [*steps, "drain"]:
        if step == "drain":
            drain()
        elif isinstance(step, tuple):
            getattr(core, step[0])(sessions[step[1]])
        else:
            records = []
            for kind, who, driver in step:
                s, name = sessions[who], names[who]
                if kind == "update":
                    seqs[name] += 1
                    records.append(update(seqs[name], app=name.encode()))
                elif kind == "position":
                    d = ("d1", "d2")[driver]
                    lats[name, d] = lats.get((name, d), 38.0) + 0.001
                    records.append(position(s, lats[name, d], driver=d.encode(), order_id=1001 + driver))
                else:
                    records.append((R.T.OUT_ESTIMATE_UPDATE, R.OUT_ESTIMATE_UPDATE.pack(*meta(s), 1001, 60.0, 500.0)))
            feed(core, *records)
    for s in sessions:
        core.resume(s)
    drain()
    assert core.closes_to_send() == []
    for name in names:
        out = got[name]
        assert [m["seq"] for m in out if m["type"] == "order_update"] == list(range(1, seqs[name] + 1))
        for d in ("d1", "d2"):
            seen = [m["lat"] for m in out if m["type"] == "driver_location" and m["driver_id"] == d]
            assert seen == sorted(set(seen))  # never an older position after a newer one, never twice
            assert seen[-1:] == ([lats[name, d]] if (name, d) in lats else [])  # the latest always arrives
    written = sum(len(out) for out in got.values())
    assert core.stats.messages_out == written and core.stats.push_latency.count == written


# ---- the core is sans-I/O ------------------------------------------------------------------------------

CORE_DIR = pathlib.Path(__file__).resolve().parents[1] / "sidecar" / "session"
FORBIDDEN = ("picows", "asyncio", "uvloop", "cffi", "_cffi_backend", "socket", "selectors", "sidecar.engine.ring",
             "sidecar.engine.link", "sidecar.shell")


def test_no_module_of_the_session_core_imports_io() -> None:
    modules = sorted(CORE_DIR.glob("*.py"))
    assert {m.name for m in modules} >= {"core.py", "session.py", "commands.py", "limits.py", "stats.py"}
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"


def test_importing_the_session_core_loads_no_io_module() -> None:
    code = ("import sys, sidecar.session.core\n"
            f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN!r})]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


R_GAUGES = LinkGauges(heartbeat_age_ns=12_400_000, in_bytes=64, backlog_bytes=0, out_bytes=8)


def test_a_rejected_offer_leaves_the_dashboards_model_at_once() -> None:
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    feed(core, (R.T.OUT_NEW_ORDER, R.OUT_NEW_ORDER.pack(*meta(d), 1001, b"p1", 38.5, 68.7, 38.6, 68.8, 800.0, 90.0,
                                                         15.0, 1)))
    assert core.feed.driver_counts()["offered"] == 1
    core.receive(d, request({"type": "order_reject", "order_id": 1001, "id": "r"}, d))
    (rec,) = core.records_to_send()
    assert rec.type == R.T.IN_ORDER_COMMAND and rec.corr
    assert core.feed.driver_counts()["offered"] == 0


def engine_stats(created: int, matched: int, completed: int, journal_errno: int = 0, held: int = 0,
                 held_since_ns: int = 0) -> tuple[int, bytes]:
    return R.T.OUT_ENGINE_STATS, R.OUT_ENGINE_STATS.pack(*meta(None, 0, R.Role.ADMIN, b""), 3, 2, 1, 1, created,
                                                         matched, completed, 0, 0, 0, 0,
                                                         *[0] * (len(R.LATENCY_BOUNDS_NS) + 1), journal_errno, held,
                                                         held_since_ns)


def test_an_engine_holding_on_its_journal_is_named_with_the_error_and_for_how_long_until_it_goes_on() -> None:
    """The engine holds (its journal's disk is full) and says so in ENGINE_STATS: the sidecar names
    the cause to admins (log, system_stats) and to the shell (/healthz, status), without taking the
    record for a sign of life: availability stays the heartbeat's."""
    clock = [50_000_000_000]
    core = SessionCore(1, wall_ns=lambda: WALL_NS, mono_ns=lambda: clock[0])
    core.engine_attached()
    ops = connect(core, Role.ADMIN, "ops")
    core.receive(ops, request({"type": "subscribe", "topics": ["log"], "id": "s"}, ops))
    sent(core)
    feed(core, engine_stats(5, 4, 3))
    assert core.engine_hold() is None and "engine_hold" not in core.system_stats()
    core.engine_available(False, 0.5)
    feed(core, engine_stats(5, 4, 3, errno.ENOSPC, 2, clock[0] - 42_000_000_000))
    assert core.engine_hold() == "journal not writable (No space left on device) for 42 s, 2 input(s) held"
    assert core.system_stats()["engine_hold"] == {"error": "No space left on device", "for_s": 42, "inputs_held": 2}
    assert not core.available
    logs = [m["message"] for m in sent(core)[ops] if m["type"] == "log"]
    assert any("engine holds: journal not writable (No space left on device)" in m for m in logs), logs
    feed(core, engine_stats(5, 4, 3, errno.ENOSPC, 2, clock[0] - 42_000_000_000))
    assert not [m for m in sent(core).get(ops, []) if m["type"] == "log"]  # said once, not once a second
    core.engine_available(True)
    feed(core, engine_stats(6, 4, 3))
    assert core.engine_hold() is None and "engine_hold" not in core.system_stats()
    assert "journal writable again" in [m for m in sent(core)[ops] if m["type"] == "log"][-1]["message"]
    core.engine_detached()
    feed(core, engine_stats(6, 4, 3, errno.EIO, 1, clock[0]))
    assert core.engine_hold() is None  # detached: nothing to say of an engine we no longer see


def test_how_long_the_engine_has_held_is_read_off_the_cores_clock_once_for_every_reader() -> None:
    """One reading of the hold's duration, on the clock the core is fed: /metrics takes it as is
    (fractional seconds), system_stats and /healthz in whole seconds; never negative, and none
    while the engine does not hold or is not attached."""
    clock = [50_000_000_000]
    core = SessionCore(1, wall_ns=lambda: WALL_NS, mono_ns=lambda: clock[0])
    core.engine_attached()
    feed(core, engine_stats(5, 4, 3))
    assert core.engine_held_ns() is None
    feed(core, engine_stats(5, 4, 3, errno.ENOSPC, 1, clock[0] - 2_999_999_999))
    assert core.engine_held_ns() == 2_999_999_999
    assert core.system_stats()["engine_hold"]["for_s"] == 2
    clock[0] += 1
    assert core.engine_held_ns() == 3_000_000_000
    assert core.system_stats()["engine_hold"]["for_s"] == 3
    feed(core, engine_stats(5, 4, 3, errno.ENOSPC, 1, clock[0] + 5))  # stamped after the core's last reading
    assert core.engine_held_ns() == 0
    core.engine_detached()
    assert core.engine_held_ns() is None


def test_order_rates_start_from_the_engines_first_stats_not_from_zero() -> None:
    """A sidecar (re)started beside an engine that has run for a while: its counters are in the
    thousands. A dashboard that subscribes before the engine's first ENGINE_STATS (they come once a
    second) must not see those thousands as the last few seconds' orders."""
    clock = [5_000_000_000]
    core = SessionCore(1, wall_ns=lambda: WALL_NS, mono_ns=lambda: clock[0])
    core.engine_attached()
    assert core.system_stats()["order_rates"]["requested"] == 0.0  # subscribed: stats at once, none from the engine yet
    feed(core, engine_stats(5000, 4900, 4800))
    clock[0] += 10_000_000_000
    rates = core.system_stats()["order_rates"]
    assert (rates["requested"], rates["matched"], rates["completed"]) == (0.0, 0.0, 0.0), rates
    feed(core, engine_stats(5010, 4905, 4800))
    clock[0] += 10_000_000_000
    rates = core.system_stats()["order_rates"]
    assert (rates["requested"], rates["matched"], rates["completed"]) == (60.0, 30.0, 0.0), rates


def test_order_rates_are_never_negative_after_an_engine_restart_that_reset_its_counters() -> None:
    """An engine without a journal starts its counters again from 0: a rate is never below 0."""
    clock = [5_000_000_000]
    core = SessionCore(1, wall_ns=lambda: WALL_NS, mono_ns=lambda: clock[0])
    core.engine_attached()
    feed(core, engine_stats(5000, 4900, 4800))
    core.system_stats()
    clock[0] += 10_000_000_000
    core.engine_detached()
    core.engine_attached()
    feed(core, engine_stats(3, 1, 0))
    clock[0] += 10_000_000_000
    core.system_stats()
    feed(core, engine_stats(13, 6, 0))
    clock[0] += 10_000_000_000
    rates = core.system_stats()["order_rates"]
    assert (rates["requested"], rates["matched"], rates["completed"]) == (60.0, 30.0, 0.0), rates
