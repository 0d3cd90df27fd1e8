"""The per-connection picows glue (sidecar/shell/server.py AppListener) with fakes around it: what it
writes straight to the transport, outside the session core's flow control."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from picows import WSMsgType
from picows.picows import _make_test_ws_frame  # picows' own helper: a frame without a socket

from sidecar.session.stats import SidecarStats
from sidecar.shell.server import AppListener, Settings
from sidecar.wire.messages import Role
from sidecar.wire.router import WsRoute


class FakeTransport:
    def __init__(self) -> None:
        self.pongs: list[bytes] = []
        self.is_disconnected = False
        self.is_close_frame_sent = False

    def send_pong(self, payload: bytes) -> None:
        self.pongs.append(payload)


def listener() -> tuple[AppListener, Any, FakeTransport]:
    app: Any = SimpleNamespace(core=SimpleNamespace(), settings=Settings(jwt_secret=None), stats=SidecarStats(),
                               flush_soon=lambda: None, flush=lambda: None, listeners=set())
    session: Any = SimpleNamespace(role=Role.DRIVER, app_id="d1", closing=False, paused=False, io=None)
    app.core.resume = lambda s: setattr(s, "paused", False)
    t = FakeTransport()
    session.io = t
    return AppListener(app, session, WsRoute(Role.DRIVER, "d1", {}, None)), session, t


def ping(payload: bytes) -> Any:
    return _make_test_ws_frame(WSMsgType.PING, payload, True, False)


def test_a_paused_client_is_owed_one_pong_for_its_latest_ping_not_one_per_ping() -> None:
    """A PONG goes to the transport directly, past the core's bounded outbox: a client that sends PINGs
    and never reads would otherwise grow its write buffer by a PONG per PING (2000 a second within the
    rate limit, ~250 KB/s) until the 4008 close 10 s later. RFC 6455 §5.5.3 lets the server answer only
    the latest PING; it does so once the client reads again."""
    lst, session, t = listener()
    lst.on_ws_frame(t, ping(b"a"))  # type: ignore[arg-type]
    assert t.pongs == [b"a"]
    session.paused = True  # the write buffer is over its high-water mark: the client is not reading
    for i in range(1000):
        lst.on_ws_frame(t, ping(b"x%d" % i + b"." * 100))  # type: ignore[arg-type]
    assert t.pongs == [b"a"]
    lst.resume_writing()
    assert t.pongs == [b"a", b"x999" + b"." * 100]
    lst.resume_writing()  # owed once, answered once
    lst.on_ws_frame(t, ping(b"b"))  # type: ignore[arg-type]
    assert t.pongs == [b"a", b"x999" + b"." * 100, b"b"]
