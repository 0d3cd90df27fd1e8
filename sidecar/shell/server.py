"""The WebSocket server: picows glue around the session core.

Upgrade -> route and auth -> feed the core -> write what it yields. Nothing
here decides what to send or to whom (sidecar/session/core.py does); this
module owns the sockets and the event loop:

* every connection first meets the front door (shell/front.py): it answers the
  plain-HTTP pages (GET and HEAD, HTTP/1.0 and 1.1), 400 for an HTTP/1.1 request without
  `Host`, 405 for other methods, 426 for a WebSocket version other than 13, 503 past
  `--max-connections` (shell/fdlimit.py), and hands the rest to picows, which owns the
  socket from then on.
* picows calls the listener factory synchronously with the parsed upgrade
  request: routing, auth and format choice happen there (wire/router.py,
  wire/auth.py), and each refusal maps to one HTTP status. An auth refusal of an
  upgrade that carries `Origin` (a browser, which would see only close 1006) is
  instead accepted, answered with one `error` (`unauthorized` / `forbidden`) in the
  negotiated format and closed with 4401 / 4403 (shell/refusal.py). With auth off, a browser's
  upgrade from a page of another host is refused that way too (wire/auth.py: ForeignOrigin).
* per connection, `AppListener` feeds data frames to its `Decoder` (wire/codec.py),
  charges its `RateLimiter` (session/limits.py), hands the typed message to the
  core, answers CLOSE (picows does not), and relays picows' pause/resume of
  writing to the core.
* the engine link (engine/link.py) hands each drained batch of records to the
  core, and reports attach / detach / liveness.
* after each feed, the core is drained: records go to the link, frames to their
  sockets (each session's in one write of the buffer the core framed them in),
  closes last. An engine batch is written at once (one drain, one write per
  client); client input is drained once per event-loop turn, so a burst of
  frames read together is answered together.

Close codes this server sends: the client's own in reply to its CLOSE (1000 when it gave none),
1002 (a CLOSE code no CLOSE may carry, a reserved bit set; picows sends 1002 and 1007 for the
protocol errors it finds itself), 1001 (shutdown; a ping not answered in time —
session/keepalive.py, one sweep for every connection), 1007 (a text message that is not UTF-8),
1008 (flooding past the rate limit), 1009 (a message over the size or fragment cap, after a
`too_large` error saying which), 4001 (replaced by a newer connection with the same role and id),
4008 (slow reader), 4401 / 4403 (a browser's upgrade refused by auth), 4401 (the token that opened
the connection expired: the core's tick decides, session/core.py `expire`, once a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import ssl
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
)

from sidecar.engine.link import ENGINE_TIMEOUT_S, REPLY_SPIN_US, EngineLink, EngineUnavailable, Overloaded
from sidecar.engine.ring import Consumer, RingError
from sidecar.session.admin_feed import FEED_INTERVAL_S
from sidecar.session.core import (
    ANNOUNCEMENTS,
    CLOSE_INVALID_TEXT,
    CLOSE_POLICY,
    CLOSE_REPLACED,
    CLOSE_SLOW_READER,
    SessionCore,
)
from sidecar.session.keepalive import Keepalive
from sidecar.session.limits import (
    ABUSE,
    ABUSE_AFTER,
    ADMIT,
    LIMITED,
    MAX_PAUSED_S,
    MAX_QUEUED,
    MESSAGES_RATE,
    POSITIONS_RATE,
    Rate,
    RateLimiter,
    Verdict,
)
from sidecar.session.session import Session
from sidecar.session.stats import LinkGauges, SidecarStats
from sidecar.shell import dashboard, fdlimit, metrics, tls
from sidecar.shell.front import Front, Page
from sidecar.shell.refusal import RefusedListener
from sidecar.wire.auth import ENV_SECRET, Authenticator, AuthError, Unauthenticated, expires_at, http_status
from sidecar.wire.codec import Decoder, InvalidText, MessageTooBig
from sidecar.wire.errors import ClientError, ErrorCode
from sidecar.wire.messages import DriverLocation, Nearby, Role
from sidecar.wire.router import ADMIN_PAGE, HttpRoute, RouteError, WsRoute, choose_format, route

__all__ = ["CLOSE_REPLACED", "CLOSE_SLOW_READER", "MAX_FRAME_BYTES", "WORKER_HEADER", "App", "Settings"]

log = logging.getLogger("dgdo.server")

MAX_FRAME_BYTES = 1024 * 1024  # picows' own per-frame guard; messages are capped lower by the Decoder
# Per-connection write buffer (bytes in uvloop's buffer, beyond the kernel's socket buffer): a few
# hundred messages. 50k connections x 64 KiB is only reached if all of them stop reading at once.
WRITE_HIGH = 64 * 1024
WRITE_LOW = 16 * 1024
CLOSE_WAIT_S = 2.0  # how long a CLOSE we sent waits for the client's echo (RFC 6455 §7.1.1)
CLOSE_GRACE_S = 10.0  # how long a closing connection may take to flush before it is aborted
_CLOSE_CODES = {c.value: c for c in WSCloseCode}
# Messages charged to the positions bucket as well. A tuple: `DriverLocation | Nearby` would build
# a union object on every inbound message.
_POSITIONS = (DriverLocation, Nearby)
# The frame types as plain globals: `WSMsgType.TEXT` is an enum class attribute, ~200 ns a lookup on
# a small VM under Python 3.11, and on_ws_frame made three or four for every message.
_TEXT, _BINARY, _CONTINUATION = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION
_PING, _PONG, _CLOSE = WSMsgType.PING, WSMsgType.PONG, WSMsgType.CLOSE


# picows' read buffer per connection, grown (doubled) when a read fills it. Its default, 16 KiB,
# was half of what an idle connection cost (bench/conns); app messages are ~100-300 bytes, so the
# smallest picows allows holds a burst of them, and a connection that sends more grows its own.
READ_BUFFER_BYTES = 2048

METRICS_PORT_CONNECTIONS = 64  # scrapers and health checks on --metrics-port, at once
WORKER_HEADER = "X-Dgdo-Worker"  # in every 101: the sidecar worker id that took the connection
FIRST_ATTACH_S = 1.0  # the one attach tried before listening (App.start)
PICOWS_LOG_EVERY_S = 10.0  # at most one of each kind of picows warning or error this often (_QuietLog)
PICOWS_CLIENT_FAULTS = ("WS parser error",)  # picows' ERROR lines about what a client sent: WARNING here


class _QuietLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """picows logs every connection and disconnection at INFO: thousands of lines a minute under
    real traffic (136 in 25 s of the demo). Here they are DEBUG.

    Its warnings and errors are each about one connection, and mostly the peer's doing (a frame it
    cannot parse: ERROR "WS parser error"). Any client can cause them as fast as it can connect,
    even one with no token (a browser's refused upgrade is accepted first: shell/refusal.py), and
    fill the journal. So each kind of line (its format string) is written at most once per
    PICOWS_LOG_EVERY_S, the first of a window as it comes, with the number left out before it.
    Being an adapter rather than a Logger, it also spares each connection the child Logger picows
    would otherwise make for it (~0.6 KB, bench/conns)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self._windows: dict[object, list[float | int]] = {}  # format string -> [window start, lines left out]

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level > logging.WARNING and isinstance(msg, str) and msg.startswith(PICOWS_CLIENT_FAULTS):
            level = logging.WARNING  # a client's bad frame: `journalctl -p err` is for faults of ours
        if level < logging.WARNING or not self.isEnabledFor(level):
            super().log(level, msg, *args, **kwargs)
            return
        now = time.monotonic()
        window = self._windows.get(msg)
        if window is not None and now - window[0] < PICOWS_LOG_EVERY_S:
            window[1] += 1
            return
        left_out = 0 if window is None else int(window[1])
        self._windows[msg] = [now, 0]
        if left_out:
            msg, args = f"{msg} ({left_out} more like this left out before)", args
        super().log(level, msg, *args, **kwargs)


# How picows serves; the benches' bare picows servers (bench/push/raw_server.py) use the same.
# `use_aiofastnet=False`: uvloop's own TCP transport rather than aiofastnet's, which costs ~5 KB
# more per connection (13.4 against 8.1 KB for a bare server, bench/conns) for no gain measured
# on the push path (bench/push) or on ingest (bench/protocol).
PICOWS_SERVER_OPTIONS: dict[str, Any] = {
    "read_buffer_init_size": READ_BUFFER_BYTES,
    "logger_name": _QuietLog(logging.getLogger("picows.server")),
    "use_aiofastnet": False,
}


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
    stats_interval_s: float = 1.0  # system_stats to subscribed admins; connections whose token expired closed
    feed_interval_s: float = FEED_INTERVAL_S  # `fleet` deltas to subscribed admins
    engine_timeout_s: float = ENGINE_TIMEOUT_S  # heartbeat silence after which the engine is unavailable
    idle_spin_us: float = 0.0  # after work, poll the engine's ring this long before parking (engine/idle.py)
    max_connections: int | None = None  # None: from the open-files limit (shell/fdlimit.py)
    # /metrics carries the engine's figures (drivers, orders, offer decisions) on one worker only, or a
    # sum over workers would count them N times: the worker with this id (0: none; shell/metrics.py).
    engine_metrics_worker: int = 1
    # A port of this worker's own that serves /metrics and /healthz only: Prometheus must scrape each
    # worker, and workers that share the public port are reached at random through it. None: no such
    # port. (The `metrics_port` setting is a base: this is worker N's, base + N - 1; shell/ports.py.)
    metrics_port: int | None = None
    metrics_host: str | None = None  # where the metrics port listens (None: where the public port does)
    # /metrics on the metrics port only: the public port, which apps reach, answers 404 for it.
    private_metrics: bool = False


def settle_heap() -> None:
    """Moves every object made so far (modules, settings, the server) out of the collector's reach.

    They live as long as the process, yet until gc.freeze() each young-generation collection
    walks those not yet promoted: measured under load (bench-latency `ring`, 10k offers + 10k
    positions/s), generation-1 collections took 1.3 ms at p50 and 5.3 ms at worst, a pause every
    push in flight waits out. Frozen, they are never scanned again; what the traffic makes is
    collected as before.
    """
    gc.collect()
    gc.freeze()


class App:
    """One sidecar worker: its session core between the picows server and the engine link."""

    def __init__(self, control_path: str, worker: int = 1, reply_spin_us: float = REPLY_SPIN_US,
                 settings: Settings | None = None) -> None:
        self.worker = worker
        self._worker_text = str(worker)
        self.settings = settings = settings or Settings()
        self.auth = Authenticator(settings.jwt_secret)
        self.stats = SidecarStats()
        self.core = SessionCore(worker, self.stats, max_queued=settings.max_queued, gauges=self._gauges)
        self.link = EngineLink(control_path, worker, self._on_records, self._on_engine_state, reply_spin_us,
                               settings.engine_timeout_s, self._on_engine_available, settings.idle_spin_us)
        self.metrics = metrics.Metrics(self, worker == settings.engine_metrics_worker)
        self.server: asyncio.Server | None = None
        self.front: Front | None = None  # counts the connections (front.open) and caps them
        self.metrics_server: asyncio.Server | None = None  # --metrics-port
        self._loop = asyncio.get_running_loop()
        self.flush_due = False  # a drain is queued for the end of this loop turn (flush_soon)
        self._stats_task: asyncio.Task[None] | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self.keepalive = Keepalive(settings.ping_idle_s, settings.ping_reply_s)
        self.listeners: set[AppListener] = set()  # every open connection, for the keepalive sweep
        self._hangups: dict[WSTransport, list[asyncio.TimerHandle]] = {}  # hang_up_later's timers, by connection
        self._keepalive_task: asyncio.Task[None] | None = None
        self.tls = False  # serving wss:// (start)

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    reuse_port: bool = True) -> None:
        """Attaches (one try), then listens (wss:// and https:// when given an ssl context,
        shell/tls.py) behind the front door (shell/front.py). Raises WorkerIdTaken before
        listening if another live sidecar holds our worker id: with SO_REUSEPORT a listening
        duplicate would take a share of the port's new connections until it learnt that and left.
        `reuse_port`: share the port with sibling workers (False: a worker alone, shell/ports.py)."""
        self.tls = ssl_context is not None
        with contextlib.suppress(OSError, TimeoutError, ConnectionError, RingError):
            await self.link.attach(timeout=FIRST_ATTACH_S)  # no engine yet: we serve (/healthz 503), the link retries
        max_connections = self.settings.max_connections or fdlimit.default_max_connections()
        self.front = Front(self.page, max_connections)
        self.server = await self.front.start(
            self.listener_factory, host, port,
            enable_auto_ping=False,  # one keepalive sweep for all (_keepalive_loop), not a task per connection
            enable_auto_pong=False,  # AppListener answers PINGs, charged to the connection's rate limit
            max_frame_size=MAX_FRAME_BYTES,
            # N workers share the public port (`dgdo run --workers N`, dgdo-sidecar@.service): the
            # kernel spreads new connections over them. It also lets a second sidecar bind a port
            # a live one holds: a duplicate worker id is refused by the engine, and `dgdo run`
            # checks first that the port is free (shell/ports.py).
            reuse_port=reuse_port, **PICOWS_SERVER_OPTIONS,
            **({"ssl": ssl_context, "ssl_handshake_timeout": tls.HANDSHAKE_TIMEOUT_S} if ssl_context else {}),
        )
        settle_heap()
        if self.settings.metrics_port is not None:
            try:
                # Its own front door: HEAD and HTTP/1.0 scrapes answered alike, a few sockets at most.
                self.metrics_server = await Front(self.metrics_page, METRICS_PORT_CONNECTIONS).start(
                    self.metrics_listener_factory, self.settings.metrics_host or host, self.settings.metrics_port,
                    **PICOWS_SERVER_OPTIONS)
            except OSError:
                self.server.close()
                raise
        self.link.start()
        self.start_timers()

    def start_timers(self) -> None:
        """The periodic work of a serving sidecar: the admin topics' ticks and the keepalive sweep.

        (Apart from start(): bench/latency/alt_sidecar.py serves another feed than the link, with
        the same timers, so that its latency tail pays what the production sidecar's does.)"""
        self._stats_task = self._loop.create_task(self._admin_loop(self.settings.stats_interval_s, self.core.tick))
        self._feed_task = self._loop.create_task(self._admin_loop(self.settings.feed_interval_s, self.core.feed_tick))
        self._keepalive_task = self._loop.create_task(self._keepalive_loop())

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in (self._stats_task, self._feed_task, self._keepalive_task):
            if task is not None:
                task.cancel()
        for session in self.core.sessions():
            self.core.close(session, int(WSCloseCode.GOING_AWAY), "server shutting down")
        self.flush()
        for server in (self.server, self.metrics_server):
            if server is not None:
                server.close()
        self.link.close()

    # ---- draining the core ---------------------------------------------------------------

    def flush(self) -> None:
        """Writes everything the core yielded: records to the link, then frames, then closes."""
        core = self.core
        records = core.records_to_send()
        if records:
            link = self.link
            refused = 0
            for rec in records:
                try:
                    if rec.latest is not None:
                        link.publish_latest(rec.latest, rec.type, rec.body, rec.reply_due)
                    else:
                        link.publish(rec.type, rec.body, reply_due=rec.corr != 0 or rec.reply_due,
                                     bounded=rec.type not in ANNOUNCEMENTS)
                except EngineUnavailable as e:
                    refused += 1
                    core.not_taken(rec, ErrorCode.ENGINE_UNAVAILABLE, str(e))
                except Overloaded as e:
                    refused += 1
                    core.not_taken(rec, ErrorCode.OVERLOADED, str(e))
            # Counted here, once the link has taken them: a counter (/metrics) that only goes up.
            self.stats.records_out += len(records) - refused
        writes = core.writes_to_send()
        if writes:
            self._write(writes)
        closes = core.closes_to_send()
        for session, code, reason in closes:
            self._close(session, code, reason)
        if records:
            # Written now, in this drain, rather than a loop turn later; the link spins here for
            # a command's answer, and an answer that comes is drained (nested) before this returns.
            self.link.flush()

    @staticmethod
    def _write(writes: list[tuple[Session, bytearray]]) -> None:
        """Writes a drain's frames: each session's in one write of the buffer the core framed them in.

        A picows `send` is one send(2) per frame, and on a small VM that system call costs more
        than the Python that made the message (bench/push); an engine batch often holds several
        messages for one client (an order update, its estimate, a position), so the core frames
        them together (wire/frames.py) and each buffer goes to the transport as it is. uvloop may
        keep a buffer it could not send at once: the core makes a new one for the next drain.
        """
        for session, data in writes:
            t: WSTransport | None = session.io
            if t is not None and not t.is_disconnected and not t.is_close_frame_sent:
                t.underlying_transport.write(data)  # (picows' own send checks is_close_frame_sent too)

    def _flush_turn(self) -> None:
        self.flush_due = False
        self.flush()

    def flush_soon(self) -> None:
        """Drains the core once at the end of this event-loop turn (client input arrives frame by frame)."""
        if not self.flush_due:
            self.flush_due = True
            self._loop.call_soon(self._flush_turn)

    def _close(self, session: Session, code: int, reason: str) -> None:
        t: WSTransport | None = session.io
        if t is None or t.is_disconnected:
            return
        t.send_close(_CLOSE_CODES.get(code, code), reason.encode())  # type: ignore[arg-type]
        # Not disconnect() now: closing a socket with unread input sends RST, and the client's
        # kernel then drops our CLOSE frame unread (a flooding client always has input in flight).
        # The client's CLOSE echo normally ends it (AppListener); these only bound the wait.
        self.hang_up_later(t, CLOSE_WAIT_S, True)  # graceful: buffered frames, the CLOSE, then FIN
        self.hang_up_later(t, CLOSE_GRACE_S, False)  # a client that never reads: abort

    def hang_up_later(self, t: WSTransport, delay_s: float, graceful: bool) -> None:
        """Disconnects `t` in `delay_s` unless it is gone before (`hung_up`, from on_ws_disconnected).

        Cancelled then, not left to fire on a dead transport: a timer holds its transport, and with it
        the connection's buffers and upgrade (~8 KB), for its whole delay. At hundreds of closes a
        second that was tens of MB of peak RSS, which the allocators then kept.
        """
        self._hangups.setdefault(t, []).append(self._loop.call_later(delay_s, t.disconnect, graceful))

    def hung_up(self, t: WSTransport) -> None:
        for timer in self._hangups.pop(t, ()):
            timer.cancel()

    # ---- engine link callbacks -------------------------------------------------------------

    def _on_records(self, consumer: Consumer, nbytes: int) -> None:
        self.core.receive_records(consumer.buffer, nbytes)
        self.flush()

    def records(self, buffer: Any, nbytes: int) -> None:
        """Feeds a batch of records from another transport (the latency bench's alternative feeds)."""
        self.core.receive_records(buffer, nbytes)
        self.flush()

    def _on_engine_state(self, up: bool) -> None:
        if up:
            self.core.engine_attached()
        else:
            self.core.engine_detached(carried=self.link.salvaged_corrs)
        self.flush()

    def _on_engine_available(self, up: bool) -> None:
        self.core.engine_available(up, self.settings.engine_timeout_s)
        self.flush()

    def _gauges(self) -> LinkGauges:
        link = self.link
        producer, consumer = link.producer, link.consumer
        return LinkGauges(link.heartbeat_age_ns, producer.depth() if producer is not None and link.attached else 0,
                          link.backlog, consumer.depth() if consumer is not None and link.attached else 0)

    # ---- handshake ------------------------------------------------------------------------

    def listener_factory(self, request: WSUpgradeRequest) -> Any:
        try:
            r = route(request.method, request.path)
            if isinstance(r, HttpRoute):  # (the front door serves these; an upgrade to a page lands here)
                return _http_page(self.page(r, request.headers.get("Authorization")))
            # The admin path carries no id: any admin token opens it, and its sub names the session.
            fmt, subprotocol = choose_format(request.headers.get("Sec-WebSocket-Protocol"), r.query)
            headers = request.headers
            claims = self.auth.authenticate(r.role, None if r.role is Role.ADMIN else r.app_id, r.query,
                                            headers.get("Authorization"), headers.get("Origin"), headers.get("Host"))
        except RouteError as e:
            return _http(e.status, e.message)
        except AuthError as e:
            self.stats.auth_refused += 1
            if request.headers.get("Origin") is not None:  # a browser: it would see only close 1006
                return WSUpgradeResponseWithListener(_upgrade(subprotocol, self._worker_text), RefusedListener(e, fmt))
            # RFC 6750 §3: a 401 names the scheme the client should retry with.
            extra = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if isinstance(e, Unauthenticated) else None
            return _http(http_status(e), e.message, extra_headers=extra)
        if claims is not None and r.role is Role.ADMIN:
            r = replace(r, app_id=claims.sub)
        session = self.core.new_session(r.role, r.app_id, fmt, r.last_seq,
                                        expires=None if claims is None else expires_at(claims))
        return WSUpgradeResponseWithListener(_upgrade(subprotocol, self._worker_text), AppListener(self, session, r))

    def page(self, r: HttpRoute, authorization: str | None = None) -> Page:
        """A plain-HTTP page: the front door serves it (GET and HEAD, HTTP/1.0 and 1.1)."""
        if r.path == "/healthz":
            if self.link.available:
                return _page(200, "ok")
            return _page(503, self.engine_state())
        if r.path == "/metrics" and not self.settings.private_metrics:
            return _page(200, self.metrics_text(), metrics.CONTENT_TYPE_LATEST)
        if r.path == dashboard.WHOAMI:
            status, body = dashboard.whoami(self.auth, r.query, authorization)
            if status == 401:
                self.stats.auth_refused += 1
            return _page(status, body, dashboard.JSON_TYPE, dashboard.NO_STORE)
        if r.path.startswith(ADMIN_PAGE):
            asset = dashboard.asset(r.path)
            if asset is not None:
                return _page(200, asset.body, asset.content_type, asset.headers)
        return _page(404, "no such page")

    def engine_state(self) -> str:
        """Why the engine serves no command (/healthz's 503, the status lines): silent, and why if it said."""
        if not self.link.attached:
            return "engine unavailable"
        hold = self.core.engine_hold()
        return "engine not responding" if hold is None else f"engine not responding: {hold}"

    def metrics_page(self, r: HttpRoute, authorization: str | None = None) -> Page:
        """The --metrics-port: /metrics and /healthz of this worker, nothing else."""
        if r.path == "/metrics":
            return _page(200, self.metrics_text(), metrics.CONTENT_TYPE_LATEST)
        if r.path == "/healthz":
            return self.page(r)
        return _page(404, "this port serves /metrics and /healthz only")

    def metrics_listener_factory(self, request: WSUpgradeRequest) -> Any:
        """No WebSocket on the --metrics-port: an upgrade there gets a 404."""
        return _http(404, "this port serves /metrics and /healthz only")

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_server is None else self.metrics_server.sockets[0].getsockname()[1]

    def metrics_text(self) -> str:
        return self.metrics.render().decode()

    # ---- admin ---------------------------------------------------------------------------------

    def system_stats(self) -> dict[str, Any]:
        return self.core.system_stats()

    def flush_feed(self) -> None:
        """One tick of the dashboard's `fleet` topic, written at once."""
        self.core.feed_tick()
        self.flush()

    async def _admin_loop(self, interval_s: float, tick: Any) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                tick()
                self.flush()
            except Exception:  # a bad tick must not end the stream
                log.exception("! admin tick %s failed", getattr(tick, "__name__", tick))

    async def _keepalive_loop(self) -> None:
        """PINGs idle clients, closes (1001) those that do not answer: session/keepalive.py."""
        keepalive = self.keepalive
        while True:
            await asyncio.sleep(keepalive.interval_s)
            ping, dead = keepalive.sweep(time.monotonic(), self.listeners)
            for listener in ping:
                t: WSTransport | None = listener.session.io
                if t is not None and not t.is_disconnected:
                    t.send_ping()
            for listener in dead:
                self.core.close(listener.session, int(WSCloseCode.GOING_AWAY),
                                f"no answer to a ping within {keepalive.reply_s:g} s")
            if dead:
                self.flush()

    # ---- connection lifecycle ----------------------------------------------------------------

    def connected(self, session: Session, r: WsRoute) -> None:
        """The socket is up: the core registers the session and opens it with the engine."""
        self.core.open(session)
        self.flush_soon()

    def disconnected(self, session: Session) -> None:
        self.core.disconnected(session)
        self.flush_soon()


