"""The session core with several sidecar workers: bytes and typed values only (as test_session_core.py).

* SESSION_REPLACED: the engine saw the same role + id open on another worker; this worker's
  older session closes with 4001, leaves the registry and this worker's map;
* copies of another worker's order records (`to_worker` not ours) feed the admins and are
  delivered to nobody here;
* FLEET: this worker passes its drivers' fixes, status and disconnects on (only when the engine
  says other workers are attached) and folds in what other workers say about theirs; the
  engine's notices: a detached worker's drivers leave the map, an attached one gets all of ours.
End to end with the real engine and two sidecar processes: test_workers.py.
"""

from __future__ import annotations

from typing import Any

from test_session_core import WALL_NS, connect, feed, make_core, request, sent

from sidecar.engine import records as R
from sidecar.session.core import CLOSE_REPLACED, SessionCore
from sidecar.session.session import Session
from sidecar.wire.messages import Role


def meta(worker: int, conn: int = 0, role: int = R.Role.PASSENGER, app: bytes = b"p1") -> tuple:
    return (0, WALL_NS - 250_000, conn, worker, role, app)


def replaced(s: Session, worker: int = 1, by: int = 2) -> tuple[int, bytes]:
    return R.T.OUT_SESSION_REPLACED, R.OUT_SESSION_REPLACED.pack(*meta(worker, s.conn_id, s.wire_role,
                                                                      s.app_id.encode()), by)


def order_update(worker: int, app: bytes = b"p1", role: int = R.Role.PASSENGER, seq: int = 1,
                 status: R.OrderStatus = R.OrderStatus.ACCEPTED) -> tuple[int, bytes]:
    return R.T.OUT_ORDER_UPDATE, R.OUT_ORDER_UPDATE.pack(*meta(worker, 0, role, app), 1001, status, 0,
                                                         b"d9", b"p1", seq)


def stats(workers: int) -> tuple[int, bytes]:
    return R.T.OUT_ENGINE_STATS, R.OUT_ENGINE_STATS.pack(*meta(0, 0, R.Role.ADMIN, b""), 3, 2, 1, workers,
                                                         10, 8, 5, 0, 0, 0, 0, *[0] * len(R.LATENCY_BOUNDS_NS), 0,
                                                         0, 0, 0)


def fleet(worker: int, *entries: tuple[bytes, float, float, int], notice: int = 0) -> tuple[int, bytes]:
    body = bytearray(R.FLEET_HEAD.pack(*meta(worker, 0, R.Role.ADMIN, b""), len(entries), notice))
    for e in entries:
        body += R.FLEET_ENTRY.pack(*e)
    return R.T.OUT_FLEET, bytes(body)


def admin(core: SessionCore, *topics: str) -> Session:
    a = connect(core, Role.ADMIN, "ops")
    core.receive(a, request({"type": "subscribe", "topics": list(topics)}, a))
    sent(core)
    return a


def fleet_rows(msgs: list[dict[str, Any]]) -> dict[str, tuple]:
    return {row[0]: tuple(row[1:]) for m in msgs if m["type"] == "fleet" for row in m["drivers"]}


# ---- SESSION_REPLACED -------------------------------------------------------------------------


def test_a_session_replaced_on_another_worker_closes_4001_and_leaves_the_registry() -> None:
    core = make_core()
    logs = admin(core, "log")
    d = connect(core, Role.DRIVER, "d1")
    sent(core)
    feed(core, replaced(d, by=2))
    assert core.closes_to_send() == [(d, CLOSE_REPLACED, "replaced by a newer connection")]
    assert core.find(Role.DRIVER, "d1") is None and d.conn_id not in core.by_conn
    assert "reconnected to worker 2" in sent(core)[logs][0]["message"]
    # Its socket then closes: no SESSION_CLOSE (the engine's session is the newer one already).
    core.disconnected(d)
    assert core.records_to_send() == []


def test_a_session_replaced_for_a_gone_or_other_connection_changes_nothing() -> None:
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    sent(core)
    other = core.new_session(Role.DRIVER, "d1", d.fmt)  # same id, a conn id this record does not name
    feed(core, replaced(other))
    feed(core, replaced(d, worker=2))  # for worker 2's connection with that conn id, not ours
    assert core.closes_to_send() == []
    assert core.find(Role.DRIVER, "d1") is d


def test_a_same_worker_replacement_closes_once() -> None:
    core = make_core()
    old = connect(core, Role.DRIVER, "d1")
    new = connect(core, Role.DRIVER, "d1", welcome=False)  # closed 4001 here at once
    assert core.closes_to_send() == [(old, CLOSE_REPLACED, "replaced by a newer connection")]
    feed(core, replaced(old, by=1))  # the engine's word on it comes after: nothing more
    assert core.closes_to_send() == []
    assert core.find(Role.DRIVER, "d1") is new


