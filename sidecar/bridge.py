"""Engine events -> WebSocket messages: the sidecar's outbound dispatcher.

Each outbound record names its recipient: role + id, or also a connection
(`to_conn`: command results, and the SESSION_STATE, replay and snapshot that
answer a session open). The bridge turns it into the public message, sends it
to the recipient's live connection if any, and measures engine commit ->
socket write latency from the record's CLOCK_REALTIME commit stamp.

Reliable messages (order_update, new_order, cancel_order) arrive numbered:
the engine stamps `seq` and keeps the recent ones, so nothing here needs to
survive. A message for a recipient who is not connected is dropped; the app
gets it on resume (`?last_seq`). A connection is welcomed when the engine's
SESSION_STATE for it arrives, and receives nothing before: what the engine
sent meanwhile is in the replay or snapshot right behind the SESSION_STATE.
A reliable message at or below the connection's `last_seq` was delivered
already (a replay overlapping a re-announce) and is not sent twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from sidecar import records as R
from sidecar.admin_feed import AdminFeed
from sidecar.connections import Connection, Registry, broadcast
from sidecar.events import ErrorCode, Role
from sidecar.records import Result, T, id_str
from sidecar.ring import FRAME, RECORD_HEADER, Consumer
from sidecar.stats import EngineSnapshot, SidecarStats

log = logging.getLogger("dgdo.bridge")

ROLE_OF_WIRE = {R.Role.DRIVER: Role.DRIVER, R.Role.PASSENGER: Role.PASSENGER, R.Role.ADMIN: Role.ADMIN}
STATUS_NAME = {s: s.name.lower() for s in R.OrderStatus}
REASON_NAME = {r: r.name.lower() for r in R.Reason}
RESULT_ERROR = {
    Result.CONFLICT: (ErrorCode.CONFLICT, "invalid transition for the order's current state"),
    Result.NOT_FOUND: (ErrorCode.NOT_FOUND, "order_id: no such order"),
    Result.FORBIDDEN: (ErrorCode.FORBIDDEN, "order_id: not your order"),
    Result.BAD_MESSAGE: (ErrorCode.BAD_MESSAGE, "refused by the engine"),
}


class PendingReply:
    """A command waiting for the engine's COMMAND_RESULT."""

    __slots__ = ("conflict", "conn", "request_id")

    def __init__(self, conn: Connection, request_id: str | int | None, conflict: str | None = None) -> None:
        self.conn = conn
        self.request_id = request_id
        self.conflict = conflict


