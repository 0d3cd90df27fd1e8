"""Crash recovery with the real processes: kill -9 of an engine that journals to --state-dir.

The test owns the engine (the sidecar runs as `dgdo sidecar`, as under systemd), puts an order
in flight, kills the engine with SIGKILL and starts a new one on the same state directory.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, engine_cmd, engine_refusal, stack_env
from rides import DROPOFF, PICKUP
from test_engine_death import FAR, Split, answers, engine_segment, online_driver, start_split, stop_split
from wsclient import AppClient

from sidecar.engine import ring

FAR_FROM_PICKUP = (38.5700, 68.7870)  # ~1.1 km: farther than the first driver
PICKUP_T, DROPOFF_T = (PICKUP["lat"], PICKUP["lon"]), (DROPOFF["lat"], DROPOFF["lon"])


@pytest.fixture
def state_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="dgdo-state-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def durable(engine_bin: Path, state_dir: str) -> Iterator[Split]:
    s = start_split(engine_bin, "--state-dir", state_dir, "--fsync", "batch")
    yield s
    stop_split(s)


async def ride_accepted(pax: AppClient, driver: AppClient) -> dict[str, Any]:
    """The passenger's ride request, offered to the driver and accepted: the passenger's update."""
    await pax.send({"type": "ride_request", "id": "r1", "pickup": PICKUP, "dropoff": DROPOFF})
    order_id = (await pax.expect("ack", id="r1"))["order_id"]
    await driver.expect("new_order", order_id=order_id)
    await driver.send({"type": "order_accept", "order_id": order_id, "id": "acc"})
    await driver.expect("ack", id="acc")
    return await pax.expect("order_update", order_id=order_id, status="accepted")


def kill_and_restart(s: Split, state_dir: str) -> None:
    """kill -9 of the engine, then the same engine on the same state dir (fsync batch), healthy again."""
    assert s.engine is not None
    s.engine.send_signal(signal.SIGKILL)
    s.engine.wait()
    s.wait_health(503)
    s.start_engine("--state-dir", state_dir, "--fsync", "batch")
    s.wait_health(200)


async def test_an_accepted_order_survives_kill_9_of_the_engine_with_its_id_and_driver(
    durable: Split, state_dir: str
) -> None:
    driver = await online_driver(durable.url, "d1")
    pax = await AppClient.open(f"{durable.url}/ws/passenger/p1")
    await pax.expect("welcome")
    order_id = (await ride_accepted(pax, driver))["order_id"]

    kill_and_restart(durable, state_dir)

    # The order is still there under its id, bound to its driver: the next step of the trip works.
    await driver.send({"type": "order_arrived", "order_id": order_id, "id": "arr"})
    await driver.expect("ack", id="arr")
    await pax.expect("order_update", order_id=order_id, status="arrived", driver_id="d1")

    # d1 keeps its trip: a new order goes to a farther free driver, never to d1, and gets a new id.
    d2 = await online_driver(durable.url, "d2")
    await d2.send({"type": "driver_location", "lat": FAR_FROM_PICKUP[0], "lon": FAR_FROM_PICKUP[1], "id": "far"})
    await d2.expect("ack", id="far")
    other = await AppClient.open(f"{durable.url}/ws/passenger/p2")
    await other.expect("welcome")
    await other.send({"type": "ride_request", "id": "r2", "pickup": PICKUP, "dropoff": DROPOFF})
    second = (await other.expect("ack", id="r2"))["order_id"]
    assert second == order_id + 1  # killed on the boot that wrote the journal: nothing lost, no id jump
    await d2.expect("new_order", order_id=second)
    assert not [m for m in driver.seen if m["type"] == "new_order" and m["order_id"] == second]

    # And the trip runs to its end.
    await driver.send({"type": "trip_start", "order_id": order_id, "id": "go"})
    await driver.expect("ack", id="go")
    await driver.send({"type": "trip_complete", "order_id": order_id, "id": "done"})
    await driver.expect("ack", id="done")
    await pax.expect("order_update", order_id=order_id, status="completed")
    for c in (driver, d2, pax, other):
        await c.close()


async def test_a_retried_ride_request_after_a_restart_is_still_the_same_order(durable: Split, state_dir: str) -> None:
    pax = await AppClient.open(f"{durable.url}/ws/passenger/p9")
    await pax.expect("welcome")
    # Not the first order: an engine that forgot everything would hand the retry the first id again.
    await pax.send({"type": "ride_request", "id": "first", "pickup": PICKUP, "dropoff": DROPOFF})
    first = (await pax.expect("ack", id="first"))["order_id"]
    await pax.send({"type": "ride_request", "id": "same", "pickup": PICKUP, "dropoff": DROPOFF})
    order_id = (await pax.expect("ack", id="same"))["order_id"]
    assert durable.engine is not None
    durable.engine.send_signal(signal.SIGKILL)
    durable.engine.wait()
    durable.wait_health(503)
    durable.start_engine("--state-dir", state_dir)
    durable.wait_health(200)
    await pax.send({"type": "ride_request", "id": "same", "pickup": PICKUP, "dropoff": DROPOFF})
    assert (await pax.expect("ack", id="same"))["order_id"] == order_id != first
    await pax.close()


def _mine(client: AppClient, order_id: int) -> list[tuple]:
    """The reliable messages a client received about one order, as comparable tuples."""
    got: list[tuple] = []
    for m in client.seen:
        if m.get("order_id") != order_id:
            continue
        if m["type"] == "order_update":
            got.append(("order_update", m["status"], m.get("reason", "")))
        elif m["type"] == "new_order":
            got.append(("new_order", m["distance_m"], m["eta_s"], m["expires_in_s"]))
        elif m["type"] == "cancel_order":
            got.append(("cancel_order", m["reason"]))
    return got


def replay_json(state_dir: str, order_id: int) -> list[dict]:
    """`dgdo replay --order N --json` over the state directory (offline: the engine may still run)."""
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "replay", "--state-dir", state_dir, "--order", str(order_id), "--json"],
        cwd=ROOT, env=stack_env(), capture_output=True, timeout=60, check=True,
    )
    return [json.loads(x) for x in out.stdout.decode().splitlines()]


def _replayed(lines: list[dict], to_id: str) -> list[tuple]:
    """The same, from `dgdo replay --json`, rounded as the sidecar rounds them."""
    got: list[tuple] = []
    for line in lines:
        for o in line["outputs"]:
            if o["to_id"] != to_id:
                continue
            if o["type"] == "order_update":
                got.append(("order_update", o["status"], o["reason"]))
            elif o["type"] == "new_order":
                got.append(("new_order", round(o["distance_m"], 1), round(o["eta_s"], 1), round(o["expires_in_s"], 3)))
            elif o["type"] == "cancel_order":
                got.append(("cancel_order", o["reason"]))
    return got


async def test_replay_explains_an_order_with_exactly_what_its_apps_received(durable: Split, state_dir: str) -> None:
    near = await online_driver(durable.url, "d1")  # ~600 m from the pickup
    far = await online_driver(durable.url, "d2")
    await far.send({"type": "driver_location", "lat": FAR_FROM_PICKUP[0], "lon": FAR_FROM_PICKUP[1], "id": "far"})
    await far.expect("ack", id="far")
    pax = await AppClient.open(f"{durable.url}/ws/passenger/p1")
    await pax.expect("welcome")
    await pax.send({"type": "ride_request", "id": "r1", "pickup": PICKUP, "dropoff": DROPOFF})
    order_id = (await pax.expect("ack", id="r1"))["order_id"]
    await near.expect("new_order", order_id=order_id)
    await near.send({"type": "order_reject", "order_id": order_id, "id": "no"})
    await near.expect("ack", id="no")
    await far.expect("new_order", order_id=order_id)
    for step, rid in (("order_accept", "a"), ("order_arrived", "b"), ("trip_start", "c"), ("trip_complete", "d")):
        await far.send({"type": step, "order_id": order_id, "id": rid})
        await far.expect("ack", id=rid)
    await pax.expect("order_update", order_id=order_id, status="completed")
    await far.expect("order_update", order_id=order_id, status="completed")

    # Offline, while the engine still runs: a look at the journal never changes it.
    lines = replay_json(state_dir, order_id)
    assert _replayed(lines, "p1") == _mine(pax, order_id)
    assert _replayed(lines, "d1") == _mine(near, order_id)
    assert _replayed(lines, "d2") == _mine(far, order_id)
    assert [s for s in _mine(pax, order_id) if s[0] == "order_update"][-1] == ("order_update", "completed", "")

    # And why: d1 was nearest and offered first; after its reject it was "tried before" and d2 was picked.
    searches = [s for line in lines for s in line["searches"]]
    assert [s["picked"] for s in searches] == ["d1", "d2"]
    second = {c["driver"]: c for c in searches[1]["candidates"]}
    assert second["d1"]["why_not"] == "tried before"
    assert second["d2"]["why_not"] is None
    assert second["d1"]["distance_m"] < second["d2"]["distance_m"]
    kinds = [(line["input"]["kind"], line["input"].get("command")) for line in lines]
    assert ("order_command", "reject") in kinds and ("order_command", "complete") in kinds

    text = subprocess.run(
        [sys.executable, "-m", "sidecar", "replay", "--state-dir", state_dir, "--order", str(order_id)],
        cwd=ROOT, env=stack_env(), capture_output=True, timeout=60, check=True,
    ).stdout.decode()
    assert "tried before" in text and "<- offered" in text and f"order {order_id} now: completed" in text
    for c in (near, far, pax):
        await c.close()


async def test_replay_explains_an_operator_cancel_of_a_started_trip(durable: Split, state_dir: str) -> None:
    """An admin's order_cancel is journaled like any input: `dgdo replay` shows who canceled, why, and
    what each app was told, exactly as they received it."""
    driver = await online_driver(durable.url, "d1")
    pax = await AppClient.open(f"{durable.url}/ws/passenger/p1")
    await pax.expect("welcome")
    order_id = (await ride_accepted(pax, driver))["order_id"]
    for step in ("order_arrived", "trip_start"):
        await driver.send({"type": step, "order_id": order_id, "id": step})
        await driver.expect("ack", id=step)
    await pax.expect("order_update", order_id=order_id, status="started")
    admin = await AppClient.open(f"{durable.url}/ws/admin")
    await admin.expect("welcome")
    await admin.send({"type": "order_cancel", "order_id": order_id, "reason": "driver unreachable", "id": "k"})
    await admin.expect("ack", id="k")
    await pax.expect("order_update", order_id=order_id, status="canceled")
    await driver.expect("cancel_order", order_id=order_id)

    lines = replay_json(state_dir, order_id)
    assert _replayed(lines, "p1") == _mine(pax, order_id)
    assert _replayed(lines, "d1") == _mine(driver, order_id)
    assert _mine(pax, order_id)[-1] == ("order_update", "canceled", "operator_canceled")
    (cancel,) = [line["input"] for line in lines if line["input"].get("command") == "cancel"]
    assert (cancel["role"], cancel["actor"], cancel["reason"]) == ("admin", "admin", "driver unreachable")
    text = subprocess.run(
        [sys.executable, "-m", "sidecar", "replay", "--state-dir", state_dir, "--order", str(order_id)],
        cwd=ROOT, env=stack_env(), capture_output=True, timeout=60, check=True,
    ).stdout.decode()
    assert 'cancel by admin admin on order' in text and '("driver unreachable")' in text
    assert "reason operator_canceled" in text and f"order {order_id} now: canceled" in text
    for c in (driver, pax, admin):
        await c.close()


async def test_a_command_the_journal_holds_sent_again_by_the_sidecar_gets_its_answer(
        engine_bin: Path, state_dir: str) -> None:
    """A command the dead engine journaled but never released from the ring (killed or crashed inside
    its batch, before its answer went out): the sidecar carries it to the next engine and keeps it
    pending; the next engine, which replayed it from the journal, skips it (it must not run twice)
    and must still answer it, with the answer the replay gave. The test plays the sidecar's link (a
    real EngineLink) and sends the very bytes again, as the salvage does."""
    import asyncio
    import time
    import uuid

    from conftest import engine_cmd

    from sidecar.engine import records as R
    from sidecar.engine.link import EngineLink

    instance = f"t{uuid.uuid4().hex[:8]}"
    control = f"@dgdo-test-{instance}"

    def start() -> subprocess.Popen[bytes]:
        engine = subprocess.Popen(engine_cmd(engine_bin, control, "--instance", instance, "--state-dir", state_dir),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert engine.stdout is not None and engine.stdout.readline().startswith(b"dgdo-engine ready")
        return engine

    loop = asyncio.get_running_loop()
    answers: dict[int, asyncio.Future[tuple[int, int]]] = {41: loop.create_future()}
    attached: asyncio.Queue[bool] = asyncio.Queue()

    def on_records(consumer: Any, n: int) -> None:
        for rec in consumer.records(n):
            if rec.type == R.T.OUT_COMMAND_RESULT:
                *_m, corr, order_id, status = R.OUT_COMMAND_RESULT.unpack_from(rec.body)
                fut = answers.get(corr)
                if fut is not None and not fut.done():
                    fut.set_result((status, order_id))

    engine = start()
    link = EngineLink(control, 1, on_records, on_state=attached.put_nowait, reply_spin_us=0)
    try:
        link.start()
        assert await asyncio.wait_for(attached.get(), 10)
        passenger = R.Origin(1, 1, R.Role.PASSENGER, b"p1".ljust(R.ID_SIZE, b"\0"))
        body = R.ride_request(passenger, time.monotonic_ns(), 41, 7, PICKUP_T, DROPOFF_T)
        link.publish(R.T.IN_RIDE_REQUEST, body)
        link.flush()
        status, order_id = await asyncio.wait_for(answers[41], 10)
        assert status == R.Result.OK and order_id > 0  # journaled (and answered: the test cannot unsend that)
        engine.send_signal(signal.SIGKILL)
        engine.wait()
        assert not await asyncio.wait_for(attached.get(), 10)
        engine = start()
        assert await asyncio.wait_for(attached.get(), 10)  # the link re-attached by itself
        answers[41] = loop.create_future()
        link.publish(R.T.IN_RIDE_REQUEST, body)  # what the salvage sends: the same bytes
        link.flush()
        assert await asyncio.wait_for(answers[41], 5) == (R.Result.OK, order_id)  # the same order, once
    finally:
        link.close()
        engine.terminate()
        engine.wait(10)


async def test_a_passengers_nearby_subscription_survives_kill_9_of_the_engine(durable: Split, state_dir: str) -> None:
    """The restarted engine closed the dead one's sessions (and so their subscriptions); the sidecar
    re-announces each session with its latest subscription, the very bytes the journal holds. Those
    are new inputs, not a salvage of what the dead engine never released: they must be applied."""
    pax = await AppClient.open(f"{durable.url}/ws/passenger/p1")
    await pax.expect("welcome")
    await pax.send({"type": "nearby_subscribe", **PICKUP, "radius_m": 3000, "id": "near"})
    await pax.expect("ack", id="near")
    await pax.expect("nearby_drivers")
    kill_and_restart(durable, state_dir)

    d2 = await online_driver(durable.url, "d2")  # after the restart: only the new engine can report it
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        m = await pax.expect("nearby_drivers", timeout=max(0.0, deadline - loop.time()))
        if [d["driver_id"] for d in m["drivers"]] == ["d2"]:
            break
    for c in (pax, d2):
        await c.close()


async def test_a_driver_back_with_last_seq_and_nothing_new_is_offered_rides_after_kill_9_of_the_engine(
        durable: Split, state_dir: str) -> None:
    """Its re-announced open carries what its first open carried (the same upgrade time, the same
    last_seq): the restarted engine must still take it, or the driver stays disconnected for it."""
    driver = await AppClient.open(f"{durable.url}/ws/driver/d1?last_seq=0")
    assert (await driver.expect("welcome"))["seq"] == 0
    await driver.send({"type": "driver_status", "status": "online", "id": "on"})
    await driver.expect("ack", id="on")
    await driver.send({"type": "driver_location", "lat": 38.5610, "lon": 68.7800, "id": "loc"})
    await driver.expect("ack", id="loc")
    kill_and_restart(durable, state_dir)

    pax = await AppClient.open(f"{durable.url}/ws/passenger/p1")
    await pax.expect("welcome")
    await pax.send({"type": "ride_request", "id": "r1", "pickup": PICKUP, "dropoff": DROPOFF})
    order_id = (await pax.expect("ack", id="r1"))["order_id"]
    await driver.expect("new_order", order_id=order_id)
    for c in (driver, pax):
        await c.close()


async def test_drivers_keep_their_offers_through_an_engine_outage_longer_than_the_grace(
        engine_bin: Path, state_dir: str) -> None:
    """The sidecar and its drivers stay up while the engine is down; their sessions died with the
    engine, so the restart puts the drivers in their grace period until the sidecar re-announces
    them. That grace must start when the engine is back, not at the time it recovered to: an
    outage longer than the grace (a watchdog kill takes WatchdogSec, 10 s, the default grace)
    otherwise took every offer from a driver that never left, as `driver_disconnected`."""
    grace_s = 2.0
    flags = ("--state-dir", state_dir, "--fsync", "batch", "--grace-s", str(grace_s), "--offer-timeout-s", "30")
    s = start_split(engine_bin, *flags)
    try:
        d1 = await online_driver(s.url, "d1")
        d2 = await online_driver(s.url, "d2", FAR)
        pax = await AppClient.open(f"{s.url}/ws/passenger/p1")
        await pax.expect("welcome")
        await pax.send({"type": "ride_request", "id": "r1", "pickup": PICKUP, "dropoff": DROPOFF})
        order_id = (await pax.expect("ack", id="r1"))["order_id"]
        await d1.expect("new_order", order_id=order_id)

        assert s.engine is not None
        s.engine.send_signal(signal.SIGKILL)
        s.engine.wait()
        s.wait_health(503)
        await asyncio.sleep(grace_s + 1.0)  # the outage itself: longer than the grace
        s.start_engine(*flags)
        s.wait_health(200)

        await d1.send({"type": "order_accept", "order_id": order_id, "id": "acc"})
        while (answer := await d1.recv()).get("id") != "acc":
            pass
        assert answer["type"] == "ack", f"{answer}; d1 saw {d1.seen}"
        await pax.expect("order_update", order_id=order_id, status="accepted", driver_id="d1")
        await d2.send({"type": "driver_location", **FAR, "id": "sync"})  # answered after all d2 was sent
        await d2.expect("ack", id="sync")
        assert not [m for m in d1.seen if m.get("type") == "cancel_order"], "the offer was withdrawn"
        assert not [m for m in d2.seen if m.get("type") == "new_order"], "the offer went to another driver"
        for c in (d1, d2, pax):
            await c.close()
    finally:
        stop_split(s)


class EngineRing:
    """The test's read-only look at one of the engine's rings of worker 1 ("in" or "out")."""

    def __init__(self, engine_pid: int, instance: str, which: str) -> None:
        self.seg = engine_segment(engine_pid, instance, which)
        self.map = self.seg._map

    def depth(self) -> int:
        tail = int.from_bytes(self.map[ring.lib.DGDO_RING_TAIL_OFFSET :][:8], "little")
        head = int.from_bytes(self.map[ring.lib.DGDO_RING_HEAD_OFFSET :][:8], "little")
        return tail - head

    def wait(self, what: str, done: Callable[[], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"never {what}"
            time.sleep(0.001)  # another process's shared memory: nothing to await but its bytes

    def close(self) -> None:
        self.seg.close()


def _kill(s: Split, rings: list[EngineRing]) -> None:
    """kill -9 of the engine, once the test's own views of its rings are closed."""
    for r in rings:
        r.close()
    rings.clear()
    assert s.engine is not None
    s.engine.send_signal(signal.SIGKILL)
    s.engine.wait()