# ---- copies of other workers' records ---------------------------------------------------------


def test_another_workers_order_update_reaches_our_admins_and_no_app() -> None:
    core = make_core()
    a = admin(core, "active_orders", "assignments")
    p = connect(core, Role.PASSENGER, "p1")  # a stale p1 here: the app is on worker 2 now
    sent(core)
    feed(core, order_update(2))
    out = sent(core)
    assert p not in out
    assert [m["type"] for m in out[a]] == ["active_orders", "assignment"]
    assert core.feed.live_orders()["accepted"] == 1
    feed(core, order_update(1, seq=2))  # ours: delivered, and admins hear of it as before
    out = sent(core)
    assert [m["seq"] for m in out[p]] == [2]


# ---- FLEET --------------------------------------------------------------------------------


def test_our_drivers_are_relayed_only_when_other_workers_are_attached() -> None:
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    sent(core)
    core.receive(d, request({"type": "driver_location", "lat": 38.5, "lon": 68.7}, d))
    core.records_to_send()
    core.feed_tick(now=1.0, ts_ms=1)
    assert [r.type for r in core.records_to_send()] == []  # alone: nobody to tell
    feed(core, stats(workers=2))
    core.receive(d, request({"type": "driver_location", "lat": 38.6, "lon": 68.8}, d))
    core.receive(d, request({"type": "driver_status", "status": "offline"}, d))
    core.records_to_send()
    core.feed_tick(now=2.0, ts_ms=2)
    (rec,) = [r for r in core.records_to_send() if r.type == R.T.IN_FLEET]
    head = R.FLEET_HEAD.unpack_from(rec.body, 0)
    assert head[3] == 1 and head[-2:] == (2, 0)  # from worker 1, two entries, no notice
    entries = [R.FLEET_ENTRY.unpack_from(rec.body, R.FLEET_HEAD.size + i * R.FLEET_ENTRY.size) for i in range(2)]
    assert {(R.id_str(e[0]), e[3]) for e in entries} == {("d1", R.FleetKind.MOVED), ("d1", R.FleetKind.OFFLINE)}
    assert next(e for e in entries if e[3] == R.FleetKind.MOVED)[1:3] == (38.6, 68.8)
    core.disconnected(d)
    core.records_to_send()
    core.feed_tick(now=3.0, ts_ms=3)
    (rec,) = core.records_to_send()
    assert R.FLEET_ENTRY.unpack_from(rec.body, R.FLEET_HEAD.size)[3] == R.FleetKind.GONE


def test_another_workers_drivers_are_on_our_map_and_leave_it_when_it_says_so() -> None:
    core = make_core()
    a = admin(core, "fleet", "drivers")
    feed(core, fleet(2, (b"d7", 38.5, 68.7, R.FleetKind.MOVED), (b"d8", 38.6, 68.8, R.FleetKind.MOVED)))
    core.feed_tick(now=1.0, ts_ms=1)
    assert set(fleet_rows(sent(core)[a])) == {"d7", "d8"}
    assert core.feed.driver_counts()["available"] == 2
    feed(core, fleet(2, (b"d7", 0.0, 0.0, R.FleetKind.OFFLINE)), fleet(3, (b"d8", 0.0, 0.0, R.FleetKind.GONE)))
    out = sent(core)[a]
    assert [(m["driver_id"], m["status"]) for m in out] == [("d7", "offline")]  # d8 is worker 2's, not 3's
    core.feed_tick(now=2.0, ts_ms=2)
    msg = sent(core)[a][0]
    assert fleet_rows([msg])["d7"][2] == "offline"
    assert msg["gone"] == []  # d8 is worker 2's: worker 3 saying it left does not count
    feed(core, fleet(2, (b"d8", 0.0, 0.0, R.FleetKind.GONE)))
    assert [(m["driver_id"], m["status"]) for m in sent(core)[a]] == [("d8", "disconnected")]
    core.feed_tick(now=3.0, ts_ms=3)
    assert sent(core)[a][0]["gone"] == ["d8"]


def test_what_another_worker_says_about_a_driver_connected_here_is_ignored() -> None:
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    core.receive(d, request({"type": "driver_status", "status": "online"}, d))
    core.receive(d, request({"type": "driver_location", "lat": 38.5, "lon": 68.7}, d))
    core.records_to_send()
    sent(core)
    feed(core, fleet(2, (b"d1".ljust(R.ID_SIZE, b"\0"), 1.0, 1.0, R.FleetKind.MOVED),
                     (b"d1".ljust(R.ID_SIZE, b"\0"), 0.0, 0.0, R.FleetKind.OFFLINE),
                     (b"d1".ljust(R.ID_SIZE, b"\0"), 0.0, 0.0, R.FleetKind.GONE)))
    core.feed_tick(now=1.0, ts_ms=1)
    assert core.feed.snapshot(1)["drivers"] == [("d1", 38.5, 68.7, "available", None)]


