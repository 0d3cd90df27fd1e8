"""The hang-up timers of a closing connection go with it (App.hang_up_later / hung_up).

A CLOSE, ours or the client's, schedules a disconnect in a few seconds for a client that never
answers or never reads. Left to fire after the connection was gone, each timer held its transport,
and with it the connection's buffers and upgrade (~8 KB), for up to 10 s: under connect/close
churn tens of MB of peak RSS, which the allocators then kept. A real App (picows server, no
engine: it serves all the same) and real clients (websockets); connections are counted by the
transports still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
from collections.abc import Callable

from picows import WSTransport
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sidecar.shell.server import App, Settings


def _transports() -> int:
    gc.collect()
    return sum(type(o) is WSTransport for o in gc.get_objects())  # (isinstance would look through a dead weakproxy)


async def _until(what: str, done: Callable[[], bool], timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)  # (nothing to await: the server's side of a close is its own)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


async def test_closed_connections_leave_no_transport_or_timer_behind() -> None:
    app = App(f"@dgdo-test-hangup-{uuid.uuid4().hex[:8]}", settings=Settings(jwt_secret=None))
    await app.start("127.0.0.1", 0, reuse_port=False)
    try:
        url = f"ws://127.0.0.1:{app.port}"
        before = _transports()
        for i in range(20):  # the client closes: the server echoes, then waits for the hang-up
            async with connect(f"{url}/ws/passenger/p{i}"):
                pass
        for _ in range(10):  # a second connection as the same driver replaces the first: our CLOSE (4001)
            first = await connect(f"{url}/ws/driver/d1")
            second = await connect(f"{url}/ws/driver/d1")
            with contextlib.suppress(ConnectionClosed):  # (it may get nothing before its close)
                await asyncio.wait_for(first.recv(), 10)
            assert first.close_code == 4001
            await second.close()
        await _until("every connection gone", lambda: not app.listeners and not app.core.sessions())
        assert app._hangups == {}
        # At once, not when the 10 s grace timers would have fired.
        await _until("their transports freed", lambda: _transports() <= before, timeout=1.5)
    finally:
        await app.stop()
