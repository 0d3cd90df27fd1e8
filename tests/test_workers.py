"""Two sidecar workers on one port, end to end: `dgdo run --workers 2` (the real engine, worker 1
in the `dgdo run` process, worker 2 a `dgdo sidecar` child), real `websockets` clients.

With SO_REUSEPORT the kernel picks the worker for each new connection, by a hash of its
addresses and ports. To put a client on a chosen worker the test picks its *source port*: it
connects from a port, reads which worker took it (the `X-Dgdo-Worker` header of the 101), resets
that probe connection (SO_LINGER 0: no TIME_WAIT keeps the port), and connects the real client
from the port that landed on the worker it wants. The hash of the same addresses and ports picks
the same socket as long as the workers' sockets stay the same, and the test checks the header
of every real connection too. The probes are admin connections: they open no driver or
passenger session that the test's own apps would replace.

Asserted: a driver on one worker and a passenger on the other complete a ride; the same driver
connecting to the other worker closes the first with 4001; a client reconnecting to the other
worker with `last_seq` gets what it missed (resumed); an admin on either worker sees both
workers' drivers; a second sidecar started with a worker id in use exits within 2 s with one line.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT, Stack, mint, stack_env, start_stack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.timeout(120)

HEADER = "X-Dgdo-Worker"
CENTER = (38.5610, 68.7860)
PROBES = 200  # source ports tried per client: each lands on one of 2 workers, ~1/2 each


@pytest.fixture(scope="module")
def two_workers(engine_bin: Any) -> Iterator[Stack]:
    s = start_stack("--workers", "2")  # returns once worker 1 listens and is attached
    s.out.wait_for(r"sidecar listening")  # worker 2: attached before it listens (App.start)
    yield s
    assert s.stop() == 0


def control_of(stack: Stack) -> str:
    line = next(x for x in stack.out.all if "sidecar listening" in x)
    return re.search(r"engine control (\S+)\)", line).group(1)  # type: ignore[union-attr]


def bound_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


async def open_from(stack: Stack, path: str, sock: socket.socket) -> ClientConnection:
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", stack.port))
    return await connect(f"{stack.url}{path}", sock=sock, open_timeout=5, max_queue=None)


async def source_port_for(stack: Stack, worker: int) -> int:
    """A local port whose connections the kernel hands to `worker`."""
    token = mint("admin", "probe")
    for _ in range(PROBES):
        sock = bound_socket()
        sock.setblocking(False)
        local = sock.getsockname()[1]
        ws = await open_from(stack, f"/ws/admin?token={token}", sock)
        landed = int(ws.response.headers[HEADER])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()  # RST: the port is free again once the socket is closed, a loop turn later
        await asyncio.wait_for(ws.wait_closed(), 5)
        if landed == worker:
            return local
    raise AssertionError(f"no source port landed on worker {worker} in {PROBES} tries")


class App:
    """One app connection on a chosen worker, with its messages in a queue."""

    def __init__(self, ws: ClientConnection, worker: int) -> None:
        self.ws = ws
        self.worker = worker
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        self.last_seq = 0

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                m = json.loads(raw)
                if "seq" in m and m["type"] != "welcome":
                    self.last_seq = m["seq"]
                self.inbox.put_nowait(m)
        except ConnectionClosed:
            pass
        if not self.closed.done():
            self.closed.set_result(self.ws.close_code)

    async def expect(self, type_: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            while True:
                m = await self.inbox.get()
                if m["type"] == type_ and all(m.get(k) == v for k, v in fields.items()):
                    return m
        return await asyncio.wait_for(find(), timeout)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


async def app_on(stack: Stack, worker: int, role: str, app_id: str, query: str = "") -> App:
    local = await source_port_for(stack, worker)
    sock = bound_socket(local)
    sock.setblocking(False)
    ws = await open_from(stack, f"/ws/{role}/{app_id}?token={mint(role, app_id)}{query}", sock)
    assert int(ws.response.headers[HEADER]) == worker, "the kernel moved this port to the other worker"
    app = App(ws, worker)
    app.welcome = await app.expect("welcome")  # type: ignore[attr-defined]
    return app


async def admin_on(stack: Stack, worker: int, sub: str) -> App:
    local = await source_port_for(stack, worker)
    sock = bound_socket(local)
    sock.setblocking(False)
    ws = await open_from(stack, f"/ws/admin?token={mint('admin', sub)}", sock)
    assert int(ws.response.headers[HEADER]) == worker
    app = App(ws, worker)
    await app.expect("welcome")
    return app


async def online(driver: App, lat: float = CENTER[0], lon: float = CENTER[1]) -> None:
    await driver.send({"type": "driver_location", "lat": lat, "lon": lon, "id": "loc"})
    await driver.expect("ack", id="loc")
    await driver.send({"type": "driver_status", "status": "online", "id": "on"})
    await driver.expect("ack", id="on")


async def ride(driver: App, passenger: App, tag: str) -> dict[str, Any]:
    """A whole ride: request, offer, accept, arrive, start, complete; returns the passenger's last update."""
    await passenger.send({"type": "ride_request", "id": tag, "pickup": {"lat": CENTER[0], "lon": CENTER[1]},
                          "dropoff": {"lat": CENTER[0] + 0.02, "lon": CENTER[1] + 0.02}})
    order_id = (await passenger.expect("ack", id=tag))["order_id"]
    await driver.expect("new_order", order_id=order_id)
    for i, step in enumerate(("order_accept", "order_arrived", "trip_start", "trip_complete")):
        await driver.send({"type": step, "order_id": order_id, "id": f"{tag}-{i}"})
        await driver.expect("ack", id=f"{tag}-{i}")
    return await passenger.expect("order_update", order_id=order_id, status="completed")