def _restart(s: Split, *flags: str) -> None:
    """The next engine, once the sidecar has seen the last one gone, and until the sidecar has attached."""
    s.wait_health(503)
    s.start_engine(*flags)
    s.wait_health(200)


async def test_commands_the_engine_took_but_had_not_answered_when_killed_get_their_answer_not_a_retry(
        engine_bin: Path, state_dir: str) -> None:
    """An engine killed after it journaled and applied commands but before their answers were in the
    out ring: the sidecar must not tell those apps engine_unavailable ("retry"), for the journal holds
    the commands and the next engine has them; a retry under a new id would be a second order.

    Made deterministic with a full out ring: the sidecar is stopped while the engine takes a batch of
    ride requests, so only the first answers fit the ring (4 KiB here) and the rest wait in the engine
    when it is killed. Every request must then get one ack, with an order of its own.
    """
    s = start_split(engine_bin, "--state-dir", state_dir, "--fsync", "batch", "--ring-capacity", "4096")
    rings: list[EngineRing] = []
    try:
        # 30 requests (112 bytes each) fit the 4 KiB in ring at once; their answers (an ack and an
        # order_update each) do not fit the out ring.
        passengers = [await AppClient.open(f"{s.url}/ws/passenger/ra{i}") for i in range(30)]
        for p in passengers:
            await p.expect("welcome")
        assert s.engine is not None
        in_ring = EngineRing(s.engine.pid, s.instance, "in")
        out_ring = EngineRing(s.engine.pid, s.instance, "out")
        rings += [in_ring, out_ring]
        s.engine.send_signal(signal.SIGSTOP)
        before = in_ring.depth()
        for i, p in enumerate(passengers):
            await p.send({"type": "ride_request", "id": f"r{i}", "pickup": PICKUP, "dropoff": DROPOFF})
        request = ring.aligned(ring.RECORD_HEADER + ring.sizeof("dgdo_in_ride_request"))
        await asyncio.to_thread(in_ring.wait, "all requests in the ring",
                                lambda: in_ring.depth() >= before + len(passengers) * request)
        s.sidecar.send_signal(signal.SIGSTOP)  # it reads no answer now: the out ring fills
        try:
            s.engine.send_signal(signal.SIGCONT)
            capacity = 4096
            await asyncio.to_thread(out_ring.wait, "a full out ring", lambda: out_ring.depth() > capacity - 512)
            # The engine's next heartbeat comes from its loop after the batch that filled the ring.
            beat = out_ring.seg.producer_heartbeat_ns()
            await asyncio.to_thread(out_ring.wait, "a heartbeat after the batch",
                                    lambda: out_ring.seg.producer_heartbeat_ns() != beat)
            _kill(s, rings)
        finally:
            s.sidecar.send_signal(signal.SIGCONT)
        _restart(s, "--state-dir", state_dir, "--fsync", "batch", "--ring-capacity", "4096")
        order_ids = []
        for i, p in enumerate(passengers):
            got = (await answers(p, [f"r{i}"]))[f"r{i}"]
            assert [m["type"] for m in got] == ["ack"], got
            order_ids.append(got[0]["order_id"])
        assert len(set(order_ids)) == len(passengers)  # one order each, none twice
        for p in passengers:
            await p.close()
    finally:
        for r in rings:
            r.close()
        stop_split(s)


