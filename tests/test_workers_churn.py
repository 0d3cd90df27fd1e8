"""Workers coming and going while the others serve, as systemd runs them: the real engine and two
`dgdo sidecar --worker N` processes on one port, started separately; worker 2 killed with -9 and
started again when the test wants (or left dead); real `websockets` clients placed on a chosen
worker as tests/test_workers.py does (its helpers).

Asserted: an admin on the surviving worker sees the dead worker's drivers leave its map within
seconds (not after the 90 s a silent worker's drivers take to expire), and its /healthz stays 200;
while the dead worker is down, an admin on the survivor still sees every change of an order whose
passenger was on the dead worker; an admin on the restarted worker sees the survivor's drivers,
standing still, within seconds (not at the survivor's next full relay, up to 30 s later); the
engine killed with -9 and started again mid-ride, with the driver on one worker and the passenger
on the other: both workers re-attach, and the ride goes on, numbered on; a driver that leaves
while the engine is down leaves the other worker's map once it is back. And with both workers
serving: the same driver connecting to both at once keeps exactly one connection (the other closed
4001); a driver and a passenger on two workers get each other's pushes (positions, cancel).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, LineReader, engine_cmd, http_get, mint, new_state_dir, stack_env
from test_workers import CENTER, HEADER, App, admin_on, app_on, bound_socket, online, open_from, source_port_for

pytestmark = pytest.mark.timeout(120)

SOON_S = 10.0  # well under a silent worker's 3 x 30 s, well over a feed tick or two on a loaded box


class Workers:
    """One engine and sidecar workers 1 and 2 on one port (what test_workers' helpers call a stack)."""

    def __init__(self, engine_bin: Path) -> None:
        self.engine_bin = engine_bin
        self.instance = f"t{uuid.uuid4().hex[:8]}"
        self.control = f"@dgdo-test-{self.instance}"  # an abstract name: nothing in /tmp, whatever happens
        self.state_dir = new_state_dir()
        self.start_engine()
        self.port = 0
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.out: dict[int, LineReader] = {}
        self.start(1)
        self.start(2)

    def start_engine(self) -> None:
        self.engine = subprocess.Popen(engine_cmd(self.engine_bin, self.control, "--instance", self.instance,
                                                  "--state-dir", self.state_dir),
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.engine.stdout is not None
        assert self.engine.stdout.readline().startswith(b"dgdo-engine ready")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, worker: int) -> None:
        cmd = [sys.executable, "-m", "sidecar", "sidecar", "--control", self.control, "--worker", str(worker),
               "--host", "127.0.0.1", "--port", str(self.port), "--status-interval", "0"]
        proc = self.procs[worker] = subprocess.Popen(cmd, cwd=ROOT, env=stack_env(), stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT)  # the log: its attaches
        # Attached before it listens: the line says it is both.
        self.out[worker] = LineReader(proc.stdout)
        listening = self.out[worker].wait_for(r"listening on ws://127\.0\.0\.1:(\d+)")
        self.port = int(listening.group(1))

    def kill(self, worker: int) -> None:
        self.procs[worker].kill()
        self.procs[worker].wait(10)

    def http_get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.port, path)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0
        if self.engine.poll() is None:
            self.engine.terminate()
            assert self.engine.wait(10) == 0


@pytest.fixture
def workers(engine_bin: Path) -> Iterator[Workers]:
    w = Workers(engine_bin)
    yield w
    w.stop()


async def fleet_until(admin: App, done: Any, what: str) -> None:
    """Reads `fleet` messages until `done(message)` holds; fails after SOON_S."""
    deadline = time.monotonic() + SOON_S
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"admin on worker {admin.worker}: {what} not seen within {SOON_S} s"
        try:
            m = await admin.expect("fleet", timeout=left)
        except TimeoutError:
            continue
        if done(m):
            return


def test_a_killed_workers_drivers_leave_the_other_workers_map_within_seconds(workers: Workers) -> None:
    s = workers

    async def main() -> None:
        driver = await app_on(s, 2, "driver", "kd1")
        await online(driver, CENTER[0] + 2.0, CENTER[1])
        admin = await admin_on(s, 1, "ops-kill")
        await admin.send({"type": "subscribe", "topics": ["fleet"], "id": "f"})
        await fleet_until(admin, lambda m: "kd1" in {row[0] for row in m["drivers"]}, "kd1 on the map")
        s.kill(2)
        assert await asyncio.wait_for(driver.closed, 5) != 1000  # its socket died with it
        await fleet_until(admin, lambda m: "kd1" in m["gone"] or (m["full"] and "kd1" not in
                                                                 {row[0] for row in m["drivers"]}), "kd1 gone")
        assert s.http_get("/healthz")[0] == 200
        await admin.close()
    asyncio.run(main())


