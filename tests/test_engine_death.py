"""Peer death: kill -9 of the engine, a restart's fresh rings, a full ring — with the real processes.

Here the test owns the engine process (the sidecar runs as `dgdo sidecar`), so it decides
when the engine dies, stalls and comes back.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, LineReader, engine_cmd, stack_env
from wsclient import AppClient

from sidecar.engine import ring

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
            engine_cmd(self.engine_bin, self.control, "--instance", self.instance, *extra),
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


# These tests SIGSTOP the engine to hold records in its ring; the sidecar must not call it hung
# meanwhile (test_liveness.py covers that with a short timeout).
PATIENT = ("--engine-timeout-s", "60")


def start_split(engine_bin: Path, *engine_args: str, sidecar_args: tuple[str, ...] = PATIENT) -> Split:
    instance = f"t{uuid.uuid4().hex[:8]}"
    control = f"@dgdo-test-{instance}"  # an abstract name: nothing in /tmp, whatever happens
    s = Split(engine_bin, control, instance, None, None, 0)  # type: ignore[arg-type]
    s.start_engine(*engine_args)
    s.sidecar = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "sidecar", "--control", control, "--port", "0", "--status-interval", "0",
         *sidecar_args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=stack_env(),  # logs: detach times
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
    assert [n for n in os.listdir("/dev/shm") if s.instance in n] == []  # memfds: never a name there


@pytest.fixture
def split(engine_bin: Path) -> Iterator[Split]:
    s = start_split(engine_bin)
    yield s
    stop_split(s)


NEAR = {"lat": 38.5610, "lon": 68.7800}  # ~600 m from PICKUP
FAR = {"lat": 38.5700, "lon": 68.7870}  # ~1.1 km from PICKUP: offered a ride only when NEAR has no driver
OUT_OF_REACH = {"lat": 38.9000, "lon": 68.7870}  # ~38 km from both: its rides are offered to nobody


async def online_driver(url: str, driver_id: str, at: dict[str, float] = NEAR) -> AppClient:
    d = await AppClient.open(f"{url}/ws/driver/{driver_id}")
    await d.expect("welcome")
    await d.send({"type": "driver_status", "status": "online", "id": "on"})
    await d.expect("ack", id="on")
    await d.send({"type": "driver_location", **at, "id": "loc"})
    await d.expect("ack", id="loc")
    return d


async def watching_drivers(url: str) -> AppClient:
    """An admin subscribed to `drivers`: its driver_status "disconnected" says the sidecar saw a driver leave."""
    admin = await AppClient.open(f"{url}/ws/admin")
    await admin.expect("welcome")
    await admin.send({"type": "subscribe", "topics": ["drivers"], "id": "s"})
    await admin.expect("ack", id="s")
    return admin


async def stall_until_overloaded(s: Split, client: AppClient, pickup: dict[str, float]) -> list[str]:
    """Stops the engine (SIGSTOP) and sends ride requests through `client` (numbered ids, returned)
    until the sidecar refuses one with `overloaded`: the ring is full and the backlog behind it over
    its bounds (link.py)."""
    assert s.engine is not None
    s.engine.send_signal(signal.SIGSTOP)
    sent: list[str] = []
    deadline = time.monotonic() + 20
    while True:
        assert time.monotonic() < deadline, "never refused with overloaded"
        rid = f"f{len(sent)}"
        sent.append(rid)
        await client.send({"type": "ride_request", "id": rid, "pickup": pickup, "dropoff": DROPOFF})
        try:
            m = await client.recv(timeout=0.05)
        except TimeoutError:
            continue
        if m.get("type") == "error":
            assert m["code"] == "overloaded", m
            return sent


async def answers(client: AppClient, sent: list[str], timeout: float = 15) -> dict[str, list[dict[str, Any]]]:
    """Waits until every id in `sent` has an ack or error; returns them by id (a list each: one is right)."""
    def got() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for m in client.seen:
            if m.get("type") in ("ack", "error") and m.get("id") in sent:
                out.setdefault(m["id"], []).append(m)
        return out

    deadline = time.monotonic() + timeout
    while len(got()) < len(sent):
        assert time.monotonic() < deadline, f"unanswered: {[r for r in sent if r not in got()][:10]}"
        with contextlib.suppress(TimeoutError):
            await client.recv(timeout=1)
    return got()


async def test_engine_kill_is_noticed_and_sidecar_reattaches_by_itself(split: Split) -> None:
    driver = await online_driver(split.url, "d1")
    passenger = await AppClient.open(f"{split.url}/ws/passenger/p1")
    await passenger.expect("welcome")

    assert split.engine is not None
    killed_at = time.monotonic()
    split.engine.send_signal(signal.SIGKILL)
    # The control socket's EOF is the death notice: the sidecar logs the detach at once, no polling.
    split.out.wait_for(r"engine detached", timeout=5)
    noticed_s = time.monotonic() - killed_at
    assert noticed_s < 0.3, f"the sidecar noticed the engine's death only after {noticed_s * 1000:.0f} ms"
    split.engine.wait()
    assert split.healthz() == 503

    await passenger.send({"type": "ride_request", "id": "while-down", "pickup": PICKUP, "dropoff": DROPOFF})
    err = await passenger.expect("error", id="while-down")
    assert err["code"] == "engine_unavailable"
    await driver.send({"type": "driver_status", "status": "online", "id": "drv-down"})  # a driver command too
    err = await driver.expect("error", id="drv-down")
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


def engine_segment(pid: int, instance: str, which: str) -> ring.Segment:
    """Maps the engine's own ring memfd of worker 1 ("in" or "out"), found through /proc/PID/fd."""
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            if os.readlink(f"{fd_dir}/{fd}").startswith(f"/memfd:dgdo.{instance}.w1.{which} "):
                f = os.open(f"{fd_dir}/{fd}", os.O_RDWR)
                try:
                    return ring.Segment.from_fd(f, label=f"engine {pid} w1.{which}")
                finally:
                    os.close(f)
    raise AssertionError(f"engine {pid} holds no memfd of worker 1 {which}")


