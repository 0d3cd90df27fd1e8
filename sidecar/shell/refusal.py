"""A refused upgrade a browser can see: accept, one `error`, close 4401/4403 (wire/auth.py: ws_refusal).

A browser hides the HTTP status of a refused WebSocket upgrade from the page: a script sees
close 1006, the same as a server that is down, and cannot tell "log in again" from "retry
later". So the listener factory (server.py) accepts an upgrade that fails auth and carries
`Origin`, and this listener says why in the negotiated format, then closes with 4000 + the
HTTP status. No session exists for it: the core never hears of the connection.
"""

from __future__ import annotations

import asyncio
import time

from picows import WSFrame, WSListener, WSMsgType, WSTransport

from sidecar.wire.auth import AuthError, ws_refusal
from sidecar.wire.codec import JSON, Format, encode

CLOSE_WAIT_S = 2.0  # as server.CLOSE_WAIT_S: how long our CLOSE waits for the client's echo
MAX_REASON_BYTES = 123  # RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the code


class RefusedListener(WSListener):
    """Sends the refusal as soon as the socket is up; hangs up on the client's CLOSE echo, or after CLOSE_WAIT_S."""

    __slots__ = ("_close_code", "_data", "_reason", "_type")

    def __init__(self, err: AuthError, fmt: Format) -> None:
        code, self._close_code = ws_refusal(err)
        message = {"type": "error", "code": code.value, "message": err.message, "ts": time.time_ns() // 1_000_000}
        self._data = encode(message, fmt)
        self._type = WSMsgType.TEXT if fmt is JSON else WSMsgType.BINARY
        self._reason = f"{code.value}: {err.message}".encode()[:MAX_REASON_BYTES]

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(self._type, self._data)
        transport.send_close(self._close_code, self._reason)  # type: ignore[arg-type]  # picows takes any int code
        asyncio.get_running_loop().call_later(CLOSE_WAIT_S, transport.disconnect)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:  # the echo of our CLOSE (or the client's own): done
            transport.disconnect()
        # Anything else the client sent before it read our CLOSE is dropped.
