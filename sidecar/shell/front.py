"""The front door: every connection's first bytes, before picows sees them.

picows serves WebSockets very well but takes only HTTP/1.1 GET: anything else gets 400 before
our listener factory is called, so a load balancer's `GET /healthz HTTP/1.0` (HAProxy's
default) or `HEAD /healthz` fails, a POST gets 400 rather than 405, and it upgrades
`Sec-WebSocket-Version: 8` (RFC 6455 §4.2.2 requires 426). So each accepted connection
starts with a `FrontProtocol` of ours, which reads the request head (wire/http1.py) and:

* answers the plain-HTTP pages itself (`/healthz`, `/metrics`, `/admin…`), for GET and HEAD,
  over HTTP/1.0 or 1.1; other methods get 405 with `Allow`;
* refuses an HTTP/1.1 request without `Host` with 400, page or upgrade alike (RFC 9112 §3.2,
  RFC 6455 §4.1), which picows would upgrade;
* refuses a WebSocket upgrade of another version with 426 (`Sec-WebSocket-Version: 13`), and
  one past the connection cap with 503 (`Retry-After`), before the upgrade: the cap keeps the
  process clear of EMFILE (shell/fdlimit.py);
* hands everything else (the upgrades; a plain GET of a WebSocket path, which the listener
  factory answers as before) to picows: the transport switches to picows' own protocol and
  the bytes read so far are fed to it, once. From then on the socket reads straight into
  picows' buffer as if we had never been there: nothing of ours is on the per-frame path.

It also counts every socket from accept to close (`Front.open`), whatever phase it is in:
sockets past `max_connections + HANDSHAKE_SPARE` are closed as soon as they are accepted,
unanswered (`Front.dropped`), since even answering them would spend descriptors we keep for the
worker itself. Every refusal it answers is counted by status (`Front.refused`); both go to
/metrics (shell/metrics.py).

The server is made with the event loop's own `create_server` (uvloop, libuv), never
aiofastnet's, which picows 2.3.1's `ws_create_server` uses whenever aiofastnet is installed (as
it is, a picows dependency); `start` refuses `use_aiofastnet=True`. Out of descriptors, libuv
accepts and closes the excess with a spare descriptor it keeps for that. aiofastnet 1.2.0's
`Server._accept_connection` (aiofastnet/api_utils.py), on EMFILE, means to do what asyncio's
selector loop does (stop reading the listening socket, and re-add the reader after
ACCEPT_RETRY_DELAY) but calls `listening_sock.remove_reader(...)`, a method sockets do not
have, where asyncio calls the loop's `remove_reader`. The AttributeError skips both the pause
and the retry: the listening socket stays readable, every loop turn wakes on it, fails the
accept again and logs a traceback, so the loop spins at 100 % CPU (197,265 tracebacks in 60 s
in issue 11's measurement).
tests/test_fd_limits.py runs that case against our server: the CPU stays low.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from picows import WSAutoPingStrategy
from picows.api import WSServerListenerFactory, _resolve_logger
from picows.picows import WSProtocol  # picows' per-connection protocol, as its ws_create_server builds it

from sidecar.wire import http1
from sidecar.wire.router import HttpRoute, RouteError, route

log = logging.getLogger("dgdo.front")

HEAD_TIMEOUT_S = 5.0  # a request head must be complete within this (picows' handshake timeout, the same)
LINGER_S = 2.0  # after an answer: how long we read (and drop) what the client still sends before closing
# Sockets allowed beyond max_connections, being answered (pages, 503s) or handshaking. Past
# max_connections + this, a socket is closed on accept: together with fdlimit.FD_RESERVE it
# bounds the descriptors connections can take.
HANDSHAKE_SPARE = 32
RETRY_AFTER_S = 5
WARN_EVERY_S = 10.0  # at most one "connection cap reached" line this often
# Every status the front door refuses with (wire/router.py, wire/http1.py, `Front.triage`; 500: a
# page that failed to render), counted from 0 so that a rate over them exists before the first one.
REFUSAL_STATUSES = (400, 404, 405, 414, 426, 431, 500, 503, 505)


@dataclass(frozen=True, slots=True)
class Page:
    """A plain-HTTP answer: the worker's pages (server.App.page) and the refusals."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class Front:
    """Counts and admits connections; builds each connection's `FrontProtocol`."""

    def __init__(self, pages: Callable[[HttpRoute, str | None], Page], max_connections: int) -> None:
        self.pages = pages
        self.max_connections = max_connections
        self.max_sockets = max_connections + HANDSHAKE_SPARE
        self.open = 0  # sockets accepted and not yet closed: handshaking, answered or upgraded
        # Requests answered with a refusal rather than a page or an upgrade, by status (503: an
        # upgrade at the cap). The listener factory's own refusals (auth) are counted by the App.
        self.refused: dict[int, int] = dict.fromkeys(REFUSAL_STATUSES, 0)
        self.dropped = 0  # sockets closed on accept, unanswered: past the cap and the spare
        self._warned_at = -WARN_EVERY_S
        self._loop = asyncio.get_running_loop()
        self._ws_protocol: Callable[[], WSProtocol] | None = None

    async def start(self, listener_factory: WSServerListenerFactory, host: str | None, port: int | None, *,
                    disconnect_on_exception: bool = True, websocket_handshake_timeout: float | None = 5,
                    logger_name: Any = None, enable_auto_ping: bool = False, auto_ping_idle_timeout: float = 20,
                    auto_ping_reply_timeout: float = 20,
                    auto_ping_strategy: WSAutoPingStrategy = WSAutoPingStrategy.PING_WHEN_IDLE,
                    enable_auto_pong: bool = True, max_frame_size: int = 10 * 1024 * 1024,
                    read_buffer_init_size: int = 16 * 1024, use_aiofastnet: bool = False,
                    **kwargs: Any) -> asyncio.Server:
        """Listens: `picows.ws_create_server`'s arguments, with this front door before picows.

        The rest of `kwargs` goes to the loop's `create_server` (`ssl=`, `reuse_port=`, `backlog=`).
        """
        if use_aiofastnet:
            raise ValueError("aiofastnet's server spins on EMFILE (see the module doc): use the loop's")
        logger = _resolve_logger(logger_name, "server")
        front = self

        def ws_protocol() -> WSProtocol:
            # The arguments of picows 2.3's own protocol factory in ws_create_server (picows/api.py).
            p = _CountedWSProtocol(None, None, False, listener_factory, logger, disconnect_on_exception,
                                   websocket_handshake_timeout, enable_auto_ping, auto_ping_idle_timeout,
                                   auto_ping_reply_timeout, auto_ping_strategy, enable_auto_pong, max_frame_size,
                                   None, read_buffer_init_size)
            p.front = front
            return p

        self._ws_protocol = ws_protocol
        return await self._loop.create_server(lambda: FrontProtocol(self), host=host, port=port, **kwargs)

    # ---- admission --------------------------------------------------------------------------

    def admit(self) -> bool:
        """A socket was accepted: False when it must be closed at once (no descriptors to spare)."""
        self.open += 1
        if self.open <= self.max_sockets:
            return True
        self.dropped += 1
        self._warn_full()
        return False

    def triage(self, head: http1.Head) -> bytes | None:
        """The answer to a request head (a whole response), or None: picows takes the connection."""
        method = head.method
        head_only = method == b"HEAD"
        if head.version == b"HTTP/1.1" and head.get("host") is None:
            # RFC 9112 §3.2 (and RFC 6455 §4.1 for an upgrade): picows would upgrade without it.
            # HTTP/1.0 has no Host requirement: a load balancer's `GET /healthz HTTP/1.0` sends none.
            return self.refuse(400, b"a Host header is required (RFC 9112 section 3.2)", head_only=head_only)
        try:
            r = route(b"GET", head.target)  # the method is checked below, per kind of path
        except RouteError as e:
            return self.refuse(e.status, e.message.encode(), head_only=head_only)
        if isinstance(r, HttpRoute):
            if not head_only and method != b"GET":
                return self.refuse(405, b"GET or HEAD only", {"Allow": "GET, HEAD"})
            page = self.pages(r, head.get("authorization"))
            return http1.response(page.status, page.body, {"Content-Type": page.content_type, **page.headers},
                                  head_only=head_only)
        # A WebSocket path.
        if method != b"GET":
            return self.refuse(405, b"a WebSocket opens with GET", {"Allow": "GET"})
        if not head.upgrade:
            if head.version == b"HTTP/1.1":
                return None  # the listener factory answers (auth first, as for any upgrade), then picows' 400
            return self.refuse(426, b"this path is a WebSocket: upgrade over HTTP/1.1", {"Upgrade": "websocket"})
        if head.version != b"HTTP/1.1":
            return self.refuse(400, b"a WebSocket upgrade needs HTTP/1.1")
        if head.get("sec-websocket-version") != http1.WS_VERSION:
            # RFC 6455 §4.2.2: the versions we speak go with the refusal.
            return self.refuse(426, b"WebSocket version 13 only",
                               {"Sec-WebSocket-Version": http1.WS_VERSION, "Upgrade": "websocket"})
        if "," in (head.get("sec-websocket-key") or ""):
            # RFC 6455 §11.3.1: the field appears once. Two were joined (http1.Head), and picows would
            # answer the first: a client that sent two cannot tell which one our accept answers.
            return self.refuse(400, b"one Sec-WebSocket-Key field only (RFC 6455 section 11.3.1)")
        if self.open > self.max_connections:
            answer = self.refuse(503, b"this worker is at its connection limit; retry later",
                                 {"Retry-After": str(RETRY_AFTER_S)})
            self._warn_full()
            return answer
        return None

    def refuse(self, status: int, body: bytes, headers: dict[str, str] | None = None, *,
               head_only: bool = False) -> bytes:
        """A refusal's whole response, counted under its status."""
        self.refused[status] = self.refused.get(status, 0) + 1
        return http1.response(status, body, headers, head_only=head_only)

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("! connection limit reached (%d connections, --max-connections %d): %d upgrades refused "
                        "with 503, %d sockets closed unanswered so far", self.open, self.max_connections,
                        self.refused[503], self.dropped)

    def hand_over(self, transport: asyncio.Transport, data: bytes) -> None:
        """Gives the connection to picows, with the bytes already read from it."""
        assert self._ws_protocol is not None
        ws = self._ws_protocol()
        transport.set_protocol(ws)  # the transport now reads into picows' buffer (a BufferedProtocol)
        ws.connection_made(transport)
        view = memoryview(data)
        while view and not transport.is_closing():
            buf = ws.get_buffer(-1)
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            ws.buffer_updated(n)
            view = view[n:]

    def closed(self) -> None:
        self.open -= 1


