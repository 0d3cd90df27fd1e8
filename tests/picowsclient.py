"""A second, independent test client on picows: raw frames in both directions.

Where `wsclient.AppClient` (the `websockets` library) speaks whole messages, this one
can send what a well-behaved library never would (fragments past the size cap, frames
in the other format, no PONG) and sees every frame the server sends, CLOSE included.
"""

from __future__ import annotations

import asyncio
from typing import Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from wsclient import AUTO, Expecting, with_token

from dgdo_apps.client import decode, encode


class _Listener(WSListener):
    def __init__(self) -> None:
        self.frames: asyncio.Queue[tuple[WSMsgType, bytes, bool]] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = asyncio.Event()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.close_code = code.value if isinstance(code, WSCloseCode) else int(code)
            self.close_reason = (frame.get_close_message() or b"").decode(errors="replace")
            if not transport.is_close_frame_sent:  # the server closed first: echo (RFC 6455 §5.5.1)
                transport.send_close(code)
            transport.disconnect()
            return
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self.frames.put_nowait((frame.msg_type, frame.get_payload_as_bytes(), frame.fin))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed.set()


class PicowsClient(Expecting):
    def __init__(self, transport: WSTransport, listener: _Listener, binary: bool) -> None:
        self.transport = transport
        self.listener = listener
        self.binary = binary
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, *, subprotocol: str | None = None, token: str | None = AUTO,
                   headers: dict[str, str] | None = None, **kw: Any) -> PicowsClient:
        extra = dict(headers or {})
        if subprotocol:
            extra["Sec-WebSocket-Protocol"] = subprotocol
        transport, listener = await ws_connect(_Listener, with_token(url, token), extra_headers=extra or None, **kw)
        binary = subprotocol == "dgdo.v1.msgpack" or "format=msgpack" in url
        return cls(transport, listener, binary)  # type: ignore[arg-type]

    def send(self, message: dict[str, Any], binary: bool | None = None) -> None:
        binary = self.binary if binary is None else binary
        self.transport.send(WSMsgType.BINARY if binary else WSMsgType.TEXT, encode(message, binary))

    def send_frame(self, msg_type: WSMsgType, payload: bytes, fin: bool = True) -> None:
        self.transport.send(msg_type, payload, fin=fin)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next message; its frame type must be the negotiated one."""
        mtype, payload, _fin = await asyncio.wait_for(self.listener.frames.get(), timeout)
        assert (mtype is WSMsgType.BINARY) == self.binary, f"got a {mtype} frame on a binary={self.binary} link"
        m = decode(payload, self.binary)
        self.seen.append(m)
        return m

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        """Waits for the server to hang up; returns the CLOSE code it sent (None: no CLOSE frame)."""
        await asyncio.wait_for(self.listener.closed.wait(), timeout)
        return self.listener.close_code

    async def close(self, code: WSCloseCode = WSCloseCode.OK) -> None:
        if not self.transport.is_disconnected:
            self.transport.send_close(code)
            await asyncio.wait_for(self.listener.closed.wait(), 5)