def test_an_order_of_a_dead_workers_passenger_still_reaches_the_survivors_admins(
        workers: Workers) -> None:
    s = workers

    async def main() -> None:
        driver = await app_on(s, 1, "driver", "kd3")
        await online(driver, CENTER[0] + 2.2, CENTER[1])
        passenger = await app_on(s, 2, "passenger", "kp3")
        admin = await admin_on(s, 1, "ops-orders")
        await admin.send({"type": "subscribe", "topics": ["active_orders", "assignments"], "id": "a"})
        await admin.expect("ack", id="a")
        await passenger.send({"type": "ride_request", "id": "r", "pickup": {"lat": CENTER[0] + 2.2, "lon": CENTER[1]},
                              "dropoff": {"lat": CENTER[0] + 2.21, "lon": CENTER[1]}})
        order_id = (await passenger.expect("ack", id="r"))["order_id"]
        await driver.expect("new_order", order_id=order_id)
        s.kill(2)  # and not started again: worker 1 is the only one attached
        await asyncio.wait_for(passenger.closed, 5)
        await driver.send({"type": "order_accept", "order_id": order_id, "id": "acc"})
        await driver.expect("ack", id="acc")
        # active_orders first, then the assignment (sidecar/session/core.py _admin_order)
        await admin.expect("active_orders", order_id=order_id, status="accepted", timeout=SOON_S)
        await admin.expect("assignment", order_id=order_id, driver_id="kd3", passenger_id="kp3", timeout=SOON_S)
        await admin.close()
        await driver.close()
    asyncio.run(main())


def test_a_restarted_worker_sees_the_other_workers_standing_drivers_within_seconds(
        workers: Workers) -> None:
    s = workers

    async def main() -> None:
        driver = await app_on(s, 1, "driver", "kd2")
        await online(driver, CENTER[0] + 2.1, CENTER[1])  # one fix: it stands still from here on
        s.kill(2)
        s.start(2)
        admin = await admin_on(s, 2, "ops-restart")
        await admin.send({"type": "subscribe", "topics": ["fleet"], "id": "f"})
        await fleet_until(admin, lambda m: "kd2" in {row[0] for row in m["drivers"]}, "kd2 on the map")
        await admin.close()
        await driver.close()
    asyncio.run(main())


def test_an_engine_restarted_mid_ride_is_reattached_by_both_workers_and_the_ride_goes_on(
        workers: Workers) -> None:
    s = workers

    async def main() -> None:
        driver = await app_on(s, 1, "driver", "kd4")
        await online(driver, CENTER[0] + 2.3, CENTER[1])
        passenger = await app_on(s, 2, "passenger", "kp4")
        await passenger.send({"type": "ride_request", "id": "r", "pickup": {"lat": CENTER[0] + 2.3, "lon": CENTER[1]},
                              "dropoff": {"lat": CENTER[0] + 2.31, "lon": CENTER[1]}})
        order_id = (await passenger.expect("ack", id="r"))["order_id"]
        await driver.expect("new_order", order_id=order_id)
        await driver.send({"type": "order_accept", "order_id": order_id, "id": "acc"})
        await driver.expect("ack", id="acc")
        accepted = await passenger.expect("order_update", order_id=order_id, status="accepted")
        s.engine.kill()
        s.engine.wait(10)
        for w in (1, 2):
            s.out[w].wait_for(r"engine detached")
        s.start_engine()
        for w in (1, 2):
            s.out[w].wait_for(r"attached to engine pid")
        await driver.send({"type": "order_arrived", "order_id": order_id, "id": "arr"})
        await driver.expect("ack", id="arr")
        between = []
        while True:
            m = await asyncio.wait_for(passenger.inbox.get(), 10)
            between.append(m)
            if m.get("status") == "arrived":
                break
        seqs = [m["seq"] for m in between if "seq" in m]  # ("arriving" may come before "arrived")
        assert seqs == list(range(accepted["seq"] + 1, accepted["seq"] + 1 + len(seqs))), between
        await driver.send({"type": "driver_location", "lat": CENTER[0] + 2.3001, "lon": CENTER[1]})
        await passenger.expect("driver_location", order_id=order_id)
        await driver.close()
        await passenger.close()
    asyncio.run(main())


def test_the_same_driver_on_both_workers_at_once_keeps_exactly_one_connection(workers: Workers) -> None:
    s = workers

    async def main() -> None:
        ports = {w: await source_port_for(s, w) for w in (1, 2)}

        async def open_on(worker: int) -> App:
            sock = bound_socket(ports[worker])
            sock.setblocking(False)
            ws = await open_from(s, f"/ws/driver/kd5?token={mint('driver', 'kd5')}", sock)  # type: ignore[arg-type]
            assert int(ws.response.headers[HEADER]) == worker
            return App(ws, worker)

        for round_ in range(5):
            apps = await asyncio.gather(open_on(1), open_on(2))
            done, _ = await asyncio.wait([a.closed for a in apps], timeout=5)
            assert len(done) == 1, f"round {round_}: {len(done)} of the two closed"
            (closed,) = [a for a in apps if a.closed.done()]
            (kept,) = [a for a in apps if a is not closed]
            assert closed.closed.result() == 4001
            await kept.expect("welcome")
            await online(kept, CENTER[0] + 2.4, CENTER[1])  # answered: the engine's session is this one
            assert not kept.closed.done()
            await kept.close()
    asyncio.run(main())


