"""The WebSocket server: a thin picows shell around protocol, router, auth, limits, handlers and bridge.

picows calls the listener factory synchronously with the parsed upgrade
request, before the upgrade: routing, auth and format choice happen there,
and each refusal maps to one HTTP status (RouteError carries its own;
auth.HTTP_STATUS maps the auth errors). Per connection, `AppListener` feeds
data frames to its sans-I/O `Decoder`, charges its `RateLimiter`, answers
CLOSE (picows does not), relays picows' pause/resume of writing to the
connection's outbox, and tells the engine when a session opens and closes.

Close codes this server sends: 1000 (reply to the client's CLOSE), 1001
(shutdown; a ping not answered in time — picows' auto-ping), 1008 (flooding
past the rate limit), 1009 (a message over the size or fragment cap, after a
`too_large` error saying which), 4001 (replaced by
a newer connection with the same role and id), 4008 (slow reader).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from sidecar import dashboard, metrics
from sidecar import records as R
from sidecar.admin_feed import FEED_INTERVAL_S, RateWindow
from sidecar.auth import ENV_SECRET, Authenticator, AuthError, Unauthenticated, http_status
from sidecar.bridge import Bridge
from sidecar.connections import CLOSE_SLOW_READER, Connection, Registry, now_ms
from sidecar.engine_link import ENGINE_TIMEOUT_S, REPLY_SPIN_US, EngineLink, EngineUnavailable, Overloaded
from sidecar.events import ClientError, DriverLocation, ErrorCode, Nearby, Role
from sidecar.handlers import Handlers
from sidecar.limits import (
    ABUSE,
    ABUSE_AFTER,
    LIMITED,
    MAX_PAUSED_S,
    MAX_QUEUED,
    MESSAGES_RATE,
    POSITIONS_RATE,
    Rate,
    RateLimiter,
)
from sidecar.protocol import Decoder, MessageTooBig
from sidecar.router import ADMIN_PAGE, HttpRoute, RouteError, WsRoute, choose_format, route
from sidecar.stats import SidecarStats

log = logging.getLogger("dgdo.server")

CLOSE_REPLACED = 4001  # a newer connection with the same role and id took over
MAX_FRAME_BYTES = 1024 * 1024  # picows' own per-frame guard; messages are capped lower by the Decoder
# Per-connection write buffer (bytes in uvloop's buffer, beyond the kernel's socket buffer): a few
# hundred messages. 50k connections x 64 KiB is only reached if all of them stop reading at once.
WRITE_HIGH = 64 * 1024
WRITE_LOW = 16 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    """What an operator may tune per worker; the defaults are the production ones."""

    # None turns auth off (only `dgdo sidecar --insecure-no-auth` does that on purpose).
    jwt_secret: str | None = field(default_factory=lambda: os.environ.get(ENV_SECRET) or None)
    ping_idle_s: float = 30.0  # no data from the client for this long -> PING
    ping_reply_s: float = 15.0  # no PONG within this -> close 1001 and drop
    positions_rate: Rate = POSITIONS_RATE
    messages_rate: Rate = MESSAGES_RATE
    abuse_after: int = ABUSE_AFTER
    write_high: int = WRITE_HIGH
    write_low: int = WRITE_LOW
    max_queued: int = MAX_QUEUED
    max_paused_s: float = MAX_PAUSED_S
    stats_interval_s: float = 1.0  # system_stats to subscribed admins
    feed_interval_s: float = FEED_INTERVAL_S  # `fleet` deltas to subscribed admins
    engine_timeout_s: float = ENGINE_TIMEOUT_S  # heartbeat silence after which the engine is unavailable


class App:
    """One sidecar worker: its engine link, registry, bridge and handlers."""

    def __init__(self, control_path: str, worker: int = 1, reply_spin_us: float = REPLY_SPIN_US,
                 settings: Settings | None = None) -> None:
        self.worker = worker
        self.settings = settings = settings or Settings()
        self.auth = Authenticator(settings.jwt_secret)
        self.stats = SidecarStats()
        self.registry = Registry(worker)
        self.bridge = Bridge(self.registry, self.stats)
        self.link = EngineLink(control_path, worker, self.bridge.on_records, self._on_engine_state, reply_spin_us,
                               settings.engine_timeout_s, self._on_engine_available)
        self.handlers = Handlers(self.link, self.bridge, self.stats)
        self.handlers.system_stats = self.system_stats
        self.server: asyncio.Server | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self._rates = RateWindow()
        self._fleet_behind: set[int] = set()  # admins (conn ids) that missed a delta: a full snapshot is owed

    async def start(self, host: str, port: int) -> None:
        s = self.settings
        self.server = await ws_create_server(
            self.listener_factory, host, port,
            enable_auto_ping=True, auto_ping_idle_timeout=s.ping_idle_s, auto_ping_reply_timeout=s.ping_reply_s,
            max_frame_size=MAX_FRAME_BYTES,
        )
        self.link.start()
        self._stats_task = asyncio.get_running_loop().create_task(self._admin_stats_loop())
        self._feed_task = asyncio.get_running_loop().create_task(self._admin_feed_loop())

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in (self._stats_task, self._feed_task):
            if task is not None:
                task.cancel()
        for conn in self.registry:
            conn.close(int(WSCloseCode.GOING_AWAY), "server shutting down")
        if self.server is not None:
            self.server.close()
        self.link.close()

    def _on_engine_state(self, up: bool) -> None:
        self.bridge.admin_log("info" if up else "error", "engine attached" if up else "engine detached")
        if up:
            # Tell a (possibly restarted) engine who is connected here, and how far each got: it
            # replays what it committed but never delivered here (or sends a snapshot). Those
            # already welcomed get no second welcome; those still waiting get theirs now.
            for conn in self.registry:
                self._publish_session(conn, R.T.IN_SESSION_OPEN, conn.last_seq)
                for type_, body in conn.resync.items():
                    with contextlib.suppress(EngineUnavailable, Overloaded):
                        self.link.publish(type_, body)
        else:
            self.bridge.fail_pending(ErrorCode.ENGINE_UNAVAILABLE, "engine restarted; retry the command",
                                     keep=self.link.salvaged_corrs)

    def _on_engine_available(self, up: bool) -> None:
        # Attached but silent (stopped, wedged): commands are refused at once meanwhile (Handlers);
        # those already in the ring wait for it and are answered when it beats again, or failed
        # as on any engine death if it never does.
        if up:
            self.bridge.admin_log("info", "engine beats again: available")
        else:
            self.bridge.admin_log("error", f"engine silent for over {self.settings.engine_timeout_s:g} s: "
                                           "unavailable, commands refused until it beats again")

    def _publish_session(self, conn: Connection, type_: int, last_seq: int | None = None) -> None:
        with contextlib.suppress(EngineUnavailable, Overloaded):  # re-announced on attach
            self.link.publish(type_, R.session(conn.origin, time.monotonic_ns(), last_seq))

    # ---- handshake --------------------------------------------------------------

    def listener_factory(self, request: WSUpgradeRequest) -> Any:
        try:
            r = route(request.method, request.path)
            if isinstance(r, HttpRoute):
                return self._http_page(r, request.headers.get("Authorization"))
            # The admin path carries no id: any admin token opens it, and its sub names the session.
            fmt, subprotocol = choose_format(request.headers.get("Sec-WebSocket-Protocol"), r.query)
            claims = self.auth.authenticate(r.role, None if r.role is Role.ADMIN else r.app_id, r.query,
                                            request.headers.get("Authorization"))
        except RouteError as e:
            return _http(e.status, e.message)
        except AuthError as e:
            self.stats.auth_refused += 1
            # RFC 6750 §3: a 401 names the scheme the client should retry with.
            extra = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if isinstance(e, Unauthenticated) else None
            return _http(http_status(e), e.message, extra_headers=extra)
        if claims is not None and r.role is Role.ADMIN:
            r = replace(r, app_id=claims.sub)
        conn = self.registry.new(r.role, r.app_id, fmt, r.last_seq)
        headers = {"Sec-WebSocket-Protocol": subprotocol} if subprotocol else None
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_101_response(extra_headers=headers), AppListener(self, conn, r)
        )

    def _http_page(self, r: HttpRoute, authorization: str | None = None) -> Any:
        if r.path == "/healthz":
            if self.link.available:
                return _http(200, "ok")
            return _http(503, "engine not responding" if self.link.attached else "engine unavailable")
        if r.path == "/metrics":
            return _http(200, self.metrics_text(), metrics.CONTENT_TYPE_LATEST)
        if r.path == dashboard.WHOAMI:
            status, body = dashboard.whoami(self.auth, r.query, authorization)
            if status == 401:
                self.stats.auth_refused += 1
            return _http(status, body, dashboard.JSON_TYPE, dashboard.NO_STORE)
        if r.path.startswith(ADMIN_PAGE):
            page = dashboard.asset(r.path)
            if page is not None:
                return _http(200, page.body, page.content_type, page.headers)
        return _http(404, "no such page")

    def metrics_text(self) -> str:
        return metrics.render(self).decode()

    # ---- admin ------------------------------------------------------------------

    def system_stats(self) -> dict[str, Any]:
        """The `system_stats` admin message: the engine's last ENGINE_STATS plus this worker's gauges."""
        s, e, feed = self.stats, self.stats.engine, self.bridge.feed
        # Requested, matched and completed are the engine's own counters (every worker's orders);
        # no_driver is counted from the updates this worker delivers (the engine keeps no such counter).
        requested, matched, completed, no_driver = self._rates.per_min(
            time.monotonic(), (e.orders_created, e.orders_matched, e.orders_completed, feed.counts["no_driver"]))
        p50, p99 = s.push_latency.percentiles(50, 99)
        producer, consumer = self.link.producer, self.link.consumer
        by_role = dict.fromkeys((r.value for r in Role), 0)
        for conn in self.registry.by_conn.values():
            by_role[conn.role.value] += 1
        return {
            "type": "system_stats",
            "matching_latency_us": {"p50": round(e.match_p50_ns / 1000, 1), "p99": round(e.match_p99_ns / 1000, 1)},
            "push_latency_us": {"p50": round(p50 / 1000, 1), "p99": round(p99 / 1000, 1)},
            "orders_per_min": requested,
            "order_rates": {"requested": requested, "matched": matched, "completed": completed,
                            "no_driver": no_driver},
            "orders": {"created": e.orders_created, "matched": e.orders_matched, "completed": e.orders_completed},
            "drivers_online": e.drivers_online,
            "drivers_available": e.drivers_available,
            "drivers_by_state": feed.driver_counts(),
            "active_orders": e.active_orders,
            "live_orders": feed.live_orders(),
            "connections": len(self.registry),
            "connections_by_role": by_role,
            "paused_connections": s.paused,
            "engine_attached": self.link.attached,
            "engine_available": self.link.available,
            "engine_heartbeat_age_ms": None if (age := self.link.heartbeat_age_ns) is None else age // 1_000_000,
            "ring_depths": {
                "in_bytes": producer.depth() if producer is not None and self.link.attached else 0,
                "in_backlog_bytes": self.link.backlog,
                "out_bytes": consumer.depth() if consumer is not None and self.link.attached else 0,
            },
            "ts": now_ms(),
        }

    async def _admin_stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval_s)
            subscribers = [c for c in self.registry.admins if "system_stats" in c.topics]
            if subscribers:
                try:
                    self.bridge.broadcast(subscribers, self.system_stats())
                except Exception:  # a bad tick must not end the stream
                    log.exception("! system_stats failed")

    async def _admin_feed_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.feed_interval_s)
            try:
                self.flush_feed(time.monotonic(), now_ms())
            except Exception:  # a bad tick must not end the stream
                log.exception("! fleet feed failed")

    def flush_feed(self, now: float, ts_ms: int) -> None:
        """One tick of the `fleet` topic: the delta to admins keeping up, a full snapshot to the rest.

        An admin whose socket is paused (its write buffer full) is skipped, not queued: deltas
        cannot be coalesced, and a tab that cannot keep up must not make the sidecar hold a
        growing backlog. Once it drains, it gets one full snapshot instead of what it missed.
        """
        feed = self.bridge.feed
        subscribers = [c for c in self.registry.admins if "fleet" in c.topics]
        delta = feed.tick(now, ts_ms, want=bool(subscribers))
        behind = self._fleet_behind
        if not subscribers:
            behind.clear()
            return
        behind.intersection_update(c.conn_id for c in subscribers)
        if feed.full_due(now):
            behind.update(c.conn_id for c in subscribers)
        ready: list[Connection] = []
        owed: list[Connection] = []
        for c in subscribers:
            if c.paused:
                behind.add(c.conn_id)
            elif c.conn_id in behind:
                owed.append(c)
                behind.discard(c.conn_id)
            else:
                ready.append(c)
        if owed:
            self.bridge.broadcast(owed, feed.snapshot(ts_ms))
        if delta is not None and ready:
            self.bridge.broadcast(ready, delta)

    # ---- connection lifecycle --------------------------------------------------

    def connected(self, conn: Connection, r: WsRoute) -> None:
        """Registers the connection and opens its session with the engine.

        The welcome goes out when the engine answers (Bridge.welcome), followed by what the app
        missed since its `?last_seq` or a snapshot. With no engine attached the connection waits
        without a welcome: the session is opened when one attaches (_on_engine_state).
        """
        self.registry.add(conn, on_replaced=self._replaced)
        self.stats.connections = len(self.registry)
        self._publish_session(conn, R.T.IN_SESSION_OPEN, r.last_seq)

    def _replaced(self, old: Connection) -> None:
        old.close(CLOSE_REPLACED, "replaced by a newer connection")
        self.bridge.admin_log("info", f"{old.role.value} {old.app_id} reconnected; the older connection closed 4001")

    def disconnected(self, conn: Connection) -> None:
        if conn.paused:
            self.stats.paused -= 1
            conn.paused = False
        if self.registry.remove(conn):
            self.stats.connections = len(self.registry)
            self._publish_session(conn, R.T.IN_SESSION_CLOSE)
            if conn.role is Role.DRIVER:
                self.bridge.feed.driver_gone(conn.app_id)
                self.bridge.to_admins("drivers", {"type": "driver_status", "driver_id": conn.app_id,
                                                  "status": "disconnected", "ts": now_ms()})

    def close_for(self, conn: Connection, code: int, why: str) -> None:
        """Closes a connection for misbehaving, counted and logged to admins."""
        if conn.closing:
            return
        if code == CLOSE_SLOW_READER:
            self.stats.slow_reader_closes += 1
        elif code == WSCloseCode.POLICY_VIOLATION.value:
            self.stats.abuse_closes += 1
        elif code == WSCloseCode.MESSAGE_TOO_BIG.value:
            self.stats.too_large_closes += 1
        conn.close(code, why)
        self.bridge.admin_log("warning", f"closed {conn.role.value} {conn.app_id} with {code}: {why}")


def _http(status: int, body: str, content_type: str = "text/plain; charset=utf-8",
          extra_headers: dict[str, str] | None = None) -> WSUpgradeResponseWithListener:
    headers = {"Content-Type": content_type, **(extra_headers or {})}
    if status >= 400:
        resp = WSUpgradeResponse.create_error_response(status, body.encode(), headers)
    else:
        resp = WSUpgradeResponse.create_ok_response(body.encode(), headers)
    return WSUpgradeResponseWithListener(resp, None)


class AppListener(WSListener):
    def __init__(self, app: App, conn: Connection, r: WsRoute) -> None:
        self.app = app
        self.conn = conn
        self.route = r
        self.decoder = Decoder(conn.role, conn.app_id)
        s = app.settings
        self.limiter = RateLimiter(time.monotonic(), s.positions_rate, s.messages_rate, s.abuse_after)
        self._paused_timer: asyncio.TimerHandle | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        s = self.app.settings
        transport.underlying_transport.set_write_buffer_limits(high=s.write_high, low=s.write_low)
        self.conn.transport = transport
        self.conn.on_overflow = lambda conn: self.app.close_for(conn, CLOSE_SLOW_READER, "slow reader: too much owed")
        self.app.connected(self.conn, self.route)

    # picows forwards asyncio's flow-control callbacks of the underlying transport here.
    def pause_writing(self) -> None:
        conn = self.conn
        if conn.paused or conn.closing:
            return
        conn.pause(self.app.settings.max_queued)
        self.app.stats.paused += 1
        self._paused_timer = asyncio.get_running_loop().call_later(self.app.settings.max_paused_s, self._still_paused)

    def resume_writing(self) -> None:
        if self._paused_timer is not None:
            self._paused_timer.cancel()
            self._paused_timer = None
        if self.conn.paused:
            self.app.stats.paused -= 1
            self.conn.resume()

    def _still_paused(self) -> None:
        self._paused_timer = None
        if self.conn.paused:
            self.app.close_for(self.conn, CLOSE_SLOW_READER, "slow reader: not reading")

    def _admit(self, position: bool, request_id: str | int | None) -> bool:
        verdict = self.limiter.check(time.monotonic(), position, self.decoder.last_frames)
        if verdict is LIMITED:
            self.app.stats.rate_limited += 1
            self.app.handlers.error(self.conn, ErrorCode.RATE_LIMITED, "too many messages; slow down", request_id)
            return False
        if verdict is ABUSE:
            self.app.close_for(self.conn, WSCloseCode.POLICY_VIOLATION.value, "rate limit exceeded persistently")
            return False
        return True

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        t = frame.msg_type
        if t is WSMsgType.TEXT or t is WSMsgType.BINARY or t is WSMsgType.CONTINUATION:
            if self.conn.closing:
                return
            self.app.stats.frames_in += 1
            binary = None if t is WSMsgType.CONTINUATION else t is WSMsgType.BINARY
            try:
                req = self.decoder.feed(binary, frame.fin, frame.get_payload_as_bytes())
            except MessageTooBig as e:
                # Say why in the negotiated format, then close: the app can log the reason.
                self.app.handlers.error(self.conn, ErrorCode.TOO_LARGE, str(e))
                self.app.close_for(self.conn, WSCloseCode.MESSAGE_TOO_BIG.value, "message too big")
                return
            except ClientError as e:
                # Undecodable messages cost tokens too: a garbage flood is still a flood.
                if self._admit(False, e.request_id):
                    self.app.handlers.error(self.conn, e.code, e.message, e.request_id)
                return
            if req is not None:
                m = req.message
                if self._admit(isinstance(m, DriverLocation | Nearby), req.request_id):
                    self.app.handlers.handle(self.conn, req)
        elif t is WSMsgType.CLOSE:
            # picows leaves the reply to us (RFC 6455 §5.5.1): echo the code, then hang up.
            if not transport.is_close_frame_sent:  # we may have closed first: then this is the echo
                code = frame.get_close_code()
                transport.send_close(code if code is not WSCloseCode.NO_INFO else WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._paused_timer is not None:
            self._paused_timer.cancel()
            self._paused_timer = None
        self.app.disconnected(self.conn)