async def test_a_restarted_engine_hands_out_fresh_rings_and_the_dead_runs_vanish(split: Split) -> None:
    assert split.engine is not None
    old = engine_segment(split.engine.pid, split.instance, "in")
    old_epoch = old.epoch
    old.close()
    split.engine.send_signal(signal.SIGKILL)
    split.engine.wait()
    split.wait_health(503)
    # Nothing of the dead run has a name anywhere: no /dev/shm entry to find, judge or clean.
    assert [n for n in os.listdir("/dev/shm") if split.instance in n] == []
    split.start_engine()
    split.wait_health(200)
    fresh = engine_segment(split.engine.pid, split.instance, "in")
    assert fresh.epoch != old_epoch
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
        sent = await stall_until_overloaded(s, passenger, PICKUP)  # the ring fills, then the backlog ages
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


def records_out(s: Split) -> float:
    """`dgdo_records_out_total` from one scrape of the sidecar's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{s.port}/metrics", timeout=5) as r:
        body = r.read().decode()
    return next(float(line.split()[-1]) for line in body.splitlines() if line.startswith("dgdo_records_out_total{"))


async def test_records_out_only_goes_up_while_commands_are_refused_as_overloaded(engine_bin: Path) -> None:
    """`dgdo_records_out_total` is a Prometheus counter: it must never go down (a drop reads as a restart).
    It used to count a command as the core queued it and take it back when the link refused it, so a
    scrape in between saw a higher value than the next. Scraped without pause while a burst of commands
    is refused `overloaded` by a stalled engine, it only goes up."""
    unlimited = ("--messages-per-s", "1000000", "--messages-burst", "1000000")
    s = start_split(engine_bin, "--ring-capacity", "4096", sidecar_args=(*PATIENT, *unlimited))
    samples: list[float] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            samples.append(records_out(s))

    scraper = threading.Thread(target=scrape, daemon=True)
    try:
        # (No keepalive PINGs of the client's own: on a loaded machine, with this process scraping
        # flat out, a PONG behind a thousand errors can be read late, and the library then gives up.)
        passenger = await AppClient.open(f"{s.url}/ws/passenger/ro", ping_interval=None)
        await passenger.expect("welcome")
        scraper.start()
        sent = await stall_until_overloaded(s, passenger, PICKUP)
        burst = [f"b{i}" for i in range(500)]  # refused as they come, many to an event-loop turn
        for rid in burst:
            await passenger.send({"type": "ride_request", "id": rid, "pickup": PICKUP, "dropoff": DROPOFF})
        refused = await answers(passenger, burst, timeout=120)  # (slow: the sidecar renders /metrics flat out)
        done.set()
        scraper.join(10)
        drops = [(a, b) for a, b in itertools.pairwise(samples) if b < a]
        assert not drops, f"{len(drops)} of {len(samples)} scrapes went down, e.g. {drops[:3]}"
        assert {v[0]["code"] for v in refused.values()} == {"overloaded"}
        assert s.engine is not None
        s.engine.send_signal(signal.SIGCONT)
        got = await answers(passenger, sent)
        acked = sum(1 for v in got.values() if v[0]["type"] == "ack")
        assert records_out(s) >= acked + 1  # (+ the passenger's session open)
        await passenger.close()
    finally:
        done.set()
        stop_split(s)


async def test_an_engine_killed_behind_a_backlog_answers_what_was_carried_and_hears_every_session(
        engine_bin: Path) -> None:
    """A stalled engine killed with its ring full and a backlog behind it past its bounds, then restarted.

    The backlog goes to the next engine, which runs those commands and answers them: none may be told
    `engine_unavailable` (retry) for a command that is then run. And the next engine, which has not
    fallen behind, must hear every session and its state: one opened while no engine was attached is
    welcomed, and a driver's status and position are told again (this engine keeps no journal).
    """
    s = start_split(engine_bin, "--ring-capacity", "4096")
    try:
        driver = await online_driver(s.url, "kb-d")
        passenger = await AppClient.open(f"{s.url}/ws/passenger/kb1")
        await passenger.expect("welcome")
        sent = await stall_until_overloaded(s, passenger, PICKUP)
        s.engine.send_signal(signal.SIGKILL)
        s.engine.wait()
        s.wait_health(503)
        late = await AppClient.open(f"{s.url}/ws/passenger/kb2")  # no engine: announced at the next attach
        s.start_engine()
        await late.expect("welcome", timeout=10)
        got = await answers(passenger, sent)
        assert all(len(v) == 1 for v in got.values()), "a command answered twice"
        errors = {r: v[0]["code"] for r, v in got.items() if v[0]["type"] == "error"}
        assert set(errors.values()) == {"overloaded"}, errors  # every other one ran, and was acked
        acked = [v[0]["order_id"] for v in got.values() if v[0]["type"] == "ack"]
        assert len(acked) > 4096 // 112 and len(set(acked)) == len(acked)
        await driver.expect("new_order", timeout=10)  # online and in reach of them, for the new engine too
        await driver.close()
        await late.close()
        await passenger.close()
    finally:
        stop_split(s)


async def test_a_session_that_opens_or_closes_while_the_engine_lags_is_heard_once_it_catches_up(
        engine_bin: Path) -> None:
    """The engine falls behind (ring full, backlog past its bounds: commands refused `overloaded`) while a
    driver leaves and a passenger connects. Neither can retry its announcement: the engine must hear
    both once it catches up, or it keeps offering rides to the driver who left (and the passenger
    never gets its welcome)."""
    s = start_split(engine_bin, "--ring-capacity", "4096")
    try:
        admin = await watching_drivers(s.url)
        near = await online_driver(s.url, "lag-near")
        far = await online_driver(s.url, "lag-far", FAR)
        flooder = await AppClient.open(f"{s.url}/ws/passenger/lag-flood")
        await flooder.expect("welcome")
        sent = await stall_until_overloaded(s, flooder, OUT_OF_REACH)
        await near.close()
        await admin.expect("driver_status", driver_id="lag-near", status="disconnected")
        waiting = await AppClient.open(f"{s.url}/ws/passenger/lag-waiting")
        s.engine.send_signal(signal.SIGCONT)
        await answers(flooder, sent)  # the engine has caught up with all it was sent
        rider = await AppClient.open(f"{s.url}/ws/passenger/lag-rider")
        await rider.expect("welcome")
        await rider.send({"type": "ride_request", "id": "r", "pickup": PICKUP, "dropoff": DROPOFF})
        order_id = (await rider.expect("ack", id="r"))["order_id"]
        await far.expect("new_order", order_id=order_id, timeout=5)  # not to the one who left (15 s offer)
        await waiting.expect("welcome", timeout=5)
        for c in (waiting, rider, flooder, far, admin):
            await c.close()
    finally:
        stop_split(s)


async def test_a_driver_that_leaves_while_no_engine_is_attached_is_not_offered_rides_by_the_next(
        split: Split) -> None:
    """A driver connects to a stopped engine (its open, status and position wait in the ring), the engine
    dies, the driver leaves, an engine starts: what waited is carried over to it, the open included,
    and it must also hear that the driver is gone."""
    admin = await watching_drivers(split.url)
    far = await online_driver(split.url, "gh-far", FAR)
    assert split.engine is not None
    split.engine.send_signal(signal.SIGSTOP)
    ghost = await AppClient.open(f"{split.url}/ws/driver/gh-near")
    await ghost.send({"type": "driver_status", "status": "online"})
    await ghost.send({"type": "driver_location", **NEAR})
    await ghost.send({"type": "ping", "id": "mark"})
    await ghost.expect("pong", id="mark")  # the sidecar has taken both
    split.engine.send_signal(signal.SIGKILL)
    split.engine.wait()
    split.wait_health(503)
    await ghost.close()
    await admin.expect("driver_status", driver_id="gh-near", status="disconnected")
    split.start_engine()
    split.wait_health(200)
    passenger = await AppClient.open(f"{split.url}/ws/passenger/gh-p")
    await passenger.expect("welcome")
    await passenger.send({"type": "ride_request", "id": "r", "pickup": PICKUP, "dropoff": DROPOFF})
    order_id = (await passenger.expect("ack", id="r"))["order_id"]
    await far.expect("new_order", order_id=order_id, timeout=5)  # not to the one who left (15 s offer)
    for c in (passenger, far, admin):
        await c.close()


class InRing:
    """The test's read-only look at the sidecar -> engine ring of worker 1 (header and the word at head)."""

    def __init__(self, engine_pid: int, instance: str) -> None:
        self.seg = engine_segment(engine_pid, instance, "in")
        self.map = self.seg._map

    def depth(self) -> int:
        tail = int.from_bytes(self.map[ring.lib.DGDO_RING_TAIL_OFFSET :][:8], "little")
        head = int.from_bytes(self.map[ring.lib.DGDO_RING_HEAD_OFFSET :][:8], "little")
        return tail - head

    def close(self) -> None:
        self.seg.close()


