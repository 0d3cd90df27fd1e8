"""A client that stops reading: bounded server memory, a 4008 close, nobody else affected.

The slow client is a raw TCP socket that does the WebSocket handshake by hand and then never
reads — no library buffering on its side that could hide the problem — with a small receive
buffer so the kernel does not soak up megabytes on its behalf. The rate limits are lifted for
these stacks, and the pause limit (`--max-paused-s`) is long, so what is measured is the
outbox itself: positions coalesce (memory stays flat however many stream), reliable messages
queue up to `--max-queued` and past that the client is closed with 4008.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from conftest import Stack, mint, start_stack
from picowsclient import PicowsClient
from wsclient import AppClient

from sidecar.shell.server import CLOSE_GRACE_S

PICKUP = {"lat": 38.5598, "lon": 68.7870}
DROPOFF = {"lat": 38.5750, "lon": 68.7950}
UNLIMITED = ("--positions-per-s", "1000000", "--positions-burst", "1000000",
             "--messages-per-s", "1000000", "--messages-burst", "1000000")
POSITIONS = 100_000


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
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def masked_text(message: dict) -> bytes:
    """One client TEXT frame (FIN, masked) carrying `message` as JSON."""
    body = json.dumps(message, separators=(",", ":")).encode()
    mask = os.urandom(4)
    n = len(body)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body))


class RawReader:
    """Reads server frames from a raw socket (blocking; run it in an executor)."""

    def __init__(self, s: socket.socket, timeout: float = 30.0) -> None:
        self.s = s
        self.buf = b""
        self.bytes = 0  # frame bytes read, headers included
        s.settimeout(timeout)

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.s.recv(1 << 16)
            assert chunk, "EOF before a CLOSE frame"
            self.buf += chunk

    def frame(self) -> tuple[int, bytes]:
        self._need(2)
        opcode, length = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        off = 2
        if length == 126:
            self._need(4)
            length, off = struct.unpack_from("!H", self.buf, 2)[0], 4
        elif length == 127:
            self._need(10)
            length, off = struct.unpack_from("!Q", self.buf, 2)[0], 10
        self._need(off + length)
        payload, self.buf = self.buf[off:off + length], self.buf[off + length:]
        self.bytes += off + length
        return opcode, payload

    def until(self, stop: Callable[[dict], bool]) -> tuple[list[dict], int | None]:
        """Data messages up to the first one `stop` accepts (included), or up to a CLOSE (its code)."""
        seen: list[dict] = []
        while True:
            opcode, payload = self.frame()
            if opcode == 0x8:
                return seen, struct.unpack("!H", payload[:2])[0]
            seen.append(json.loads(payload))
            if stop(seen[-1]):
                return seen, None


def metric(stack: Stack, name: str) -> float:
    _status, body = stack.http_get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def rss(stack: Stack) -> int:
    return psutil.Process(stack.proc.pid).memory_info().rss


async def in_thread(fn: Callable[..., object], *args: object) -> object:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def online_driver(stack: Stack, driver: str, lat: float, lon: float) -> PicowsClient:
    d = await PicowsClient.open(f"{stack.url}/ws/driver/{driver}")
    await d.expect("welcome")
    for m in ({"type": "driver_status", "status": "online", "id": "on"},
              {"type": "driver_location", "lat": lat, "lon": lon, "id": "loc"}):
        d.send(m)
        await d.expect("ack", id=m["id"])
    return d


async def healthy_pair(stack: Stack) -> tuple[PicowsClient, AppClient, int]:
    """A driver on a trip with its passenger, far from everything else: the bystanders."""
    d2 = await online_driver(stack, "d2", 38.6400, 68.8600)
    p2 = await AppClient.open(f"{stack.url}/ws/passenger/p2")
    await p2.expect("welcome")
    await p2.send({"type": "ride_request", "id": "r2", "pickup": {"lat": 38.6390, "lon": 68.8610},
                   "dropoff": DROPOFF})
    order2 = (await p2.expect("ack", id="r2"))["order_id"]
    await d2.expect("new_order", order_id=order2)
    d2.send({"type": "order_accept", "order_id": order2, "id": "acc2"})
    await d2.expect("ack", id="acc2")
    return d2, p2, order2


async def bystander_still_served(d2: PicowsClient, p2: AppClient, order2: int, n: int) -> None:
    lat = 38.6400 + (n % 50) * 1e-5
    d2.send({"type": "driver_location", "lat": lat, "lon": 68.8601})
    await p2.expect("driver_location", order_id=order2, lat=lat)


async def test_positions_to_a_client_that_stops_reading_coalesce_and_memory_stays_flat(engine_bin: object) -> None:
    stack = start_stack(*UNLIMITED, "--max-paused-s", "600")  # no 4008 by time: only the outbox is measured
    try:
        slow = raw_ws_connect(stack.port, f"/ws/passenger/slow?token={mint('passenger', 'slow')}")
        d1 = await online_driver(stack, "d1", 38.5610, 68.7800)
        d2, p2, order2 = await healthy_pair(stack)
        slow.sendall(masked_text({"type": "ride_request", "id": "r", "pickup": PICKUP, "dropoff": DROPOFF}))
        offer = await d1.expect("new_order", passenger_id="slow")
        d1.send({"type": "order_accept", "order_id": offer["order_id"], "id": "acc"})
        await d1.expect("ack", id="acc")

        async def stream(count: int, start: int) -> None:
            for batch in range(start, start + count, 1000):
                for i in range(batch, batch + 1000):  # driving in circles, as fast as the link takes it
                    d1.send({"type": "driver_location", "lat": 38.5610 + (i % 100) * 1e-5, "lon": 68.78})
                d1.send({"type": "ping", "id": batch})
                await d1.expect("pong", id=batch)  # every position before it was taken in
                if batch % 10_000 == 0:
                    await bystander_still_served(d2, p2, order2, batch)

        await stream(5_000, 0)  # warm up: the slow client's buffers fill, the allocator settles
        before = rss(stack)
        await stream(POSITIONS, 5_000)
        growth_mb = (rss(stack) - before) / 2**20
        # Each position is a driver_location and an estimate_update for the slow passenger, ~150 bytes
        # each encoded and ~1 KB each as queued maps: buffering them all would cost 30 to 200 MB.
        assert growth_mb < 8, f"sidecar RSS grew {growth_mb:.1f} MB for {POSITIONS} positions not read"
        assert metric(stack, 'dgdo_closed_total{reason="slow_reader",worker="1"}') == 0  # coalescing, not closing

        # The slow client, reading at last, gets a few hundred messages, ending with the latest position.
        last = {"type": "driver_location", "lat": 38.5610 + 0.00123, "lon": 68.7812}
        d1.send(last)
        reader = RawReader(slow)
        seen, code = await in_thread(reader.until, lambda m: m.get("lat") == last["lat"])
        assert code is None and seen[0]["type"] == "welcome"
        # What was in flight is what the kernel's socket buffers took (the server's send buffer
        # autotunes up to tcp_wmem's maximum) plus the transport's high-water mark: not 100k positions.
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        in_flight = wmem_max + 2 * 65536 + 65536  # + the slow socket's receive buffer and slack
        assert reader.bytes < in_flight, f"{reader.bytes} bytes delivered: positions were queued, not coalesced"
        assert len(seen) < POSITIONS, f"{len(seen)} messages for {POSITIONS} positions (each makes 2)"
        slow.close()
        await bystander_still_served(d2, p2, order2, 1)
        for c in (d1, d2, p2):
            await c.close()
    finally:
        assert stack.stop() == 0


async def test_reliable_messages_past_the_outbox_cap_close_4008_and_wait_for_the_resume(engine_bin: object) -> None:
    # Orders give up searching after 1 s (no_driver): thousands of them do not pile up in the engine.
    stack = start_stack(*UNLIMITED, "--max-paused-s", "600", "--max-queued", "200", "--search-timeout-s", "1")
    try:
        slow = raw_ws_connect(stack.port, f"/ws/passenger/slow?token={mint('passenger', 'slow')}")
        d2, p2, order2 = await healthy_pair(stack)

        # The slow passenger asks for rides (nobody is near) and never reads the order_updates each
        # one produces (searching, then no_driver). Once its socket and write buffer are full, they
        # queue in the outbox; the 201st queued closes it with 4008.
        request = masked_text({"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF})
        deadline = time.monotonic() + 90
        sent = 0
        while metric(stack, 'dgdo_closed_total{reason="slow_reader",worker="1"}') < 1:
            assert time.monotonic() < deadline, f"no 4008 after {sent} ride requests"
            slow.sendall(request * 200)
            sent += 200
            await bystander_still_served(d2, p2, order2, sent)  # the others are served meanwhile

        seen, code = await in_thread(RawReader(slow).until, lambda m: False)
        assert code == 4008
        welcome, updates = seen[0], seen[1:]
        assert welcome["type"] == "welcome"
        assert updates and all(m["type"] == "order_update" for m in updates)
        seqs = [m["seq"] for m in updates]
        assert seqs == list(range(welcome["seq"] + 1, welcome["seq"] + 1 + len(seqs)))  # none dropped before
        slow.close()
        await bystander_still_served(d2, p2, order2, 3)

        # What it missed is not lost: numbered on in the mailbox, and the resume says whether it can replay.
        back = await AppClient.open(f"{stack.url}/ws/passenger/slow?last_seq={seqs[-1]}")
        again = await back.expect("welcome")
        assert again["seq"] > seqs[-1]
        if again["resumed"]:  # few enough were missed to replay them
            assert (await back.expect("order_update"))["seq"] == seqs[-1] + 1
        await back.send({"type": "ride_request", "id": "after", "pickup": PICKUP, "dropoff": DROPOFF})
        order = (await back.expect("ack", id="after"))["order_id"]
        assert (await back.expect("order_update", order_id=order))["seq"] > again["seq"]
        for c in (back, d2, p2):
            await c.close()
    finally:
        assert stack.stop() == 0


def masked_ping(payload: bytes) -> bytes:
    """One client PING frame (FIN, masked) with a payload of at most 125 bytes."""
    mask = os.urandom(4)
    return bytes([0x89, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


PAUSED = 'dgdo_paused_connections{worker="1"}'


def wait_metric(stack: Stack, name: str, value: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (got := metric(stack, name)) != value:
        assert time.monotonic() < deadline, f"{name} stayed {got}, not {value}, for {timeout} s"
        time.sleep(0.05)  # a gauge in another process: nothing to await but its next scrape


def pause_a_slow_reader(stack: Stack, name: str) -> socket.socket:
    """A client that sends PINGs and never reads their PONGs, until its connection is paused."""
    slow = raw_ws_connect(stack.port, f"/ws/passenger/{name}?token={mint('passenger', name)}")
    pings = masked_ping(b"x" * 125) * 1000
    deadline = time.monotonic() + 60
    while metric(stack, PAUSED) < 1:
        assert time.monotonic() < deadline, "never paused"
        slow.sendall(pings)
    return slow


async def test_the_paused_connections_gauge_forgets_a_paused_client_once_it_is_gone(engine_bin: object) -> None:
    """dgdo_paused_connections counts connections above their write buffer's high-water mark: a paused
    one that ends (the client leaves, or the server closes it 4008 and hangs up) is no longer one."""
    stack = start_stack(*UNLIMITED, "--max-paused-s", "2")
    try:
        assert metric(stack, PAUSED) == 0
        leaving = pause_a_slow_reader(stack, "leaving")
        leaving.close()  # the client goes, its session paused
        wait_metric(stack, PAUSED, 0, 10)
        stuck = pause_a_slow_reader(stack, "stuck")  # never reads, never closes: 4008 after --max-paused-s
        wait_metric(stack, 'dgdo_closed_total{reason="slow_reader",worker="1"}', 1, 20)
        wait_metric(stack, PAUSED, 0, 20)  # hung up on (server.CLOSE_GRACE_S) and forgotten
        assert metric(stack, 'dgdo_connections{worker="1"}') == 0
        stuck.close()
    finally:
        assert stack.stop() == 0


async def test_a_client_that_closes_and_then_reads_nothing_is_hung_up_on(engine_bin: object) -> None:
    """A paused client sends its CLOSE and never reads again: the server's echo waits behind the frames
    the client did not read, and a graceful hang-up waits for them to be written, for ever. Bounded as
    after a CLOSE of the server's own (server.CLOSE_GRACE_S), not by --max-paused-s (long here)."""
    stack = start_stack(*UNLIMITED, "--max-paused-s", "600")
    try:
        slow = pause_a_slow_reader(stack, "closer")
        mask = os.urandom(4)
        slow.sendall(bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i] for i, b in enumerate(struct.pack("!H", 1000))))
        wait_metric(stack, 'dgdo_connections{worker="1"}', 0, CLOSE_GRACE_S + 5)
        assert metric(stack, PAUSED) == 0
        slow.close()
    finally:
        assert stack.stop() == 0
