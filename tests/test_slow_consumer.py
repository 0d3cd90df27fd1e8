"""A client that stops reading: bounded server memory, a 4008 close, nobody else affected.

The slow client is a raw TCP socket that does the WebSocket handshake by hand and then never
reads — no library buffering on its side that could hide the problem — with a small receive
buffer so the kernel does not soak up megabytes on its behalf. Its driver streams positions
as fast as it can (the position rate limit is lifted for this stack).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time

import psutil
from conftest import Stack, mint, start_stack
from wsclient import AppClient

PICKUP = {"lat": 38.5598, "lon": 68.7870}
DROPOFF = {"lat": 38.5750, "lon": 68.7950}


def raw_ws_connect(port: int, path: str, rcvbuf: int = 4096) -> socket.socket:
    """Opens a WebSocket by hand; returns the socket right after the 101 response."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: it sets the window
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)  # byte by byte: nothing past the response is consumed
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def read_frames_until_close(s: socket.socket, timeout: float = 20.0) -> tuple[int, int]:
    """Reads server frames until CLOSE; returns (data frames read, close code)."""
    s.settimeout(timeout)
    buf = b""
    frames = 0

    def need(n: int) -> None:
        nonlocal buf
        while len(buf) < n:
            chunk = s.recv(1 << 16)
            assert chunk, "EOF before a CLOSE frame"
            buf += chunk

    while True:
        need(2)
        opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
        off = 2
        if length == 126:
            need(4)
            length, off = struct.unpack_from("!H", buf, 2)[0], 4
        elif length == 127:
            need(10)
            length, off = struct.unpack_from("!Q", buf, 2)[0], 10
        need(off + length)
        payload, buf = buf[off:off + length], buf[off + length:]
        if opcode == 0x8:
            return frames, struct.unpack("!H", payload[:2])[0]
        frames += 1


def metric(stack: Stack, name: str) -> float:
    _status, body = stack.http_get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


async def online_driver(stack: Stack, driver: str, lat: float, lon: float) -> AppClient:
    d = await AppClient.open(f"{stack.url}/ws/driver/{driver}")
    await d.expect("welcome")
    await d.send({"type": "driver_status", "status": "online", "id": "on"})
    await d.expect("ack", id="on")
    await d.send({"type": "driver_location", "lat": lat, "lon": lon, "id": "loc"})
    await d.expect("ack", id="loc")
    return d


async def test_a_client_that_stops_reading_is_closed_4008_with_bounded_memory(engine_bin: object) -> None:
    stack = start_stack("--positions-per-s", "1000000", "--positions-burst", "1000000",
                        "--messages-per-s", "1000000", "--messages-burst", "1000000", "--max-paused-s", "1.5")
    try:
        sidecar = psutil.Process(stack.proc.pid)
        # The slow passenger and a healthy pair far away from it.
        slow = raw_ws_connect(stack.port, f"/ws/passenger/slow?token={mint('passenger', 'slow')}")
        slow.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        d1 = await online_driver(stack, "d1", 38.5610, 68.7800)
        d2 = await online_driver(stack, "d2", 38.6400, 68.8600)
        p2 = await AppClient.open(f"{stack.url}/ws/passenger/p2")
        await p2.expect("welcome")

        # The slow passenger requests a ride by hand-built frame, then never reads again.
        body = (b'{"type":"ride_request","id":"r","pickup":{"lat":38.5598,"lon":68.787},'
                b'"dropoff":{"lat":38.575,"lon":68.795}}')
        mask = os.urandom(4)
        slow.sendall(bytes([0x81, 0x80 | len(body)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
        offer = await d1.expect("new_order", passenger_id="slow")
        await d1.send({"type": "order_accept", "order_id": offer["order_id"], "id": "acc"})
        await d1.expect("ack", id="acc")
        await p2.send({"type": "ride_request", "id": "r2", "pickup": {"lat": 38.6390, "lon": 68.8610},
                       "dropoff": DROPOFF})
        order2 = (await p2.expect("ack", id="r2"))["order_id"]
        await d2.expect("new_order", order_id=order2)
        await d2.send({"type": "order_accept", "order_id": order2, "id": "acc2"})
        await d2.expect("ack", id="acc2")

        rss_before = sidecar.memory_info().rss
        deadline = time.monotonic() + 60
        sent = 0
        while metric(stack, 'dgdo_closed_total{reason="slow_reader"}') < 1:
            assert time.monotonic() < deadline, f"no 4008 after {sent} positions"
            for _ in range(500):  # driving in circles, as fast as the link takes it
                sent += 1
                await d1.send({"type": "driver_location", "lat": 38.5610 + (sent % 100) * 1e-5, "lon": 68.78})
            await d1.send({"type": "ping", "id": sent})
            await d1.expect("pong", id=sent)  # the driver's own link stays responsive
            # Meanwhile the healthy passenger still gets its driver's positions.
            await d2.send({"type": "driver_location", "lat": 38.6401, "lon": 68.8601, "id": f"h{sent}"})
            await p2.expect("driver_location", order_id=order2)
        growth_mb = (sidecar.memory_info().rss - rss_before) / 2**20
        assert sent > 2000
        # ~2 messages (position + ETA) of ~150 bytes per position: 64k positions would be ~20 MB if buffered.
        assert growth_mb < 24, f"sidecar RSS grew {growth_mb:.1f} MB while a client did not read"

        # The slow client, reading at last, finds everything buffered for it, then a CLOSE 4008.
        frames, code = await asyncio.get_running_loop().run_in_executor(None, read_frames_until_close, slow)
        assert code == 4008
        assert 1 <= frames < sent  # positions and ETAs were coalesced, not all queued
        slow.close()

        # Other connections are unaffected, and what the slow one missed waits for its resume.
        await d2.send({"type": "driver_location", "lat": 38.6402, "lon": 68.8602})
        await p2.expect("driver_location", order_id=order2)
        back = await AppClient.open(f"{stack.url}/ws/passenger/slow?last_seq=0")
        welcome = await back.expect("welcome")
        assert welcome["resumed"] is True
        statuses = [(await back.expect("order_update"))["status"] for _ in range(2)]
        assert statuses == ["searching", "accepted"]
        for c in (back, d1, d2, p2):
            await c.close()
    finally:
        assert stack.stop() == 0