async def test_kill_mid_batch_loses_no_command_queued_behind_it(split: Split) -> None:
    """kill -9 of an engine stopped while it was taking records: every command gets exactly one answer.

    The engine reads a batch in two phases: it peeks the records (journals and applies them),
    publishes the answers, then retires them all and releases head. Stopped with records at head it
    may be anywhere in that batch: peeked and applied but not answered (the sidecar carries them over
    and the next engine answers them), answered but not released (the sidecar delivers the answers,
    carries the records over, and the next engine skips them), or half-way through retiring them
    (retired records in front of committed ones: the sidecar must skip the first and carry over the
    rest). No command is ever refused: each one's answer is either published or carried over.
    """
    import asyncio
    import random

    passengers = [await AppClient.open(f"{split.url}/ws/passenger/mb{i}") for i in range(3)]
    for p in passengers:
        await p.expect("welcome")
    sent: dict[int, list[str]] = {i: [] for i in range(len(passengers))}
    flowing = True

    async def flow(i: int) -> None:
        p, n = passengers[i], 0
        while flowing:
            for _ in range(40):  # bursts: the engine then takes long batches, a wide target for SIGSTOP
                rid = f"f{i}-{n}"
                n += 1
                sent[i].append(rid)
                await p.send({"type": "ride_request", "id": rid, "pickup": PICKUP, "dropoff": DROPOFF})
            await asyncio.sleep(0.03)  # ~1.3k commands/s per connection, under its 2000/s limit

    async def answers(i: int) -> None:
        with contextlib.suppress(TimeoutError):
            while True:
                await passengers[i].recv(timeout=0.5)

    tasks = [asyncio.create_task(flow(i)) for i in range(len(passengers))]
    readers = [asyncio.create_task(answers(i)) for i in range(len(passengers))]
    assert split.engine is not None
    in_ring = InRing(split.engine.pid, split.instance)
    await asyncio.sleep(0.3)
    engine = split.engine

    def stop_mid_batch() -> int:
        # Stop the engine the moment records wait at head (it is about to take them or is taking them;
        # its peek leaves no trace in the ring, so records at head while stopped is the catch). A thread:
        # it polls between the flow's sends.
        for attempt in range(1, 2001):
            deadline = time.monotonic() + 1
            while in_ring.depth() == 0 and time.monotonic() < deadline:
                time.sleep(0.00005)
            engine.send_signal(signal.SIGSTOP)
            time.sleep(0.002)
            if in_ring.depth() > 0:
                return attempt
            engine.send_signal(signal.SIGCONT)
            time.sleep(random.uniform(0.0, 0.005))
        engine.send_signal(signal.SIGSTOP)
        return 0

    caught = await asyncio.to_thread(stop_mid_batch)
    await asyncio.sleep(0.05)  # the flow keeps queueing behind the stopped engine
    flowing = False
    await asyncio.gather(*tasks)
    for p in passengers:  # a ping answered means the sidecar has taken every request sent before it
        await p.send({"type": "ping", "id": "mark"})
    for r in readers:
        await r
    assert in_ring.depth() > 0, "nothing queued in the ring behind the stopped engine"
    in_ring.close()
    split.engine.send_signal(signal.SIGKILL)
    split.engine.wait()
    split.wait_health(503)
    split.start_engine()

    for i, p in enumerate(passengers):
        def outcome(pp: AppClient = p) -> dict[str, list[dict]]:
            got: dict[str, list[dict]] = {}
            for m in pp.seen:
                if m.get("type") in ("ack", "error") and isinstance(m.get("id"), str) and m["id"] != "mark":
                    got.setdefault(m["id"], []).append(m)
            return got

        got = outcome()
        deadline = time.monotonic() + 20
        while len(got) < len(sent[i]):
            assert time.monotonic() < deadline, f"unanswered: {[r for r in sent[i] if r not in got][:10]}"
            with contextlib.suppress(TimeoutError):
                await p.recv(timeout=1)
            got = outcome()
        assert set(got) == set(sent[i])
        assert all(len(v) == 1 for v in got.values()), "a command answered twice"
        # A command the dead engine took stays in the ring until its answer is published: none is
        # refused (engine_unavailable) for an answer that died with the engine.
        refused = [r for r in sent[i] if got[r][0]["type"] == "error"]
        assert not refused, [got[r][0] for r in refused]
    print(f"caught mid-batch at attempt {caught}")
    assert caught, "the engine was never stopped inside a batch: the test did not exercise the kill mid-batch"
    for p in passengers:
        await p.close()


def test_a_second_engine_on_a_live_ones_control_socket_is_refused(split: Split) -> None:
    assert split.engine is not None
    second = subprocess.run(
        [split.engine_bin, "--control", split.control, "--instance", split.instance],
        capture_output=True, timeout=10,
    )
    assert second.returncode == 1
    assert b"another engine is live" in second.stderr, second.stderr
    assert split.healthz() == 200  # the first one still serves: its socket and rings are untouched
    # The same instance on another control socket is another engine, not a clash: its rings are
    # memfds with no name to collide (the instance only labels them).
    other = subprocess.Popen(engine_cmd(split.engine_bin, split.control + "-2", "--instance", split.instance),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert other.stdout is not None and other.stdout.readline().startswith(b"dgdo-engine ready")
        assert split.healthz() == 200
    finally:
        other.terminate()
        assert other.wait(10) == 0