def _upgrade(subprotocol: str | None, worker: str) -> WSUpgradeResponse:
    # Which worker the kernel picked (several share the port): for operators and tests, no protocol meaning.
    headers = {WORKER_HEADER: worker}
    if subprotocol:
        headers["Sec-WebSocket-Protocol"] = subprotocol
    return WSUpgradeResponse.create_101_response(extra_headers=headers)


def _page(status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8",
          headers: dict[str, str] | None = None) -> Page:
    return Page(status, body.encode() if isinstance(body, str) else body, content_type, dict(headers or {}))


def _http_page(page: Page) -> WSUpgradeResponseWithListener:
    """A page as picows' answer to a request it parsed (an upgrade request to a page's path)."""
    return _http(page.status, page.body, page.content_type, page.headers)


def _http(status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8",
          extra_headers: dict[str, str] | None = None) -> WSUpgradeResponseWithListener:
    headers = {"Content-Type": content_type, **(extra_headers or {})}
    data = body.encode() if isinstance(body, str) else body
    if status >= 400:
        resp = WSUpgradeResponse.create_error_response(status, data, headers)
    else:
        resp = WSUpgradeResponse.create_ok_response(data, headers)
    return WSUpgradeResponseWithListener(resp, None)


def _close_reply(frame: WSFrame) -> tuple[WSCloseCode, bytes]:
    """The code (and reason) that answers a client's CLOSE: its own, 1000 when it gave none, 1002 when
    it gave one that no CLOSE frame may carry (RFC 6455 §7.4: 1005, 1006, 1015 and anything outside
    1000-4999), with a reason that says so, as picows' own 1002s do.

    picows refuses some of these itself (1005, 1015, the unassigned 1xxx-2xxx codes, a 1-byte
    payload) but lets through 0 (its own NO_INFO), 1006 and codes of 5000 and up, which echoed
    back would be our protocol error on the wire.
    """
    if frame.payload_size == 0:
        return WSCloseCode.OK, b""
    code = frame.get_close_code()
    if code == WSCloseCode.ABNORMAL_CLOSURE or not 1000 <= code <= 4999:
        return WSCloseCode.PROTOCOL_ERROR, f"close code {int(code)} is not one a CLOSE frame may carry".encode()
    return code, b""