def test_a_driver_on_one_worker_and_a_passenger_on_the_other_complete_a_ride(two_workers: Stack) -> None:
    async def main() -> None:
        driver = await app_on(two_workers, 1, "driver", "wd1")
        passenger = await app_on(two_workers, 2, "passenger", "wp1")
        await online(driver)
        completed = await ride(driver, passenger, "r1")
        assert completed["driver_id"] == "wd1"
        await driver.close()
        await passenger.close()
    asyncio.run(main())


def test_the_same_driver_on_the_other_worker_closes_the_first_with_4001(two_workers: Stack) -> None:
    async def main() -> None:
        first = await app_on(two_workers, 1, "driver", "wd2")
        await online(first, CENTER[0] + 0.5)  # far away: no other test's rides reach it
        second = await app_on(two_workers, 2, "driver", "wd2")
        assert await asyncio.wait_for(first.closed, 5) == 4001
        # The newer one is the driver now: it is answered, and the first got nothing more.
        await second.send({"type": "driver_status", "status": "online", "id": "again"})
        await second.expect("ack", id="again")
        # And back: the one on worker 2 is closed in turn.
        third = await app_on(two_workers, 1, "driver", "wd2")
        assert await asyncio.wait_for(second.closed, 5) == 4001
        await third.close()
    asyncio.run(main())


def test_a_passenger_reconnecting_to_the_other_worker_with_last_seq_resumes(two_workers: Stack) -> None:
    async def main() -> None:
        driver = await app_on(two_workers, 1, "driver", "wd3")
        await online(driver, CENTER[0] - 0.5, CENTER[1])
        passenger = await app_on(two_workers, 1, "passenger", "wp3")
        await passenger.send({"type": "ride_request", "id": "r3",
                              "pickup": {"lat": CENTER[0] - 0.5, "lon": CENTER[1]},
                              "dropoff": {"lat": CENTER[0] - 0.49, "lon": CENTER[1]}})
        order_id = (await passenger.expect("ack", id="r3"))["order_id"]
        await passenger.expect("order_update", order_id=order_id, status="searching")
        seen = passenger.last_seq
        await passenger.close()
        # While it is away, its order moves on: these updates are committed for it, not delivered.
        await driver.expect("new_order", order_id=order_id)
        await driver.send({"type": "order_accept", "order_id": order_id, "id": "a3"})
        await driver.expect("ack", id="a3")
        await driver.send({"type": "order_arrived", "order_id": order_id, "id": "b3"})
        await driver.expect("ack", id="b3")
        back = await app_on(two_workers, 2, "passenger", "wp3", f"&last_seq={seen}")
        assert back.welcome["resumed"] is True  # type: ignore[attr-defined]
        missed = [await back.expect("order_update", order_id=order_id) for _ in range(2)]
        assert [m["status"] for m in missed] == ["accepted", "arrived"]
        assert [m["seq"] for m in missed] == [seen + 1, seen + 2]
        # And it is live on worker 2 from there on.
        await driver.send({"type": "trip_start", "order_id": order_id, "id": "c3"})
        started = await back.expect("order_update", order_id=order_id, status="started")
        assert started["seq"] == seen + 3
        await driver.close()
        await back.close()
    asyncio.run(main())


