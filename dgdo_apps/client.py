"""A small app client of the public protocol (DESIGN §4), on picows: what an app does, once.

    link = await open_link("ws://127.0.0.1:8765", "passenger", "p1", on_push=print)
    ack = await link.command({"type": "ride_request", "pickup": {...}, "dropoff": {...}})

One connection per `Link`: it awaits the `welcome`, matches `ack`/`error` to requests by
`id`, hands every other message to `on_push`, echoes the server's CLOSE, and rides out
an engine restart the way an app should (`command()` retries with the same id). JSON
text frames by default, msgpack binary frames with `binary=True`, both read and written
with the independent `json` / `msgpack` packages (never the server's codec, so the two
implementations check each other on the wire). With DGDO_JWT_SECRET set, each connection
carries a freshly minted `?token=` (a week long): the server closes a connection when its token
expires (4401), and a link opened again gets a new one. The demo fleet (demo.py) is built on it.

Over `wss://` a link verifies the server's certificate against the system's CAs, or against the
context `use_tls()` set for the process: `cafile_context()` (a private CA) or `pinned_context()`
(exactly one certificate, e.g. the self-signed one `dgdo run --tls-cert` serves).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

import msgpack
from picows import WSCloseCode, WSFrame, WSHandshakeError, WSListener, WSMsgType, WSTransport, ws_connect

log = logging.getLogger("dgdo.client")

REPLY_TIMEOUT_S = 5.0  # for an ack/error; the engine answers in microseconds when healthy
ENGINE_BACK_S = 30.0  # how long a command is retried while the engine restarts (it recovers in ~1 s)
RETRY_PAUSE_S = 0.2  # between such retries
RETRY_CODES = frozenset({"engine_unavailable", "overloaded"})
WELCOME_TIMEOUT_S = 5.0
CONNECT_RETRY_S = 10.0  # how long to keep trying while the server is not up yet
CLOSE_TIMEOUT_S = 0.5  # wait for the server's CLOSE echo before dropping the socket
# Close codes after which an app must not reconnect by itself (docs/protocol.md §6): a newer
# connection with the same role and id took over (4001), or the token's role or id does not fit.
# Not 4401 (the token expired while connected): every connection here mints a fresh token, so a
# reconnect is what an app does after refreshing its token.
NO_RECONNECT = frozenset({4001, 4403})
CLOSE_TOKEN_EXPIRED = 4401
# Each connection's token: far longer than a demo runs (the server closes a connection whose token
# expires, 4401), and minted anew for every connection, so a reconnect never carries a spent one.
TOKEN_TTL_S = 7 * 86400


def encode(message: dict[str, Any], binary: bool = False) -> bytes:
    """A client message as a frame's payload: compact JSON, or msgpack."""
    return msgpack.packb(message) if binary else json.dumps(message, separators=(",", ":")).encode()


def decode(payload: bytes, binary: bool = False) -> Any:
    """A server frame's payload. Raises ValueError when undecodable."""
    if binary:
        try:
            return msgpack.unpackb(payload)
        except Exception as e:
            raise ValueError(str(e)) from e
    return json.loads(payload)


_tls: ssl.SSLContext | None = None  # wss:// trust for every link (use_tls); None: the system's CAs


def use_tls(context: ssl.SSLContext | None) -> None:
    """Sets how every link of this process verifies a wss:// server (None: the system's CAs)."""
    global _tls
    _tls = context


def cafile_context(cafile: str | os.PathLike[str]) -> ssl.SSLContext:
    """Verifies servers against the CA certificates in `cafile`, host name checked."""
    return ssl.create_default_context(cafile=cafile)


