"""The WebSocket server: a thin picows shell around protocol, router, handlers and bridge.

picows calls the listener factory synchronously with the parsed upgrade
request, before the upgrade: routing, format choice (and later auth) happen
there and map to one HTTP status each. Per connection, `AppListener` feeds
data frames to its sans-I/O `Decoder`, answers CLOSE (picows does not), and
tells the engine when a session opens and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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

from sidecar import records as R
from sidecar.bridge import Bridge
from sidecar.connections import Connection, Registry, now_ms
from sidecar.engine_link import REPLY_SPIN_US, EngineLink, EngineUnavailable, Overloaded
from sidecar.events import ClientError, ErrorCode
from sidecar.handlers import Handlers
from sidecar.protocol import Decoder, MessageTooBig
from sidecar.router import HttpRoute, RouteError, WsRoute, choose_format, route
from sidecar.stats import SidecarStats

log = logging.getLogger("dgdo.server")

CLOSE_REPLACED = 4001  # a newer connection with the same role and id took over
MAX_FRAME_BYTES = 1024 * 1024  # picows' own per-frame guard; messages are capped lower by the Decoder


class App:
    """One sidecar worker: its engine link, registry, bridge and handlers."""

    def __init__(self, control_path: str, worker: int = 1, reply_spin_us: float = REPLY_SPIN_US) -> None:
        self.worker = worker
        self.stats = SidecarStats()
        self.registry = Registry(worker)
        self.bridge = Bridge(self.registry, self.stats)
        self.link = EngineLink(control_path, worker, self.bridge.on_records, self._on_engine_state, reply_spin_us)
        self.handlers = Handlers(self.link, self.bridge, self.stats)
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await ws_create_server(
            self.listener_factory, host, port,
            enable_auto_ping=True, auto_ping_idle_timeout=30, auto_ping_reply_timeout=15,
            max_frame_size=MAX_FRAME_BYTES,
        )
        self.link.start()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for conn in self.registry:
            conn.close(int(WSCloseCode.GOING_AWAY), "server shutting down")
        if self.server is not None:
            self.server.close()
        self.link.close()

    def _on_engine_state(self, up: bool) -> None:
        if up:
            # Tell a (possibly restarted) engine who is connected here.
            for conn in self.registry:
                self._publish_session(conn, R.T.IN_SESSION_OPEN)
                for type_, body in conn.resync.items():
                    with contextlib.suppress(EngineUnavailable, Overloaded):
                        self.link.publish(type_, body)
        else:
            self.bridge.fail_pending(ErrorCode.ENGINE_UNAVAILABLE, "engine restarted; retry the command",
                                     keep=self.link.salvaged_corrs)

    def _publish_session(self, conn: Connection, type_: int) -> None:
        with contextlib.suppress(EngineUnavailable, Overloaded):  # re-announced on attach
            self.link.publish(type_, R.session(conn.origin, time.monotonic_ns()))

    # ---- handshake --------------------------------------------------------------

    def listener_factory(self, request: WSUpgradeRequest) -> Any:
        try:
            r = route(request.method, request.path)
        except RouteError as e:
            return _http(e.status, e.message)
        if isinstance(r, HttpRoute):
            return self._http_page(r)
        fmt, subprotocol = choose_format(request.headers.get("Sec-WebSocket-Protocol"), r.query)
        conn = self.registry.new(r.role, r.app_id, fmt)
        headers = {"Sec-WebSocket-Protocol": subprotocol} if subprotocol else None
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_101_response(extra_headers=headers), AppListener(self, conn, r)
        )

    def _http_page(self, r: HttpRoute) -> Any:
        if r.path == "/healthz":
            if self.link.attached:
                return _http(200, "ok")
            return _http(503, "engine unavailable")
        if r.path == "/metrics":
            return _http(200, self.metrics_text(), "text/plain; version=0.0.4")
        return _http(404, "no such page")

    def metrics_text(self) -> str:
        s, e = self.stats, self.stats.engine
        p50, p99 = s.push_latency.percentiles(50, 99)
        lines = [
            f"dgdo_engine_attached {int(self.link.attached)}",
            f"dgdo_connections {len(self.registry)}",
            f"dgdo_push_latency_seconds{{quantile=\"0.5\"}} {p50 / 1e9:.9f}",
            f"dgdo_push_latency_seconds{{quantile=\"0.99\"}} {p99 / 1e9:.9f}",
            f"dgdo_messages_out_total {s.messages_out}",
            f"dgdo_frames_in_total {s.frames_in}",
            f"dgdo_drivers_online {e.drivers_online}",
            f"dgdo_orders_created_total {e.orders_created}",
            f"dgdo_orders_completed_total {e.orders_completed}",
        ]
        return "\n".join(lines) + "\n"

    # ---- connection lifecycle --------------------------------------------------

    def connected(self, conn: Connection, r: WsRoute) -> None:
        self.registry.add(conn, on_replaced=lambda old: old.close(CLOSE_REPLACED, "replaced by a newer connection"))
        self.stats.connections = len(self.registry)
        box = conn.mailbox
        assert box is not None
        missed = box.since(r.last_seq) if r.last_seq is not None else None
        welcome = {"type": "welcome", "role": conn.role.value, "id": conn.app_id,
                   "resumed": missed is not None, "seq": box.seq, "ts": now_ms()}
        conn.send(welcome)
        for m in missed or ():
            conn.send(m)
        self._publish_session(conn, R.T.IN_SESSION_OPEN)

    def disconnected(self, conn: Connection) -> None:
        if self.registry.remove(conn):
            self.stats.connections = len(self.registry)
            self._publish_session(conn, R.T.IN_SESSION_CLOSE)


def _http(status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> WSUpgradeResponseWithListener:
    if status >= 400:
        resp = WSUpgradeResponse.create_error_response(status, body.encode(), {"Content-Type": content_type})
    else:
        resp = WSUpgradeResponse.create_ok_response(body.encode(), {"Content-Type": content_type})
    return WSUpgradeResponseWithListener(resp, None)


class AppListener(WSListener):
    def __init__(self, app: App, conn: Connection, r: WsRoute) -> None:
        self.app = app
        self.conn = conn
        self.route = r
        self.decoder = Decoder(conn.role, conn.app_id)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.conn.transport = transport
        self.app.connected(self.conn, self.route)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        t = frame.msg_type
        if t is WSMsgType.TEXT or t is WSMsgType.BINARY or t is WSMsgType.CONTINUATION:
            self.app.stats.frames_in += 1
            binary = None if t is WSMsgType.CONTINUATION else t is WSMsgType.BINARY
            try:
                req = self.decoder.feed(binary, frame.fin, frame.get_payload_as_bytes())
            except MessageTooBig as e:
                transport.send_close(WSCloseCode.MESSAGE_TOO_BIG, str(e).encode())
                transport.disconnect()
                return
            except ClientError as e:
                self.app.handlers.error(self.conn, e.code, e.message, e.request_id)
                return
            if req is not None:
                self.app.handlers.handle(self.conn, req)
        elif t is WSMsgType.CLOSE:
            # picows leaves the reply to us (RFC 6455 §5.5.1): echo the code, then hang up.
            code = frame.get_close_code()
            transport.send_close(code if code is not WSCloseCode.NO_INFO else WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.app.disconnected(self.conn)
