"""Validated client messages -> engine records (or local answers).

The sidecar decides nothing about dispatch: each command becomes one ring
record for the engine, carrying a correlation id when its outcome must be
answered (`ack` / `error`). Only `ping` and admin subscriptions are answered
here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from sidecar import records as R
from sidecar.bridge import Bridge
from sidecar.connections import Connection, now_ms
from sidecar.engine_link import EngineLink, EngineUnavailable, Overloaded
from sidecar.events import (
    AdminSubscribe,
    DriverLocation,
    DriverStatus,
    ErrorCode,
    Nearby,
    NearbySubscribe,
    NearbyUnsubscribe,
    OrderAccept,
    OrderAction,
    OrderArrived,
    OrderCancel,
    OrderReject,
    Ping,
    RideRequest,
    TripComplete,
    TripStart,
)
from sidecar.protocol import Request
from sidecar.stats import SidecarStats

COMMANDS: dict[type[OrderAction], R.Command] = {
    OrderAccept: R.Command.ACCEPT,
    OrderReject: R.Command.REJECT,
    OrderArrived: R.Command.ARRIVED,
    TripStart: R.Command.START,
    TripComplete: R.Command.COMPLETE,
    OrderCancel: R.Command.CANCEL,
}


# The engine's answer to a ride_request whose id names another live request of the passenger.
RIDE_ID_CONFLICT = "id: already used by this passenger for a different ride that is still active"


def idempotency_key(passenger_id: str, request_id: str | int | None) -> int:
    """A stable 64-bit key for (passenger, request id); 0 when there is no id.

    The engine holds a key as long as its order is live: a retry gets the same order, the
    same id with another pickup or dropoff gets `conflict`, and once the order has ended the
    id is free again (a new session that starts counting at "r1" again never gets an old order).
    """
    if request_id is None:
        return 0
    digest = hashlib.blake2b(f"{passenger_id}\0{request_id!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class Handlers:
    def __init__(self, link: EngineLink, bridge: Bridge, stats: SidecarStats) -> None:
        self.link = link
        self.bridge = bridge
        self.stats = stats
        self.system_stats: Callable[[], dict[str, Any]] | None = None  # set by the server: the admin snapshot
        self._by_type = {
            DriverLocation: self._driver_location,
            DriverStatus: self._driver_status,
            RideRequest: self._ride_request,
            **dict.fromkeys(COMMANDS, self._order_action),
            NearbySubscribe: self._nearby,
            NearbyUnsubscribe: self._nearby,
            AdminSubscribe: self._admin_subscribe,
            Ping: self._ping,
        }

    def handle(self, conn: Connection, req: Request) -> None:
        try:
            self._by_type[type(req.message)](conn, req)
        except EngineUnavailable as e:
            self.error(conn, ErrorCode.ENGINE_UNAVAILABLE, str(e), req.request_id)
        except Overloaded as e:
            self.error(conn, ErrorCode.OVERLOADED, str(e), req.request_id)

    def error(self, conn: Connection, code: ErrorCode, message: str, request_id: Any = None) -> None:
        out: dict[str, Any] = {"type": "error", "code": code.value, "message": message, "ts": now_ms()}
        if request_id is not None:
            out["id"] = request_id
        self.stats.errors_sent += 1
        conn.send(out)

    def _corr(self, conn: Connection, req: Request, always: bool = False, conflict: str | None = None) -> int:
        if req.request_id is None and not always:
            return 0
        return self.bridge.expect_reply(conn, req.request_id, conflict)

    def _publish(self, type_: int, body: bytes, corr: int, latest_key: object = None) -> None:
        try:
            if not self.link.available:  # refused at once: an app must not wait on a silent engine
                raise EngineUnavailable("engine not responding" if self.link.attached else "engine not attached")
            if latest_key is not None and not corr:
                self.link.publish_latest(latest_key, type_, body)
            else:
                self.link.publish(type_, body, reply_due=bool(corr))
        except (EngineUnavailable, Overloaded):
            self.bridge.pending.pop(corr, None)
            raise
        self.stats.records_out += 1

    def _driver_location(self, conn: Connection, req: Request) -> None:
        m: DriverLocation = req.message  # type: ignore[assignment]
        corr = self._corr(conn, req)
        body = R.driver_location(conn.origin, time.monotonic_ns(), corr,
                                 m.lat, m.lon, m.heading, m.speed_kmh, m.accuracy_m)
        conn.resync[R.T.IN_DRIVER_LOCATION] = body
        self._publish(R.T.IN_DRIVER_LOCATION, body, corr, latest_key=conn.app_id)
        self.bridge.feed.position(conn.app_id, m)

    def _driver_status(self, conn: Connection, req: Request) -> None:
        m: DriverStatus = req.message  # type: ignore[assignment]
        corr = self._corr(conn, req)
        body = R.driver_status(conn.origin, time.monotonic_ns(), corr, m.online)
        conn.resync[R.T.IN_DRIVER_STATUS] = body
        self._publish(R.T.IN_DRIVER_STATUS, body, corr)
        self.bridge.feed.driver_status(conn.app_id, m.online)
        self.bridge.to_admins("drivers", {"type": "driver_status", "driver_id": conn.app_id,
                                          "status": "online" if m.online else "offline", "ts": now_ms()})

    def _ride_request(self, conn: Connection, req: Request) -> None:
        m: RideRequest = req.message  # type: ignore[assignment]
        corr = self._corr(conn, req, always=True, conflict=RIDE_ID_CONFLICT)
        body = R.ride_request(conn.origin, time.monotonic_ns(), corr,
                              idempotency_key(conn.app_id, req.request_id),
                              (m.pickup.lat, m.pickup.lon), (m.dropoff.lat, m.dropoff.lon))
        self._publish(R.T.IN_RIDE_REQUEST, body, corr)
        self.bridge.feed.ride_requested(corr, conn.app_id, (m.pickup.lat, m.pickup.lon), (m.dropoff.lat, m.dropoff.lon))

    def _order_action(self, conn: Connection, req: Request) -> None:
        m: OrderAction = req.message  # type: ignore[assignment]
        corr = self._corr(conn, req, always=True)
        reason = m.reason if isinstance(m, OrderCancel) else ""
        body = R.order_command(conn.origin, time.monotonic_ns(), corr, m.order_id, COMMANDS[type(m)], reason)
        self._publish(R.T.IN_ORDER_COMMAND, body, corr)
        if isinstance(m, OrderReject):  # the engine answers a reject with its ack only
            self.bridge.feed.offer_ended(conn.app_id, m.order_id)

    def _nearby(self, conn: Connection, req: Request) -> None:
        m: Nearby = req.message  # type: ignore[assignment]
        corr = self._corr(conn, req)
        body = R.nearby(conn.origin, time.monotonic_ns(), corr,
                        m.lat if m.subscribe else 0.0, m.lon if m.subscribe else 0.0, m.radius_m, m.subscribe)
        conn.resync[R.T.IN_NEARBY] = body
        self._publish(R.T.IN_NEARBY, body, corr)

    def _admin_subscribe(self, conn: Connection, req: Request) -> None:
        m: AdminSubscribe = req.message  # type: ignore[assignment]
        conn.topics = m.topics
        if req.request_id is not None:
            conn.send({"type": "ack", "id": req.request_id, "topics": sorted(m.topics), "ts": now_ms()})
        if "system_stats" in m.topics and self.system_stats is not None:
            conn.send(self.system_stats())  # a dashboard shows numbers at once, not a second later
        if "fleet" in m.topics:
            conn.send(self.bridge.feed.snapshot(now_ms()))  # the whole map at once; deltas follow each tick

    def _ping(self, conn: Connection, req: Request) -> None:
        out: dict[str, Any] = {"type": "pong", "ts": now_ms()}
        if req.request_id is not None:
            out["id"] = req.request_id
        conn.send(out)