def pinned_context(cert_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """Trusts exactly the first certificate in `cert_file`, whatever host name it names: for a
    client of a server it was handed the certificate of (the demo `dgdo run` starts connects to
    127.0.0.1 whatever names the operator's certificate carries). Nothing else verifies."""
    with open(cert_file, encoding="ascii", errors="replace") as f:
        first = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", f.read(), re.S)
    if first is None:
        raise ValueError(f"{cert_file}: no PEM certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=first.group(0))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the trust anchor
    ctx.check_hostname = False  # pinned: the one certificate accepted is the check
    return ctx


class Unreachable(Exception):
    """The server did not accept a connection within the retry window (or refused it for good)."""


class Refused(Exception):
    """The server answered a request with an `error`."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.reply = reply


class Link(WSListener):
    """One picows connection: request/reply by `id`, the welcome awaited, everything else to `on_push`.

    picows hands over raw frames: it neither reassembles fragments (the server
    sends only whole text frames, so none are expected) nor answers a CLOSE, so
    the echo is done here.
    """

    def __init__(self, name: str, on_push: Callable[[dict[str, Any]], None],
                 on_error: Callable[[dict[str, Any]], None] = lambda m: None, binary: bool = False) -> None:
        super().__init__()
        self.name = name
        self.on_push = on_push
        self.on_error = on_error
        self.binary = binary
        self.transport: WSTransport | None = None
        loop = asyncio.get_running_loop()
        self.welcome: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed = asyncio.Event()
        self.close_code: int | None = None  # the server's CLOSE code, once it sent one
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    def factory(self, *_negotiated: Any) -> Link:
        """For `ws_connect`: this listener, whatever picows passes (request, response) or not."""
        return self

    # -- picows callbacks (synchronous, on the loop) --

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT or frame.msg_type is WSMsgType.BINARY:
            try:
                msg = decode(frame.get_payload_as_bytes(), frame.msg_type is WSMsgType.BINARY)
            except ValueError:
                log.warning("%s: undecodable frame from the server", self.name)
                return
            if isinstance(msg, dict):
                self._dispatch(msg)
        elif frame.msg_type is WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.close_code = int(code)
            log.debug("%s: server closed (%s %s)", self.name, code, frame.get_close_reason())
            if not transport.is_close_frame_sent:
                transport.send_close(code if code is not WSCloseCode.NO_INFO else WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"{self.name}: disconnected"))
        self._pending.clear()
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"{self.name}: disconnected before welcome"))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "error":
            self.on_error(msg)
            log.debug("%s: error %s: %s", self.name, msg.get("code"), msg.get("message"))
        if kind in ("ack", "error") and isinstance(msg.get("id"), str):
            fut = self._pending.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
                return
        if kind == "welcome":
            if not self.welcome.done():
                self.welcome.set_result(msg)
            return
        self.on_push(msg)

    # -- sending --

    @property
    def is_open(self) -> bool:
        t = self.transport
        return t is not None and not t.is_disconnected and not t.is_close_frame_sent

    def send(self, msg: dict[str, Any]) -> None:
        """Fire and forget; dropped silently once the socket is closing."""
        if self.is_open:
            assert self.transport is not None
            self.transport.send(WSMsgType.BINARY if self.binary else WSMsgType.TEXT, encode(msg, self.binary))

    async def request(self, msg: dict[str, Any], request_id: str | None = None,
                      timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        """Sends `msg` with an `id` and returns its `ack`.

        Raises:
            Refused: the server answered with an `error`.
            ConnectionError: the socket went away first.
            TimeoutError: no answer within `timeout` seconds.
        """
        if not self.is_open:
            raise ConnectionError(f"{self.name}: not connected")
        rid = request_id or f"{self.name}.{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self.send({**msg, "id": rid})
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(rid, None)
        if reply["type"] == "error":
            raise Refused(reply)
        return reply

    async def command(self, msg: dict[str, Any], request_id: str | None = None,
                      deadline_s: float = ENGINE_BACK_S) -> dict[str, Any]:
        """`request()` that rides out an engine restart, as an app should: on `engine_unavailable`,
        `overloaded` or no answer it sends the same request id again until `deadline_s`. The engine
        journals what it applied, so a retry of a ride_request returns the same order, and a
        `conflict` on a retried order command means the first try took effect (returned as is).

        Raises as `request()` does, once the deadline has passed or for any other error.
        """
        rid = request_id or f"{self.name}.{next(self._ids)}"
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s
        retried = False
        while True:
            try:
                return await self.request(msg, rid)
            except Refused as e:
                code = e.reply.get("code")
                if retried and code == "conflict":
                    return e.reply
                if code not in RETRY_CODES or loop.time() > give_up:
                    raise
            except TimeoutError:
                if loop.time() > give_up:
                    raise
            retried = True
            await asyncio.sleep(RETRY_PAUSE_S)

    async def close(self) -> None:
        """Polite close: send CLOSE, wait briefly for the server's echo, then hang up."""
        t = self.transport
        if t is None or t.is_disconnected:
            return
        if not t.is_close_frame_sent:
            t.send_close(WSCloseCode.OK)
        try:
            await asyncio.wait_for(self.closed.wait(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            # A busy or stopping server: hang up with a FIN (graceful), not a reset, so the
            # goodbyes already written (cancel, offline) are still delivered.
            t.disconnect()


def token_query(role: str, sub: str) -> str:
    """`?token=...` when DGDO_JWT_SECRET is set, so the demo also works against an auth-enabled server."""
    secret = os.environ.get("DGDO_JWT_SECRET")
    if not secret:
        return ""
    import jwt  # only needed when auth is on

    key = secret.split("\n")[0].rstrip("\r")  # a secret of several lines signs with its first (rotation)
    token = jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + TOKEN_TTL_S}, key, "HS256")
    return f"?token={token}"


async def open_link(base_url: str, role: str, app_id: str, on_push: Callable[[dict[str, Any]], None],
                    on_error: Callable[[dict[str, Any]], None] = lambda m: None, retry_s: float = CONNECT_RETRY_S,
                    binary: bool = False, ssl_context: ssl.SSLContext | None = None) -> Link:
    """Connects `/ws/{role}/{app_id}` and waits for `welcome`, retrying while the server is not up.

    Raises:
        Unreachable: no connection within `retry_s`, the server refused the upgrade with a 4xx, or
            its certificate is not trusted (`ssl_context`, else `use_tls()`'s, else the system's CAs).
    """
    url = f"{base_url.rstrip('/')}/ws/{role}/{app_id}{token_query(role, app_id)}"
    if binary:
        url += ("&" if "?" in url else "?") + "format=msgpack"
    deadline = time.monotonic() + retry_s
    delay = 0.1
    while True:
        link = Link(app_id, on_push, on_error, binary)
        try:
            await ws_connect(link.factory, url, ssl_context=ssl_context or _tls)
            await asyncio.wait_for(link.welcome, WELCOME_TIMEOUT_S)
            return link
        except WSHandshakeError as e:
            status = e.response.status if e.response is not None else None
            if status is not None and 400 <= int(status) < 500:
                raise Unreachable(f"{url}: upgrade refused with HTTP {int(status)}") from e
            error: Exception = e
        except ssl.SSLCertVerificationError as e:  # no retry makes an untrusted certificate trusted
            raise Unreachable(f"{url}: {e.verify_message or e}") from e
        except (OSError, TimeoutError, ConnectionError) as e:
            error = e
        await link.close()
        if time.monotonic() + delay > deadline:
            raise Unreachable(f"{url}: {error}") from error
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