def test_an_admin_on_either_worker_sees_the_drivers_of_both(two_workers: Stack) -> None:
    async def main() -> None:
        d1 = await app_on(two_workers, 1, "driver", "wd4")
        d2 = await app_on(two_workers, 2, "driver", "wd5")
        await online(d1, CENTER[0] + 1.0, CENTER[1])
        await online(d2, CENTER[0] + 1.01, CENTER[1])
        for worker in (1, 2):
            admin = await admin_on(two_workers, worker, f"ops{worker}")
            await admin.send({"type": "subscribe", "topics": ["system_stats"], "id": "s"})
            stats = await admin.expect("system_stats")
            while stats["workers"] < 2:  # the engine's stats come once a second
                stats = await admin.expect("system_stats", timeout=3)
            assert stats["worker"] == worker and stats["workers"] == 2
            await admin.send({"type": "subscribe", "topics": ["fleet"], "id": "f"})
            seen: set[str] = set()
            deadline = time.monotonic() + 10
            while not {"wd4", "wd5"} <= seen:  # the snapshot, then deltas as relays arrive
                assert time.monotonic() < deadline, f"admin on worker {worker} saw only {seen}"
                m = await admin.expect("fleet")
                seen |= {row[0] for row in m["drivers"]}
            await admin.close()
        await d1.close()
        await d2.close()
    asyncio.run(main())


def test_a_second_worker_with_an_id_in_use_exits_with_one_clear_line_within_2_s(two_workers: Stack) -> None:
    cmd = [sys.executable, "-m", "sidecar", "sidecar", "--control", control_of(two_workers), "--worker", "2",
           "--host", "127.0.0.1", "--port", str(two_workers.port), "--status-interval", "0"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=stack_env(), capture_output=True, text=True, timeout=30)
    took = time.monotonic() - t0
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"dgdo: worker id 2 is already attached to the engine \(pid \d+\): "
                        r"give each worker its own --worker", last), done.stderr
    assert "Traceback" not in done.stderr
    assert took < 2.0, f"took {took:.2f} s"
    assert "sidecar listening" not in done.stdout  # refused before it took a share of the port
    # The worker that holds the id is untouched.
    assert two_workers.proc.poll() is None
    assert two_workers.http_get("/healthz")[0] == 200


def test_dgdo_run_killed_with_9_takes_its_workers_and_engine_with_it(engine_bin: Any) -> None:
    import psutil

    s = start_stack("--workers", "3")
    # Each child listening (after its attach): its own code, not a fork on its way to exec. The two
    # children write to one pipe, so their lines may land run together: count them, not lines.
    listening = 0  # (start_stack consumed worker 1's line)
    while listening < 2:
        listening += s.out.wait_for(r"sidecar listening on ws://").string.count("sidecar listening on ws://")
    children = psutil.Process(s.proc.pid).children()
    workers = [c for c in children if "sidecar" in " ".join(c.cmdline())]
    assert len(workers) == 2 and len(children) == 3, (children, [c.cmdline() for c in children], s.out.all)
    s.proc.kill()
    s.proc.wait()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"left running after dgdo run's kill -9: {alive}"