async def test_a_snapshot_waits_for_a_held_batch_so_its_commands_run_once_after_a_kill(
        engine_bin: Path, state_dir: str) -> None:
    """A batch held behind a full out ring is applied but still in its ring: after a kill -9 the sidecar
    sends it again, and the next engine recognises a command sent again only among the records it replays
    after its snapshot. A snapshot taken while the batch was held covered it, and the next engine applied
    those cancels a second time, answering `conflict` to apps whose cancel had worked. With snapshots due
    every 0.2 s, the engine is kept holding for 0.6 s of its own clock before the kill: every cancel must
    get one ack."""
    flags = ("--state-dir", state_dir, "--fsync", "batch", "--ring-capacity", "4096", "--snapshot-every-s", "0.2")
    s = start_split(engine_bin, *flags)
    rings: list[EngineRing] = []
    try:
        passengers = [await AppClient.open(f"{s.url}/ws/passenger/hs{i}") for i in range(20)]
        orders = []
        for i, p in enumerate(passengers):
            await p.expect("welcome")
            await p.send({"type": "ride_request", "id": f"r{i}", "pickup": PICKUP, "dropoff": DROPOFF})
            orders.append((await p.expect("ack", id=f"r{i}"))["order_id"])
        assert s.engine is not None
        in_ring = EngineRing(s.engine.pid, s.instance, "in")
        out_ring = EngineRing(s.engine.pid, s.instance, "out")
        rings += [in_ring, out_ring]
        s.engine.send_signal(signal.SIGSTOP)
        before = in_ring.depth()
        for i, p in enumerate(passengers):
            await p.send({"type": "order_cancel", "order_id": orders[i], "id": f"c{i}"})
        command = ring.aligned(ring.RECORD_HEADER + ring.sizeof("dgdo_in_order_command"))
        await asyncio.to_thread(in_ring.wait, "all cancels in the ring",
                                lambda: in_ring.depth() >= before + len(passengers) * command)
        s.sidecar.send_signal(signal.SIGSTOP)  # it reads no answer now: the out ring fills, the batch is held
        try:
            s.engine.send_signal(signal.SIGCONT)
            await asyncio.to_thread(out_ring.wait, "a full out ring", lambda: out_ring.depth() > 4096 - 512)
            full_at = time.monotonic_ns()  # (CLOCK_MONOTONIC, the engine's heartbeat clock)
            await asyncio.to_thread(out_ring.wait, "0.6 s of the engine's heartbeats: three snapshots due",
                                    lambda: out_ring.seg.producer_heartbeat_ns() > full_at + 600_000_000)
            assert in_ring.depth() > 0  # still held
            _kill(s, rings)
        finally:
            s.sidecar.send_signal(signal.SIGCONT)
        _restart(s, *flags)
        for i, p in enumerate(passengers):
            got = (await answers(p, [f"c{i}"]))[f"c{i}"]
            assert [m["type"] for m in got] == ["ack"], got
        for p in passengers:
            await p.close()
    finally:
        for r in rings:
            r.close()
        stop_split(s)


