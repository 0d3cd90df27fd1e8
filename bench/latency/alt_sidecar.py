"""The real sidecar (sidecar.shell.server.App: picows around the session core) fed by another transport.

    alt_sidecar.py --feed zmq  --endpoint ipc://@dgdo-x    --port P   (@: abstract names)
    alt_sidecar.py --feed unix --endpoint @dgdo-x          --port P
    alt_sidecar.py --feed pipe                             --port P   (records on stdin)
    alt_sidecar.py --feed http --endpoint 127.0.0.1:Q      --port P   (POST /events)

Only the feed differs from the production sidecar (the same App, its timers running as
`App.start()` starts them): every received batch of
engine records (the batch layout a ring drain yields) goes to the same
`SessionCore.receive_records()` -> registry lookup -> `encode()` -> picows send
as the ring path. The engine link stays unattached (commands get
engine_unavailable; the bench's clients only listen), so no engine answers a
session open: each connection is welcomed at once, as the engine's
SESSION_STATE would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import uvloop
from picows import ws_create_server

from sidecar.engine.idle import IdleStrategy
from sidecar.engine.link import socket_address
from sidecar.session.session import Session
from sidecar.shell import lifetime
from sidecar.shell.server import MAX_FRAME_BYTES, PICOWS_SERVER_OPTIONS, App, settle_heap
from sidecar.wire.router import WsRoute


class StreamFeed(asyncio.Protocol):
    """A byte stream of records (UNIX socket or pipe): hand over every whole record at once.

    With `spin_us`, the same idle strategy as the ring's (engine/idle.py): after data, poll the
    socket (a non-blocking read of its fd, between event-loop turns) for that long before going
    back to waiting on epoll, so that the ring and the socket are compared with the same strategy.
    """

    def __init__(self, app: App, spin_us: float = 0.0) -> None:
        self.app = app
        self.buf = bytearray()
        self.spin_us = spin_us
        self.fd = -1
        self.idle: IdleStrategy | None = None

    def connection_made(self, transport) -> None:
        sock = transport.get_extra_info("socket")
        if self.spin_us > 0 and sock is not None:
            self.fd = sock.fileno()
            self.idle = IdleStrategy(self.spin_us, self._poll, lambda: None)

    def _poll(self) -> bool:
        try:
            data = os.read(self.fd, 1 << 18)
        except (BlockingIOError, OSError):
            return False
        if not data:
            return False
        self._take(data)
        return True

    def data_received(self, data: bytes) -> None:
        self._take(data)
        if self.idle is not None:
            self.idle.worked()

    def _take(self, data: bytes) -> None:
        if not self.buf:
            n = common.complete_prefix(data)
            if n:
                self.app.records(data, n)
            if n < len(data):
                self.buf += data[n:]
            return
        self.buf += data
        n = common.complete_prefix(self.buf)
        if n:
            chunk = bytes(self.buf[:n])
            del self.buf[:n]
            self.app.records(chunk, n)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class HttpFeed(asyncio.Protocol):
    """Minimal keep-alive HTTP/1.1: POST with Content-Length, body = records, answer 204 after delivery."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.app.records(body, len(body))
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


def zmq_pull(loop: asyncio.AbstractEventLoop, endpoint: str, on_message) -> object:
    """A PULL socket watched by the event loop (its FD is edge-triggered: drain until Again)."""
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.bind(endpoint)

    def readable() -> None:
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                data = sock.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            on_message(data)

    loop.add_reader(sock.getsockopt(zmq.FD), readable)
    loop.call_soon(readable)
    return sock


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = App("/nonexistent/bench-no-engine.sock", worker=1)
    connected = app.connected

    def connected_and_welcomed(session: Session, r: WsRoute) -> None:
        connected(session, r)
        app.core.welcome(session, 0, False, time.time_ns() // 1_000_000)

    app.connected = connected_and_welcomed  # type: ignore[method-assign]
    app.server = await ws_create_server(  # the arguments App.start() uses
        app.listener_factory, "127.0.0.1", args.port,
        enable_auto_ping=False, enable_auto_pong=False, max_frame_size=MAX_FRAME_BYTES, **PICOWS_SERVER_OPTIONS,
    )

    settle_heap()  # as App.start() does
    app.start_timers()  # and its periodic work (admin ticks, keepalive sweep): the same tail as the ring's sidecar

    def deliver(data: bytes) -> None:
        app.records(data, len(data))

    if args.feed == "zmq":
        keep = zmq_pull(loop, args.endpoint, deliver)
    elif args.feed == "unix":
        if not args.endpoint.startswith("@"):  # a path of an earlier run; an abstract name has no file
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.endpoint)
        keep = await loop.create_unix_server(lambda: StreamFeed(app, args.idle_spin_us),
                                             socket_address(args.endpoint))
    elif args.feed == "pipe":
        os.set_blocking(sys.stdin.fileno(), False)
        keep = await loop.connect_read_pipe(lambda: StreamFeed(app), os.fdopen(sys.stdin.fileno(), "rb", 0))
    else:
        host, port = args.endpoint.rsplit(":", 1)
        keep = await loop.create_server(lambda: HttpFeed(app), host, int(port))
    print(f"alt-sidecar: {args.feed} ready on port {app.port}", file=sys.stderr, flush=True)
    await stop.wait()
    del keep
    await app.stop()


if __name__ == "__main__":
    lifetime.die_with_parent_from_env()  # the bench runner may be killed with -9: end with it
    ap = argparse.ArgumentParser()
    ap.add_argument("--feed", required=True, choices=["zmq", "unix", "pipe", "http"])
    ap.add_argument("--endpoint", default="")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--idle-spin-us", type=float, default=0.0,
                    help="unix feed: poll the socket this long after data before waiting on epoll")
    uvloop.run(main(ap.parse_args()))