def test_a_remote_driver_not_heard_of_for_three_full_periods_leaves_the_map() -> None:
    core = make_core()
    core.feed.full_every_s = 10.0
    feed(core, fleet(2, (b"d7", 38.5, 68.7, R.FleetKind.MOVED)))
    core.mono_ns = lambda: 1_000_000_000  # heard of at t = 1 s
    feed(core, fleet(2, (b"d7", 38.5, 68.7, R.FleetKind.MOVED)))
    core.feed_tick(now=2.0, ts_ms=1)
    assert len(core.feed) == 1
    core.feed_tick(now=25.0, ts_ms=2)
    assert len(core.feed) == 1
    core.feed_tick(now=45.0, ts_ms=3)  # its worker died: nobody else would say it left
    assert len(core.feed) == 0


def test_a_detached_workers_drivers_leave_our_map_at_once() -> None:
    core = make_core()
    a = admin(core, "fleet", "drivers")
    feed(core, fleet(2, (b"d7", 38.5, 68.7, R.FleetKind.MOVED)), fleet(3, (b"d8", 38.6, 68.8, R.FleetKind.MOVED)))
    core.feed_tick(now=1.0, ts_ms=1)
    assert set(fleet_rows(sent(core)[a])) == {"d7", "d8"}
    feed(core, fleet(2, notice=R.FleetNotice.WORKER_DETACHED))
    assert [(m["driver_id"], m["status"]) for m in sent(core)[a]] == [("d7", "disconnected")]
    core.feed_tick(now=2.0, ts_ms=2)
    assert sent(core)[a][0]["gone"] == ["d7"]  # d8 is worker 3's: still there
    assert {row[0] for row in core.feed.snapshot(3)["drivers"]} == {"d8"}


def test_a_worker_attached_gets_all_our_drivers_at_the_next_tick() -> None:
    core = make_core()
    d = connect(core, Role.DRIVER, "d1")
    core.receive(d, request({"type": "driver_location", "lat": 38.5, "lon": 68.7}, d))
    core.records_to_send()
    core.feed_tick(now=1.0, ts_ms=1)
    assert [r.type for r in core.records_to_send()] == []  # alone: nobody to tell
    # Worker 2 attached: no ENGINE_STATS has said so yet, and d1 stands still.
    feed(core, fleet(2, notice=R.FleetNotice.WORKER_ATTACHED))
    core.feed_tick(now=2.0, ts_ms=2)
    (rec,) = [r for r in core.records_to_send() if r.type == R.T.IN_FLEET]
    entry = R.FLEET_ENTRY.unpack_from(rec.body, R.FLEET_HEAD.size)
    assert (R.id_str(entry[0]), entry[1:3], entry[3]) == ("d1", (38.5, 68.7), R.FleetKind.MOVED)


def test_status_changes_made_while_no_engine_is_attached_are_relayed_once_one_is() -> None:
    core = make_core()
    feed(core, stats(workers=2))
    d1, d2 = connect(core, Role.DRIVER, "d1"), connect(core, Role.DRIVER, "d2")
    for d in (d1, d2):
        core.receive(d, request({"type": "driver_location", "lat": 38.5, "lon": 68.7}, d))
    core.records_to_send()
    core.feed_tick(now=1.0, ts_ms=1)
    core.records_to_send()
    core.engine_detached()
    core.disconnected(d1)  # (a status change is refused meanwhile: engine_unavailable)
    core.feed_tick(now=2.0, ts_ms=2)
    assert [r.type for r in core.records_to_send() if r.type == R.T.IN_FLEET] == []  # no engine to take them
    core.engine_attached()
    core.records_to_send()
    core.feed_tick(now=3.0, ts_ms=3)
    (rec,) = [r for r in core.records_to_send() if r.type == R.T.IN_FLEET]
    count = R.FLEET_HEAD.unpack_from(rec.body, 0)[-2]
    entries = [R.FLEET_ENTRY.unpack_from(rec.body, R.FLEET_HEAD.size + i * R.FLEET_ENTRY.size) for i in range(count)]
    kinds = {(R.id_str(e[0]), e[3]) for e in entries}
    # d2: everything again, on attach: where it is and its status (offline: it never said online)
    assert kinds == {("d1", R.FleetKind.GONE), ("d2", R.FleetKind.MOVED), ("d2", R.FleetKind.OFFLINE)}