def test_pushes_between_a_driver_and_a_passenger_on_two_workers(workers: Workers) -> None:
    s = workers

    async def main() -> None:
        driver = await app_on(s, 1, "driver", "kd6")
        await online(driver, CENTER[0] + 2.5, CENTER[1])
        passenger = await app_on(s, 2, "passenger", "kp6")
        await passenger.send({"type": "ride_request", "id": "r", "pickup": {"lat": CENTER[0] + 2.5, "lon": CENTER[1]},
                              "dropoff": {"lat": CENTER[0] + 2.51, "lon": CENTER[1]}})
        order_id = (await passenger.expect("ack", id="r"))["order_id"]
        await driver.expect("new_order", order_id=order_id)
        await driver.send({"type": "order_accept", "order_id": order_id, "id": "acc"})
        await passenger.expect("order_update", order_id=order_id, status="accepted")
        await driver.send({"type": "driver_location", "lat": CENTER[0] + 2.501, "lon": CENTER[1]})
        seen = await passenger.expect("driver_location", order_id=order_id, driver_id="kd6")
        assert (seen["lat"], seen["lon"]) == (CENTER[0] + 2.501, CENTER[1])
        await passenger.send({"type": "order_cancel", "order_id": order_id, "id": "c"})
        await passenger.expect("ack", id="c")
        await driver.expect("cancel_order", order_id=order_id)
        await passenger.expect("order_update", order_id=order_id, status="canceled")  # (after its ack)
        await driver.close()
        await passenger.close()
    asyncio.run(main())


def test_apps_of_a_killed_worker_resume_on_the_other_with_last_seq(workers: Workers) -> None:
    s = workers

    async def main() -> None:
        driver = await app_on(s, 2, "driver", "kd7")
        await online(driver, CENTER[0] + 2.6, CENTER[1])
        passenger = await app_on(s, 2, "passenger", "kp7")
        await passenger.send({"type": "ride_request", "id": "r", "pickup": {"lat": CENTER[0] + 2.6, "lon": CENTER[1]},
                              "dropoff": {"lat": CENTER[0] + 2.61, "lon": CENTER[1]}})
        order_id = (await passenger.expect("ack", id="r"))["order_id"]
        await driver.expect("new_order", order_id=order_id)
        await driver.send({"type": "order_accept", "order_id": order_id, "id": "acc"})
        await driver.expect("ack", id="acc")
        await passenger.expect("order_update", order_id=order_id, status="accepted")
        seen = passenger.last_seq
        driver_seen = driver.last_seq
        s.kill(2)  # both apps' worker: their connections die with it
        await asyncio.wait_for(asyncio.gather(driver.closed, passenger.closed), 5)
        # The driver comes back first, on worker 1, within its grace: its trip is still its own.
        back = await app_on(s, 1, "driver", "kd7", f"&last_seq={driver_seen}")
        assert back.welcome["resumed"] is True  # type: ignore[attr-defined]
        await back.send({"type": "order_arrived", "order_id": order_id, "id": "arr"})
        await back.expect("ack", id="arr")
        again = await app_on(s, 1, "passenger", "kp7", f"&last_seq={seen}")
        assert again.welcome["resumed"] is True  # type: ignore[attr-defined]
        missed = []
        while not missed or missed[-1]["status"] != "arrived":
            missed.append(await again.expect("order_update", order_id=order_id))
        assert [m["seq"] for m in missed] == list(range(seen + 1, seen + 1 + len(missed)))
        await back.close()
        await again.close()
    asyncio.run(main())


def test_a_driver_that_leaves_while_the_engine_is_down_leaves_the_other_workers_map(workers: Workers) -> None:
    s = workers

    async def main() -> None:
        driver = await app_on(s, 2, "driver", "kd8")
        await online(driver, CENTER[0] + 2.7, CENTER[1])
        admin = await admin_on(s, 1, "ops-outage")
        await admin.send({"type": "subscribe", "topics": ["fleet"], "id": "f"})
        await fleet_until(admin, lambda m: "kd8" in {row[0] for row in m["drivers"]}, "kd8 on the map")
        s.engine.kill()
        s.engine.wait(10)
        for w in (1, 2):
            s.out[w].wait_for(r"engine detached")
        await driver.close()  # while no engine is there to hear of it
        s.start_engine()
        for w in (1, 2):
            s.out[w].wait_for(r"attached to engine pid")
        await fleet_until(admin, lambda m: "kd8" in m["gone"] or (m["full"] and "kd8" not in
                                                                 {row[0] for row in m["drivers"]}), "kd8 gone")
        await admin.close()
    asyncio.run(main())