class AppListener(WSListener):
    """One connection's picows callbacks: frames in (decode, admit, feed the core), flow control, close."""

    # Slots: one of these per connection (bench/conns), a dict would add ~300 bytes to each.
    __slots__ = ("_paused_timer", "_pong_owed", "_reading_paused", "app", "core", "decoder", "last_rx", "limiter",
                 "ping_at", "route", "session")

    def __init__(self, app: App, session: Session, r: WsRoute) -> None:
        self.app = app
        self.core = app.core
        self.session = session
        self.route: WsRoute | None = r
        self.decoder = Decoder(session.role, session.app_id)
        s = app.settings
        self.limiter = RateLimiter(time.monotonic(), s.positions_rate, s.messages_rate, s.abuse_after)
        self._paused_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False  # stopped reading a client over its rate (_pause_reading)
        self._pong_owed: bytes | None = None  # the latest PING's payload, while writing is paused
        self.last_rx = time.monotonic()  # keepalive (session/keepalive.py): when we last heard from it
        self.ping_at = 0.0  # ... and when we sent a PING it has not answered yet

    def on_ws_connected(self, transport: WSTransport) -> None:
        s = self.app.settings
        transport.underlying_transport.set_write_buffer_limits(high=s.write_high, low=s.write_low)
        self.session.io = transport
        self.app.listeners.add(self)
        r, self.route = self.route, None  # its query holds the token: not kept for the connection's life
        assert r is not None
        self.app.connected(self.session, r)

    # picows forwards asyncio's flow-control callbacks of the underlying transport here.
    def pause_writing(self) -> None:
        session = self.session
        if session.paused or session.closing:
            return
        self.core.pause(session)
        self._paused_timer = asyncio.get_running_loop().call_later(self.app.settings.max_paused_s, self._still_paused)

    def resume_writing(self) -> None:
        if self._paused_timer is not None:
            self._paused_timer.cancel()
            self._paused_timer = None
        if self.session.paused:
            self.core.resume(self.session)
            self.app.flush()
        owed, self._pong_owed = self._pong_owed, None
        t: WSTransport | None = self.session.io
        if owed is not None and t is not None and not t.is_disconnected and not self.session.closing:
            t.send_pong(owed)

    def _still_paused(self) -> None:
        self._paused_timer = None
        if self.session.paused:
            self.core.close_for(self.session, CLOSE_SLOW_READER, "slow reader: not reading")
            self.app.flush()

    def _admit(self, position: bool, request_id: str | int | None, frames: int = 1) -> bool:
        verdict = self.limiter.check(self.last_rx, position, frames)
        if verdict is ADMIT:
            return True
        self._refused(verdict, request_id)
        return False

    def _refused(self, verdict: Verdict, request_id: str | int | None) -> None:
        # Refused: answered only the first few times a second, and the socket is not read until the
        # bucket refills, so that a flood costs its sender (TCP backpressure), not everyone else.
        self._pause_reading(self.limiter.pause_s())
        if verdict is ABUSE:
            self.core.close_for(self.session, CLOSE_POLICY, "rate limit exceeded persistently")
        elif verdict is LIMITED:
            self.core.rate_limited(self.session, request_id)
        else:
            self.app.stats.rate_limited += 1  # DROPPED: refused unanswered

    def _pause_reading(self, seconds: float) -> None:
        t: WSTransport | None = self.session.io
        if self._reading_paused or t is None or t.is_disconnected:
            return
        self._reading_paused = True
        t.underlying_transport.pause_reading()
        asyncio.get_running_loop().call_later(seconds, self._resume_reading)

    def _resume_reading(self) -> None:
        self._reading_paused = False
        t: WSTransport | None = self.session.io
        # A connection closed for abuse is not read again: its CLOSE went out, and the rest of its
        # flood would only cost us; the close timer hangs up (CLOSE_WAIT_S).
        if t is not None and not t.is_disconnected and not self.session.closing:
            t.underlying_transport.resume_reading()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        t = frame.msg_type
        self.last_rx = time.monotonic()
        if (frame.rsv1 or frame.rsv2 or frame.rsv3) and t is not _CLOSE:
            # RFC 6455 §5.2: no extension is negotiated, so a reserved bit fails the connection; picows
            # does not check them. (A client compressing without asking would otherwise be read as JSON.)
            if not self.session.closing:
                self.core.close_for(self.session, int(WSCloseCode.PROTOCOL_ERROR), "reserved bits set in a frame")
                self.app.flush_soon()
            return
        if t is _TEXT or t is _BINARY or t is _CONTINUATION:
            session = self.session
            if session.closing:
                return
            app = self.app
            app.stats.frames_in += 1
            binary = None if t is _CONTINUATION else t is _BINARY
            try:
                req = self.decoder.feed(binary, frame.fin, frame.get_payload_as_bytes())
            except MessageTooBig as e:
                self.core.too_large(session, str(e))
            except InvalidText as e:
                # RFC 6455 §8.1: a text message that is not UTF-8 fails the connection, unanswered.
                self.core.close_for(session, CLOSE_INVALID_TEXT, str(e))
            except ClientError as e:
                # Undecodable messages cost tokens too: a garbage flood is still a flood.
                if self._admit(False, e.request_id, self.decoder.last_frames):
                    self.core.refuse(session, e)
            else:
                if req is not None:  # (_admit written out: the path of every message)
                    verdict = self.limiter.check(self.last_rx, isinstance(req.message, _POSITIONS),
                                                 self.decoder.last_frames)
                    if verdict is ADMIT:
                        self.core.receive(session, req)
                    else:
                        self._refused(verdict, req.request_id)
            if not app.flush_due:  # (flush_soon()'s test: else a call for every message)
                app.flush_soon()
        elif t is _PING:
            # Answered here rather than by picows' auto-pong, so that a PING flood is charged like any other.
            if not self.session.closing:
                if self._admit(False, None):
                    if self.session.paused:
                        # A PONG bypasses the core's bounded outbox: one per PING to a client that is
                        # not reading would grow its write buffer by up to 2000 a second until the 4008.
                        # RFC 6455 §5.5.3 allows answering only the latest PING: when writing resumes.
                        self._pong_owed = frame.get_payload_as_bytes()
                    else:
                        transport.send_pong(frame.get_payload_as_bytes())
                self.app.flush_soon()  # a refusal may have closed it
        elif t is _PONG:
            if self.ping_at:
                self.ping_at = 0.0  # the answer to our keepalive PING
            elif not self.session.closing and not self._admit(False, None):  # unsolicited: a frame like any
                self.app.flush_soon()
        elif t is _CLOSE:
            # picows leaves the reply to us (RFC 6455 §5.5.1): echo the code, then hang up.
            if not transport.is_close_frame_sent:  # we may have closed first: then this is the echo
                transport.send_close(*_close_reply(frame))
            # A client that reads nothing more would hold the socket until what is buffered is written
            # (never): aborted as after a CLOSE of ours (App._close). Timed before the disconnect, whose
            # on_ws_disconnected cancels it.
            self.app.hang_up_later(transport, CLOSE_GRACE_S, False)
            transport.disconnect()  # graceful: what is buffered, then FIN

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.app.listeners.discard(self)
        self.app.hung_up(transport)
        if self._paused_timer is not None:
            self._paused_timer.cancel()
            self._paused_timer = None
        self.app.disconnected(self.session)