def _journal_files(state_dir: str) -> dict[str, bytes]:
    d = Path(state_dir) / "journal"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _record_offsets(segment: bytes) -> list[int]:
    """Where each record of a journal segment starts (store/journal.hpp: a 32-byte header, then
    records of {u32 length, u32 crc, u64 index, i32 type, 4 zero bytes, payload}, 8-byte aligned)."""
    offs, off = [], 32
    while off + 24 <= len(segment):
        length = int.from_bytes(segment[off : off + 4], "little")
        if length < 24:
            break
        offs.append(off)
        off += (length + 7) & ~7
    return offs


async def test_a_torn_journal_tail_is_cut_but_damage_before_it_refuses_the_start_and_keeps_every_byte(
        durable: Split, state_dir: str) -> None:
    """Only the end of the last segment may be torn by a crash: that is cut and the engine starts. A
    bad record with good ones after it is damage: the engine must not cut there (the records after it
    hold acknowledged orders). It refuses to start, names the file and byte, and changes nothing."""
    pax = await AppClient.open(f"{durable.url}/ws/passenger/jd")
    await pax.expect("welcome")
    orders = {}
    for i in range(6):  # an order, then its cancel: the passenger may ask again
        await pax.send({"type": "ride_request", "id": f"r{i}", "pickup": PICKUP, "dropoff": DROPOFF})
        orders[f"r{i}"] = (await pax.expect("ack", id=f"r{i}"))["order_id"]
        if i < 5:
            await pax.send({"type": "order_cancel", "order_id": orders[f"r{i}"], "id": f"c{i}"})
            await pax.expect("ack", id=f"c{i}")
    other = await AppClient.open(f"{durable.url}/ws/passenger/jd2")  # journaled after r5: r5 is not the last
    await other.expect("welcome")
    await other.send({"type": "ride_request", "id": "x", "pickup": PICKUP, "dropoff": DROPOFF})
    await other.expect("ack", id="x")
    await other.close()
    assert durable.engine is not None
    durable.engine.send_signal(signal.SIGKILL)
    durable.engine.wait()
    durable.wait_health(503)

    journal = Path(state_dir) / "journal"
    files = _journal_files(state_dir)
    last = sorted(files)[-1]
    offsets = _record_offsets(files[last])
    # The inputs above make at least 14 records (2 opens, 7 requests, 5 cancels), ticks more or
    # fewer as the machine runs: the one in the middle has several good ones after it.
    assert len(offsets) >= 10
    bad = offsets[len(offsets) // 2]
    damaged = bytearray(files[last])
    damaged[bad + 16] ^= 1  # its type: the checksum no longer holds
    (journal / last).write_bytes(damaged)
    before = {**_journal_files(state_dir)}
    snapshots = {p.name: p.read_bytes() for p in (Path(state_dir) / "snapshots").iterdir()}

    err = engine_refusal(
        engine_cmd(durable.engine_bin, durable.control, "--instance", durable.instance, "--state-dir", state_dir))
    assert f"journal damaged: {journal / last}: bad record at byte {bad} (checksum)" in err, err
    assert "refusing to start" in err
    assert _journal_files(state_dir) == before  # every segment, byte for byte
    assert {p.name: p.read_bytes() for p in (Path(state_dir) / "snapshots").iterdir()} == snapshots

    # The same journal with its last record torn instead (a write cut by the crash): cut, and started.
    torn = bytearray(files[last][: offsets[-1] + 5])
    (journal / last).write_bytes(torn)
    durable.start_engine("--state-dir", state_dir, "--fsync", "batch")
    durable.wait_health(200)
    # What came before the torn record is all there: a retry of r5 gets the same order.
    await pax.send({"type": "ride_request", "id": "r5", "pickup": PICKUP, "dropoff": DROPOFF})
    assert (await pax.expect("ack", id="r5"))["order_id"] == orders["r5"]
    await pax.close()


async def test_a_connection_opened_while_the_engine_was_stopped_gets_one_welcome_and_one_snapshot(
        durable: Split, state_dir: str) -> None:
    """Its open waits in the ring when the engine is killed: the sidecar carries it over to the next
    engine and then re-announces the session as well. The app must get its welcome and its snapshot
    once, not once per announcement."""
    first = await AppClient.open(f"{durable.url}/ws/passenger/p7")
    await first.expect("welcome")
    await first.send({"type": "ride_request", "id": "r", "pickup": PICKUP, "dropoff": DROPOFF})
    order_id = (await first.expect("ack", id="r"))["order_id"]
    await first.close()
    assert durable.engine is not None
    in_ring = EngineRing(durable.engine.pid, durable.instance, "in")
    try:
        durable.engine.send_signal(signal.SIGSTOP)
        before = in_ring.depth()
        second = await AppClient.open(f"{durable.url}/ws/passenger/p7")  # no welcome while stopped
        await asyncio.to_thread(in_ring.wait, "its open in the ring", lambda: in_ring.depth() > before)
    finally:
        in_ring.close()
    durable.engine.send_signal(signal.SIGKILL)
    durable.engine.wait()
    durable.wait_health(503)
    durable.start_engine("--state-dir", state_dir, "--fsync", "batch")
    await second.expect("welcome", timeout=15)
    # A command after the welcome: the engine answers it after all it sent for both announcements.
    await second.send({"type": "nearby_subscribe", **PICKUP, "radius_m": 1000, "id": "mark"})
    await second.expect("ack", id="mark")
    assert [m["type"] for m in second.seen].count("welcome") == 1
    snapshot = [m for m in second.seen if m["type"] == "order_update" and m["order_id"] == order_id]
    assert [m["status"] for m in snapshot] == ["searching"], snapshot
    await second.close()


RECOVERY_GAP = 2**32  # engine/src/core/core.hpp kRecoveryGap: what ids and seqs jump by at each recovery


async def test_after_a_lost_journal_tail_no_order_id_is_reused_and_a_last_seq_from_it_gets_a_snapshot(
        engine_bin: Path, state_dir: str) -> None:
    """A power loss under --fsync interval (the default) or never: the engine dies, and what the page
    cache held of its journal (the last writes, not yet synced) is gone with it. The test kills the
    engine (-9), cuts the journal back to a length it had earlier, as the disk would hold it, and
    makes the state directory's boot file name another boot, as after the power came back. The
    lost tail handed out an order id and p1's seqs 3 and 4: the restarted engine must hand out neither
    again, and p1, back with last_seq 4, gets a snapshot of the state it rolled back to."""
    s = start_split(engine_bin, "--state-dir", state_dir)  # --fsync interval
    try:
        driver = await online_driver(s.url, "d1")
        pax = await AppClient.open(f"{s.url}/ws/passenger/p1")
        await pax.expect("welcome")
        accepted = await ride_accepted(pax, driver)
        first = accepted["order_id"]
        assert accepted["seq"] == 2
        # What the disk holds when the power goes: everything up to here (journaled before it was sent).
        segment = sorted(Path(state_dir, "journal").glob("*.dgj"))[-1]
        on_disk = segment.stat().st_size

        await driver.send({"type": "order_arrived", "order_id": first, "id": "arr"})
        await driver.expect("ack", id="arr")
        assert (await pax.expect("order_update", order_id=first, status="arrived"))["seq"] == 3
        await pax.send({"type": "ride_request", "id": "r2", "pickup": PICKUP, "dropoff": DROPOFF})
        lost = (await pax.expect("ack", id="r2"))["order_id"]
        assert (await pax.expect("order_update", order_id=lost, status="searching"))["seq"] == 4
        await pax.close()

        assert s.engine is not None
        s.engine.send_signal(signal.SIGKILL)
        s.engine.wait()
        s.wait_health(503)
        assert len(sorted(Path(state_dir, "journal").glob("*.dgj"))) == 1  # no rotation: one file to cut
        with open(segment, "r+b") as f:
            f.truncate(on_disk)
        # And the machine came back as a new boot: the state directory names the one that wrote it.
        Path(state_dir, "boot").write_text("the-boot-that-lost-the-power\n")
        s.start_engine("--state-dir", state_dir)
        s.wait_health(200)

        # p1 processed 3 and 4, which the engine no longer knows: not a resume from 4 (that would
        # replay nothing and leave p1 with an order that does not exist and a trip that has not
        # arrived) but a snapshot of the recovered state, numbered above anything handed out.
        # (d1's sidecar re-announces its position to the restarted engine: the first one after its
        # accept, so the recovered trip may have moved on to `arriving` (p1's seq 2 + gap + 1).)
        back = await AppClient.open(f"{s.url}/ws/passenger/p1?last_seq=4")
        welcome = await back.expect("welcome")
        assert welcome["resumed"] is False
        assert 2 + RECOVERY_GAP <= welcome["seq"] <= 3 + RECOVERY_GAP
        snap = await back.expect("order_update", order_id=first)
        assert snap["seq"] == welcome["seq"] + 1
        assert snap["status"] == ("accepted" if welcome["seq"] == 2 + RECOVERY_GAP else "arriving")  # not arrived
        assert not [m for m in back.seen if m.get("order_id") == lost]  # the lost order does not exist

        # A new order gets an id the lost tail never handed out.
        await back.send({"type": "ride_request", "id": "r3", "pickup": PICKUP, "dropoff": DROPOFF})
        fresh = (await back.expect("ack", id="r3"))["order_id"]
        assert fresh not in (first, lost) and fresh > lost
        assert fresh == lost + RECOVERY_GAP  # the lost tail had taken one id after `first`
        for c in (driver, back):
            await c.close()
    finally:
        stop_split(s)


async def test_a_restarted_engine_replays_the_ts_the_live_message_carried(durable: Split, state_dir: str) -> None:
    d = await online_driver(durable.url, "d1")
    p = await AppClient.open(f"{durable.url}/ws/passenger/p1")
    await p.expect("welcome")
    live = await ride_accepted(p, d)
    await p.close()
    # The engine journals when a batch went out ahead of its next input: the ack of this later command
    # comes once that is on disk (fsync batch).
    await d.send({"type": "driver_status", "status": "online", "id": "later"})  # (a position would be news)
    await d.expect("ack", id="later")

    kill_and_restart(durable, state_dir)

    back = await AppClient.open(f"{durable.url}/ws/passenger/p1?last_seq={live['seq'] - 1}")
    welcome = await back.expect("welcome")
    assert welcome["resumed"] is True and welcome["ts"] > live["ts"]
    replayed = await back.expect("order_update", order_id=live["order_id"], status="accepted")
    assert (replayed["seq"], replayed["ts"]) == (live["seq"], live["ts"])
    # The sidecar told the new engine where d1 is: its trip is `arriving` now, sent after the restart.
    arriving = await back.expect("order_update", order_id=live["order_id"], status="arriving")
    await back.close()
    fresh = await AppClient.open(f"{durable.url}/ws/passenger/p1")
    await fresh.expect("welcome")
    snap = await fresh.expect("order_update", order_id=live["order_id"], status="arriving")
    assert snap["seq"] > arriving["seq"] and snap["ts"] == arriving["ts"]
    await fresh.close()
    await d.close()