class Bridge:
    def __init__(self, registry: Registry, stats: SidecarStats) -> None:
        self.registry = registry
        self.stats = stats
        self.pending: dict[int, PendingReply] = {}
        self.feed = AdminFeed()  # the dashboard's model: fed below as records pass, flushed by the server
        self._corr = 0
        self.on_engine_stats: Callable[[EngineSnapshot], None] = lambda s: None
        self._handlers: dict[int, Callable[[memoryview], None]] = {
            T.OUT_COMMAND_RESULT: self._command_result,
            T.OUT_ORDER_UPDATE: self._order_update,
            T.OUT_NEW_ORDER: self._new_order,
            T.OUT_CANCEL_ORDER: self._cancel_order,
            T.OUT_DRIVER_POSITION: self._driver_position,
            T.OUT_ESTIMATE_UPDATE: self._estimate_update,
            T.OUT_NEARBY_DRIVERS: self._nearby_drivers,
            T.OUT_ENGINE_STATS: self._engine_stats,
            T.OUT_SESSION_STATE: self._session_state,
        }

    # ---- correlation ---------------------------------------------------------------

    def expect_reply(self, conn: Connection, request_id: str | int | None, conflict: str | None = None) -> int:
        """A correlation id for a command whose outcome the engine will report.

        Args:
            conflict: the error message should the engine answer `conflict` (the default
                speaks of an order's state, which fits the order commands).
        """
        self._corr += 1
        self.pending[self._corr] = PendingReply(conn, request_id, conflict)
        return self._corr

    def fail_pending(self, code: ErrorCode, message: str, keep: Collection[int] = ()) -> None:
        """Answers the commands in flight with an error (the engine went away).

        Args:
            keep: correlation ids of commands that were never consumed and will be
                carried over to the next engine: they stay pending.
        """
        pending = {c: p for c, p in self.pending.items() if c not in keep}
        self.pending = {c: p for c, p in self.pending.items() if c in keep}
        ts = time.time_ns() // 1_000_000
        for p in pending.values():
            out: dict[str, Any] = {"type": "error", "code": code.value, "message": message, "ts": ts}
            if p.request_id is not None:
                out["id"] = p.request_id
            p.conn.send(out)

    # ---- admins ----------------------------------------------------------------------

    def broadcast(self, conns: Collection[Connection], message: dict[str, Any]) -> None:
        self.stats.messages_out += broadcast(conns, message)

    def to_admins(self, topic: str, message: dict[str, Any]) -> None:
        """Sends a monitoring message to the admins subscribed to `topic`."""
        admins = self.registry.admins
        if admins:
            subscribers = [c for c in admins if topic in c.topics]
            if subscribers:
                self.broadcast(subscribers, message)

    def admin_log(self, level: str, text: str) -> None:
        self.to_admins("log", {"type": "log", "level": level, "message": text, "ts": time.time_ns() // 1_000_000})

    # ---- dispatch ---------------------------------------------------------------------

    def on_records(self, consumer: Consumer, nbytes: int) -> None:
        """Delivers one drained batch. Walks the frames in place: no object per record."""
        handlers = self._handlers
        view = consumer.buffer
        unpack_frame = FRAME.unpack_from
        off = count = 0
        while off < nbytes:
            length, type_ = unpack_frame(view, off)
            count += 1
            h = handlers.get(type_)
            if h is None:
                log.warning("! unknown record type %d from the engine", type_)
            else:
                try:
                    h(view[off + RECORD_HEADER : off + length])
                except Exception:  # one bad record must not stop the stream
                    log.exception("! failed to deliver record type %d", type_)
            off += (length + 7) & ~7
        self.stats.records_in += count

    def _recipient(self, to_conn: int, role_w: int, to_id: bytes) -> Connection | None:
        """The live connection a record is for: by `to_conn` when set (and only if it is still
        that role and id: conn ids are per sidecar process), else by role + id."""
        role = ROLE_OF_WIRE.get(role_w)
        if role is None:
            return None
        if to_conn:
            conn = self.registry.by_conn.get(to_conn)
            if conn is None or conn.role is not role or conn.app_id != id_str(to_id):
                return None
            return conn
        return self.registry.find(role, id_str(to_id))

    def _deliver(self, to_conn: int, role_w: int, to_id: bytes, message: dict[str, Any], commit_real_ns: int,
                 seq: int = 0) -> None:
        conn = self._recipient(to_conn, role_w, to_id)
        if conn is None or not conn.welcomed:
            return
        if seq:
            if conn.last_seq is not None and seq <= conn.last_seq:
                return  # delivered already
            conn.last_seq = seq
            message["seq"] = seq
        if conn.send(message):
            self.stats.messages_out += 1
            self.stats.push_latency.add(time.time_ns() - commit_real_ns)

    def welcome(self, conn: Connection, seq: int, resumed: bool, ts: int) -> None:
        """Sends the welcome (once per connection) and starts delivering to it.

        After a resumed welcome the replay follows, numbered from the app's own last_seq; after
        a snapshot, fresh messages above `seq`. A second SESSION_STATE for the same connection
        (the sidecar re-announced it to a (re)attached engine) sends no welcome.
        """
        if conn.welcomed:
            if not resumed:  # a snapshot follows: numbered above seq
                conn.last_seq = max(conn.last_seq or 0, seq)
            return
        conn.welcomed = True
        if not resumed or conn.last_seq is None:
            conn.last_seq = seq
        conn.send({"type": "welcome", "role": conn.role.value, "id": conn.app_id, "resumed": resumed,
                   "seq": seq, "ts": ts})  # a handshake, not counted in messages_out (as before)

    def _session_state(self, body: memoryview) -> None:
        (_m, real, to_conn, _w, role, to_id, seq, resumed) = R.OUT_SESSION.unpack(body)
        conn = self._recipient(to_conn, role, to_id) if to_conn else None
        if conn is not None:
            self.welcome(conn, seq, bool(resumed), self._ts(real))

    @staticmethod
    def _ts(commit_real_ns: int) -> int:
        return commit_real_ns // 1_000_000

    def _command_result(self, body: memoryview) -> None:
        (_m, real, _to_conn, _w, _r, _id, corr, order_id, status) = R.OUT_COMMAND_RESULT.unpack(body)
        p = self.pending.pop(corr, None)
        if p is None:
            return
        ts = self._ts(real)
        self.feed.request_answered(corr, order_id if status == Result.OK else 0, time.monotonic(), ts)
        if status == Result.OK:
            if p.request_id is None:
                return
            out: dict[str, Any] = {"type": "ack", "id": p.request_id, "ts": ts}
            if order_id:
                out["order_id"] = order_id
        else:
            code, message = RESULT_ERROR.get(Result(status), (ErrorCode.BAD_MESSAGE, "refused"))
            if status == Result.CONFLICT and p.conflict is not None:
                message = p.conflict
            out = {"type": "error", "code": code.value, "message": message, "ts": ts}
            if order_id:
                out["order_id"] = order_id
            if p.request_id is not None:
                out["id"] = p.request_id
            self.stats.errors_sent += 1
        if p.conn.send(out):
            self.stats.messages_out += 1
            self.stats.push_latency.add(time.time_ns() - real)

    def _order_update(self, body: memoryview) -> None:
        (_m, real, to_conn, _w, role, to_id, order_id, status, reason, driver_id, passenger_id, seq) = (
            R.OUT_ORDER_UPDATE.unpack(body)
        )
        msg: dict[str, Any] = {
            "type": "order_update", "order_id": order_id, "status": STATUS_NAME[R.OrderStatus(status)],
            "ts": self._ts(real),
        }
        if driver_id[0]:
            msg["driver_id"] = id_str(driver_id)
        if role == R.Role.DRIVER:
            msg["passenger_id"] = id_str(passenger_id)
        if reason:
            msg["reason"] = REASON_NAME[R.Reason(reason)]
        self._deliver(to_conn, role, to_id, msg, real, seq)
        if not to_conn:  # a change as it happens (not a replay or snapshot to one connection)
            self.feed.order_update(order_id, msg["status"], id_str(passenger_id), msg.get("driver_id", ""),
                                   time.monotonic(), msg["ts"])
        if role == R.Role.PASSENGER and not to_conn and self.registry.admins:
            # Each change reaches the passenger (and the driver, once there is one): admins see it once,
            # and not again when a replay or snapshot (to one connection) repeats it.
            self._admin_order(msg, id_str(to_id))

    def _admin_order(self, update: dict[str, Any], passenger_id: str) -> None:
        ts = update["ts"]
        order = {"order_id": update["order_id"], "status": update["status"], "passenger_id": passenger_id}
        if "driver_id" in update:
            order["driver_id"] = update["driver_id"]
        if "reason" in update:
            order["reason"] = update["reason"]
        self.to_admins("active_orders", {"type": "active_orders", **order,
                                         "active": self.stats.engine.active_orders, "ts": ts})
        if update["status"] == "accepted":
            self.to_admins("assignments", {"type": "assignment", "order_id": update["order_id"],
                                           "driver_id": update.get("driver_id", ""), "passenger_id": passenger_id,
                                           "ts": ts})

    def _new_order(self, body: memoryview) -> None:
        (_m, real, to_conn, _w, role, to_id, order_id, passenger_id,
         plat, plon, dlat, dlon, distance_m, eta_s, expires_in_s, seq) = R.OUT_NEW_ORDER.unpack(body)
        msg = {
            "type": "new_order", "order_id": order_id, "passenger_id": id_str(passenger_id),
            "pickup": {"lat": plat, "lon": plon}, "dropoff": {"lat": dlat, "lon": dlon},
            "distance_m": round(distance_m, 1), "eta_s": round(eta_s, 1),
            "expires_in_s": round(expires_in_s, 3), "ts": self._ts(real),
        }
        self._deliver(to_conn, role, to_id, msg, real, seq)
        if not to_conn:
            self.feed.offer(id_str(to_id), order_id, (plat, plon), (dlat, dlon), eta_s, expires_in_s,
                            time.monotonic(), msg["ts"])

    def _cancel_order(self, body: memoryview) -> None:
        (_m, real, to_conn, _w, role, to_id, order_id, reason, seq) = R.OUT_CANCEL_ORDER.unpack(body)
        msg = {"type": "cancel_order", "order_id": order_id, "reason": REASON_NAME[R.Reason(reason)],
               "ts": self._ts(real)}
        self._deliver(to_conn, role, to_id, msg, real, seq)
        if not to_conn:
            self.feed.offer_ended(id_str(to_id), order_id)

    def _driver_position(self, body: memoryview) -> None:
        (_m, real, to_conn, _w, role, to_id, order_id, driver_id, lat, lon, heading, speed) = (
            R.OUT_DRIVER_POSITION.unpack(body)
        )
        msg: dict[str, Any] = {"type": "driver_location", "order_id": order_id, "driver_id": id_str(driver_id),
                               "lat": lat, "lon": lon, "ts": self._ts(real)}
        if heading == heading:  # not NaN
            msg["heading"] = round(heading, 1)
        if speed == speed:
            msg["speed_kmh"] = round(speed, 1)
        self._deliver(to_conn, role, to_id, msg, real)

    def _estimate_update(self, body: memoryview) -> None:
        (_m, real, to_conn, _w, role, to_id, order_id, eta_s, distance_m) = R.OUT_ESTIMATE_UPDATE.unpack(body)
        msg = {"type": "estimate_update", "order_id": order_id, "eta_s": round(eta_s, 1),
               "distance_m": round(distance_m, 1), "ts": self._ts(real)}
        self._deliver(to_conn, role, to_id, msg, real)
        if not to_conn:
            self.feed.estimate(order_id, eta_s)

    def _nearby_drivers(self, body: memoryview) -> None:
        (_m, real, to_conn, _w, role, to_id, count) = R.OUT_NEARBY_HEAD.unpack_from(body)
        size = R.NEARBY_ENTRY.size
        drivers = []
        for i in range(min(count, (len(body) - R.OUT_NEARBY_HEAD.size) // size)):
            did, lat, lon = R.NEARBY_ENTRY.unpack_from(body, R.OUT_NEARBY_HEAD.size + i * size)
            drivers.append({"driver_id": id_str(did), "lat": lat, "lon": lon})
        msg = {"type": "nearby_drivers", "drivers": drivers, "ts": self._ts(real)}
        self._deliver(to_conn, role, to_id, msg, real)

    def _engine_stats(self, body: memoryview) -> None:
        (_m, _real, _c, _w, _r, _id, online, available, active, created, matched, completed, p99, p50) = (
            R.OUT_ENGINE_STATS.unpack(body)
        )
        snap = EngineSnapshot(online, available, active, created, matched, completed, p99, p50)
        self.stats.engine = snap
        self.on_engine_stats(snap)
