"""Peer death: kill -9 of the engine, stale segments, a full ring — with the real processes.

Here the test owns the engine process (the sidecar runs as `dgdo sidecar`), so it decides
when the engine dies, stalls and comes back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, LineReader, stack_env
from wsclient import AppClient

from sidecar import ring

PICKUP = {"lat": 38.5598, "lon": 68.7870}
DROPOFF = {"lat": 38.5750, "lon": 68.7950}


@dataclass
class Split:
    """An engine and a sidecar started separately, as systemd runs them."""

    engine_bin: Path
    control: str
    instance: str
    sidecar: subprocess.Popen[bytes]
    out: LineReader
    port: int
    engine: subprocess.Popen[bytes] | None = None

    def start_engine(self, *extra: str) -> None:
        self.engine = subprocess.Popen(
            [self.engine_bin, "--control", self.control, "--instance", self.instance, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert self.engine.stdout is not None
        assert self.engine.stdout.readline().startswith(b"dgdo-engine ready")

    def healthz(self) -> int:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def wait_health(self, status: int, timeout: float = 10.0) -> float:
        """Waits for /healthz to answer `status`; returns how long it took."""
        t0 = time.monotonic()
        while self.healthz() != status:
            assert time.monotonic() - t0 < timeout, f"/healthz never became {status}"
            time.sleep(0.01)  # an HTTP endpoint in another process: nothing to await but its answer
        return time.monotonic() - t0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def start_split(engine_bin: Path, *engine_args: str) -> Split:
    runtime = tempfile.mkdtemp(prefix="dgdo-test-")
    control = os.path.join(runtime, "engine.sock")
    s = Split(engine_bin, control, f"t{uuid.uuid4().hex[:8]}", None, None, 0)  # type: ignore[arg-type]
    s.start_engine(*engine_args)
    s.sidecar = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "sidecar", "--control", control, "--port", "0", "--status-interval", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=stack_env(),
    )
    s.out = LineReader(s.sidecar.stdout)
    s.port = int(s.out.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)").group(1))
    s.wait_health(200)
    return s


def stop_split(s: Split) -> None:
    s.sidecar.send_signal(signal.SIGTERM)
    assert s.sidecar.wait(20) == 0
    if s.engine is not None and s.engine.poll() is None:
        s.engine.send_signal(signal.SIGCONT)
        s.engine.terminate()
        assert s.engine.wait(10) == 0
    for name in os.listdir("/dev/shm"):
        if s.instance in name:
            os.unlink("/dev/shm/" + name)


@pytest.fixture
def split(engine_bin: Path) -> Iterator[Split]:
    s = start_split(engine_bin)
    yield s
    stop_split(s)


async def online_driver(url: str, driver_id: str) -> AppClient:
    d = await AppClient.open(f"{url}/ws/driver/{driver_id}")
    await d.expect("welcome")
    await d.send({"type": "driver_status", "status": "online", "id": "on"})
    await d.expect("ack", id="on")
    await d.send({"type": "driver_location", "lat": 38.5610, "lon": 68.7800, "id": "loc"})
    await d.expect("ack", id="loc")
    return d


async def test_engine_kill_is_noticed_and_sidecar_reattaches_by_itself(split: Split) -> None:
    driver = await online_driver(split.url, "d1")
    passenger = await AppClient.open(f"{split.url}/ws/passenger/p1")
    await passenger.expect("welcome")

    assert split.engine is not None
    split.engine.send_signal(signal.SIGKILL)
    split.engine.wait()
    noticed_s = split.wait_health(503)
    assert noticed_s < 2.0

    await passenger.send({"type": "ride_request", "id": "while-down", "pickup": PICKUP, "dropoff": DROPOFF})
    err = await passenger.expect("error", id="while-down")
    assert err["code"] == "engine_unavailable"

    split.start_engine()  # same control path, a new run: the sidecar attaches without a restart
    split.wait_health(200)
    await passenger.send({"type": "ride_request", "id": "after", "pickup": PICKUP, "dropoff": DROPOFF})
    order_id = (await passenger.expect("ack", id="after"))["order_id"]
    # The driver's status and position were re-announced to the new engine: it can be offered the ride.
    offer = await driver.expect("new_order", order_id=order_id)
    assert offer["passenger_id"] == "p1"
    await driver.close()
    await passenger.close()


async def test_commands_queued_in_the_ring_survive_an_engine_crash(split: Split) -> None:
    passenger = await AppClient.open(f"{split.url}/ws/passenger/p2")
    await passenger.expect("welcome")
    assert split.engine is not None
    split.engine.send_signal(signal.SIGSTOP)  # the engine stops consuming: requests wait in the ring
    for i in range(5):
        await passenger.send({"type": "ride_request", "id": f"q{i}", "pickup": PICKUP, "dropoff": DROPOFF})
    await passenger.send({"type": "ping", "id": "mark"})
    await passenger.expect("pong", id="mark")  # the sidecar has taken all five
    split.engine.send_signal(signal.SIGKILL)
    split.engine.wait()
    split.wait_health(503)
    split.start_engine()
    acks = [await passenger.expect("ack", id=f"q{i}", timeout=15) for i in range(5)]
    order_ids = [a["order_id"] for a in acks]
    assert len(set(order_ids)) == 5
    assert not [m for m in passenger.seen if m["type"] == "error"]
    await passenger.close()


async def test_a_stale_segment_from_a_crashed_run_is_not_mistaken_for_a_live_one(split: Split) -> None:
    assert split.engine is not None
    split.engine.send_signal(signal.SIGKILL)
    split.engine.wait()
    split.wait_health(503)
    # The dead run's segments are still in /dev/shm, with its epoch; pretend one is half-written too.
    stale_in = f"/dgdo.{split.instance}.w1.in"
    old_epoch = ring.Segment(stale_in).epoch
    split.start_engine()
    split.wait_health(200)
    fresh = ring.Segment(stale_in)
    assert fresh.epoch != old_epoch
    with pytest.raises(ring.RingError, match="stale"):
        ring.Segment(stale_in, epoch=old_epoch)
    fresh.close()
    passenger = await AppClient.open(f"{split.url}/ws/passenger/p3")
    await passenger.expect("welcome")
    await passenger.send({"type": "ride_request", "id": "r", "pickup": PICKUP, "dropoff": DROPOFF})
    assert (await passenger.expect("ack", id="r"))["order_id"] > 0
    await passenger.close()


async def test_full_ring_refuses_with_overloaded_and_never_loses_an_accepted_order(engine_bin: Path) -> None:
    s = start_split(engine_bin, "--ring-capacity", "4096")
    try:
        passenger = await AppClient.open(f"{s.url}/ws/passenger/p4")
        await passenger.expect("welcome")
        assert s.engine is not None
        s.engine.send_signal(signal.SIGSTOP)
        sent: list[str] = []
        refused: set[str] = set()
        deadline = time.monotonic() + 20
        while not refused:  # a stalled engine: the ring fills, then the backlog ages past its bound
            assert time.monotonic() < deadline, "never refused with overloaded"
            rid = f"f{len(sent)}"
            sent.append(rid)
            await passenger.send({"type": "ride_request", "id": rid, "pickup": PICKUP, "dropoff": DROPOFF})
            try:
                m = await passenger.recv(timeout=0.05)
            except TimeoutError:
                continue
            if m.get("type") == "error":
                assert m["code"] == "overloaded", m
                refused.add(m["id"])
        assert len(sent) > 4096 // 112, "the ring itself must have filled first"
        s.engine.send_signal(signal.SIGCONT)

        def outcomes() -> tuple[dict[str, int], set[str]]:
            acks = {m["id"]: m["order_id"] for m in passenger.seen if m.get("type") == "ack"}
            errors = {m["id"] for m in passenger.seen if m.get("type") == "error" and m["code"] == "overloaded"}
            return acks, errors

        acked, refused = outcomes()
        while len(acked) + len(refused) < len(sent):  # every request gets exactly one answer
            await passenger.recv(timeout=15)
            acked, refused = outcomes()
        assert not set(acked) & refused
        assert sorted(acked) == sorted(r for r in sent if r not in refused)
        assert len(set(acked.values())) == len(acked)
        await passenger.close()
    finally:
        stop_split(s)
