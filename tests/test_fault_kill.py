"""Fault tests under load: processes killed with SIGKILL at random moments while rides go on.

The engine journals every input and the sidecar keeps no state that matters, so neither death
may lose an acknowledged order, duplicate one, reuse an id, book a driver twice, or leave a gap
in anybody's reliable messages. The recording fleet (tests/fleet.py) checks each of those as it
goes; these tests kill, wait for the stack to come back, let the rides finish, and read its
ledger.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, LineReader, stack_env
from fleet import Fleet

pytestmark = pytest.mark.timeout(420)

KILLS = 10
READY = re.compile(r"dgdo-engine ready .*pid=(\d+)")
DRAIN_S = 120.0  # after the last kill, every ride must end within this


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


async def wait_health(port: int, status: int, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await loop.run_in_executor(None, healthz, port) != status:
        assert loop.time() < deadline, f"/healthz never became {status}"
        await asyncio.sleep(0.02)  # another process's HTTP endpoint: nothing to await but its answer


async def run_fleet_until_done(fleet: Fleet, faults: asyncio.Task[None]) -> None:
    """Runs the fleet while `faults` kills things; then lets every ride end."""
    stop_requests, stop_drivers = asyncio.Event(), asyncio.Event()
    drivers = [asyncio.create_task(d.run(stop_drivers)) for d in fleet.driver_members]
    passengers = [asyncio.create_task(p.run(stop_requests)) for p in fleet.passenger_members]
    try:
        await faults
        stop_requests.set()  # no new rides; the ones in flight must all end
        done, pending = await asyncio.wait(passengers, timeout=DRAIN_S)
        for t in done:
            t.result()  # a passenger that crashed is a test failure, not a silent one
        assert not pending, f"rides still in flight {DRAIN_S:.0f} s after the last kill: {fleet.unfinished()}"
    finally:
        stop_requests.set()
        stop_drivers.set()
        for t in passengers:
            t.cancel()
        await asyncio.gather(*drivers, *passengers, return_exceptions=True)


def check_ledger(fleet: Fleet, min_completed: int) -> None:
    led = fleet.ledger
    statuses = [s for s in led.final.values()]
    print(f"[fault] orders {len(led.owner)}: " + ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses)))
          + f"; trips completed by fleet drivers {led.completed_trips}; reconnects resumed {led.resumed}, "
          f"bridged {led.bridged}; replayed {led.replayed}")
    assert led.violations == [], "\n".join(led.violations[:20])
    assert fleet.unfinished() == [], f"acknowledged orders that never ended: {fleet.unfinished()}"
    done = [oid for oid, status in led.final.items() if status == "completed"]
    assert len(done) >= min_completed, f"only {len(done)} rides completed: the load did not happen"
    assert len(set(led.by_request.values())) == len(led.by_request), "two requests share an order"


# ---- the engine killed under `dgdo run` ------------------------------------------------------


@pytest.fixture
def run_stack(engine_bin: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], LineReader, int]]:
    """`dgdo run` with the demo fleet and a journal: the supervisor restarts a killed engine."""
    cmd = [sys.executable, "-m", "sidecar", "run", "--host", "127.0.0.1", "--port", "0", "--demo", "6",
           "--status-interval", "0", "--state-dir", str(tmp_path / "state"), "--offer-timeout-s", "2",
           "--exhausted-wait-s", "3"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=stack_env())
    out = LineReader(proc.stdout)
    port = int(out.wait_for(r"sidecar listening on ws://127\.0\.0\.1:(\d+)").group(1))
    yield proc, out, port
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_engine_killed_ten_times_under_load_loses_nothing(run_stack) -> None:
    proc, out, port = run_stack
    await wait_health(port, 200)
    ready = [m for m in map(READY.search, out.all) if m]  # printed before "listening": already read
    engine_pid = int(ready[-1].group(1))
    fleet = Fleet(f"ws://127.0.0.1:{port}", drivers=6, passengers=8, seed=11)
    rng = random.Random(2026)
    kills = 0

    async def faults() -> None:
        nonlocal engine_pid, kills
        loop = asyncio.get_running_loop()
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.3, 2.5))  # a random moment in the rides' lives
            os.kill(engine_pid, signal.SIGKILL)
            kills += 1
            line = await loop.run_in_executor(None, out.wait_for, READY.pattern, 30.0)
            assert int(line.group(1)) != engine_pid
            engine_pid = int(line.group(1))
            await wait_health(port, 200)
        await asyncio.sleep(2.0)  # some load after the last restart too

    await run_fleet_until_done(fleet, asyncio.create_task(faults()))
    assert kills == KILLS
    check_ledger(fleet, min_completed=5)
    recovered = [line for line in out.all if "recovered" in line]
    assert len(recovered) >= KILLS, "the engine did not report a recovery after each kill"
    assert proc.poll() is None, "dgdo run died"


# ---- the sidecar killed, the engine alive ----------------------------------------------------


class Split:
    """An engine (journaling into a state dir) and a sidecar started apart, as systemd runs them."""

    def __init__(self, engine_bin: Path, state_dir: Path) -> None:
        self.control = f"@dgdo-test-{os.getpid()}-{time.monotonic_ns()}"
        self.engine = subprocess.Popen(
            [str(engine_bin), "--control", self.control, "--state-dir", str(state_dir),
             "--offer-timeout-s", "1", "--exhausted-wait-s", "3"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.engine.stdout is not None
        assert self.engine.stdout.readline().startswith(b"dgdo-engine ready")
        self.sidecar: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start_sidecar(self) -> None:
        # The same port each time, as a restarted unit would listen on.
        cmd = [sys.executable, "-m", "sidecar", "sidecar", "--control", self.control, "--port", str(self.port),
               "--status-interval", "0"]
        self.sidecar = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=stack_env())
        out = LineReader(self.sidecar.stdout)
        self.port = int(out.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)").group(1))

    def stop(self) -> None:
        for p in (self.sidecar, self.engine):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@pytest.fixture
def split(engine_bin: Path, tmp_path: Path) -> Iterator[Split]:
    s = Split(engine_bin, tmp_path / "state")
    yield s
    s.stop()


async def test_sidecar_killed_under_load_clients_resume_without_missing_anything(split: Split) -> None:
    split.start_sidecar()
    await wait_health(split.port, 200)
    fleet = Fleet(f"ws://127.0.0.1:{split.port}", drivers=5, passengers=6, seed=5)
    rng = random.Random(99)

    async def faults() -> None:
        for _ in range(5):
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            assert split.sidecar is not None
            split.sidecar.send_signal(signal.SIGKILL)
            split.sidecar.wait()
            # Offline for longer than an offer lives: the engine goes on (offers expire, cancel_order
            # and new offers are sent) while nobody is connected; clients must get all of it on resume.
            await asyncio.sleep(1.5)
            split.start_sidecar()
            await wait_health(split.port, 200)
        await asyncio.sleep(2.0)

    await run_fleet_until_done(fleet, asyncio.create_task(faults()))
    check_ledger(fleet, min_completed=3)
    led = fleet.ledger
    # The engine held every missed message: each reconnect resumed, none needed a snapshot.
    assert led.bridged == 0, f"{led.bridged} reconnects could not resume"
    assert led.resumed > 0
    assert led.replayed > 0, "no reliable message was sent while its client was offline"