class _CountedWSProtocol(WSProtocol):
    """picows' protocol, telling the front when its socket closes (once per connection, not per frame)."""

    __slots__ = ("front",)
    front: Front

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self.front.closed()


class FrontProtocol(asyncio.Protocol):
    """One connection until its request head is read: answered here, or handed to picows."""

    __slots__ = ("_answered", "_buf", "_timer", "front", "transport")

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._timer: asyncio.TimerHandle | None = None
        self._answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's are not asyncio's subclasses)
        if not self.front.admit():
            transport.abort()
            return
        self._timer = self.front._loop.call_later(HEAD_TIMEOUT_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # lingering: what follows the request (a POST's body) is read and dropped
        buf = self._buf + data if self._buf else data
        try:
            size = http1.head_size(buf)
            if not size:
                self._buf = buf
                return
            answer = self.front.triage(http1.parse_head(buf[:size]))
        except http1.BadRequest as e:
            answer = self.front.refuse(e.status, e.message.encode())
        except Exception:  # a page that failed to render: the connection gets a 500, the worker goes on
            log.exception("! answering a request failed")
            answer = self.front.refuse(500, b"internal error")
        self._buf = b""
        if answer is not None:
            self._answer(answer)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t = self.transport
        assert t is not None
        try:
            self.front.hand_over(t, buf)
        except Exception:
            log.exception("! handing a connection to picows failed")
            t.abort()

    def _answer(self, response: bytes) -> None:
        """Writes the whole response, then half-closes: closing with unread input (a POST's body)
        would send RST, and the client's kernel would drop our answer unread."""
        self._answered = True
        t = self.transport
        assert t is not None
        t.write(response)
        if self._timer is not None:
            self._timer.cancel()
        if t.can_write_eof():
            t.write_eof()
            self._timer = self.front._loop.call_later(LINGER_S, t.close)
        else:  # TLS: close_notify after the response
            self._timer = None
            t.close()

    def eof_received(self) -> bool:
        return False  # the client is done: close (after what we still have to write)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.front.closed()
