"""Reliable delivery end to end: seq and history live in the engine, so a client resumes through any
sidecar, a restarted one included, and misses nothing — the real engine, real sidecar processes and
`websockets` clients.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, LineReader, Stack, stack_env, start_stack
from rides import DROPOFF, NEAR, PICKUP, accept, accepted_ride, passenger, request_ride
from test_engine_death import Split, start_split, stop_split
from wsclient import AppClient

RELIABLE = ("order_update", "new_order", "cancel_order")


def reliable_seqs(*sessions: AppClient) -> list[int]:
    """The seqs of every reliable message the app received, over its sessions in order."""
    return [m["seq"] for s in sessions for m in s.seen if m["type"] in RELIABLE]


async def drive(driver: AppClient, order_id: int, *steps: str) -> None:
    for step in steps:
        await driver.send({"type": step, "order_id": order_id, "id": step})
        await driver.expect("ack", id=step)


# ---- a passenger away while its order completes -------------------------------------------------


async def test_a_passenger_offline_while_its_order_completes_resumes_and_gets_the_completed(stack: Stack) -> None:
    d, p, order, accepted = await accepted_ride(stack)
    await p.close()  # into a tunnel
    await drive(d, order, "order_arrived", "trip_start", "trip_complete")

    back = await AppClient.open(f"{stack.url}/ws/passenger/p1?last_seq={accepted['seq']}")
    welcome = await back.expect("welcome")
    assert welcome["resumed"] is True and welcome["seq"] == accepted["seq"] + 3
    missed = [await back.expect("order_update", order_id=order) for _ in range(3)]
    assert [m["status"] for m in missed] == ["arrived", "started", "completed"]
    assert reliable_seqs(p, back) == list(range(1, accepted["seq"] + 4))  # 1, 2, ... with no gap
    await back.close()
    await d.close()


async def test_when_the_history_no_longer_holds_them_the_snapshot_still_brings_the_completed() -> None:
    s = start_stack("--history-depth", "2")
    try:
        d, p, order, accepted = await accepted_ride(s)
        await p.close()
        await drive(d, order, "order_arrived", "trip_start", "trip_complete")  # 3 > 2: arrived is gone

        back = await AppClient.open(f"{s.url}/ws/passenger/p1?last_seq={accepted['seq']}")
        welcome = await back.expect("welcome")
        assert welcome["resumed"] is False and welcome["seq"] == accepted["seq"] + 3
        done = await back.expect("order_update", order_id=order)
        assert (done["status"], done["driver_id"], done["seq"]) == ("completed", "d1", welcome["seq"] + 1)
        await back.close()
        await d.close()
    finally:
        assert s.stop() == 0


# ---- request ids ----------------------------------------------------------------------------------


async def test_a_ride_request_id_names_one_live_ride_and_is_free_again_once_it_ended(stack: Stack) -> None:
    p = await passenger(stack, "p1")
    first = await request_ride(p, rid="r1")
    elsewhere = {"lat": PICKUP["lat"] + 0.01, "lon": PICKUP["lon"]}
    await p.send({"type": "ride_request", "id": "r1", "pickup": elsewhere, "dropoff": DROPOFF})
    err = await p.expect("error", id="r1")
    assert err["code"] == "conflict" and "different ride" in err["message"] and "order_id" not in err
    await p.send({"type": "order_cancel", "order_id": first, "id": "c1"})
    await p.expect("order_update", order_id=first, status="canceled")
    await p.close()

    # The app restarts and counts its ids from r1 again: a new order, never the finished one.
    again = await passenger(stack, "p1")
    second = await request_ride(again, pickup=elsewhere, rid="r1")
    assert second != first
    await again.close()


# ---- the sidecar dies; the engine lives on ----------------------------------------------------------


def start_sidecar(control: str) -> tuple[subprocess.Popen[bytes], LineReader, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "sidecar", "--control", control, "--port", "0", "--status-interval", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=stack_env(),
    )
    out = LineReader(proc.stdout)
    return proc, out, int(out.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)").group(1))


@pytest.fixture
def split(engine_bin: Path) -> Iterator[Split]:
    s = start_split(engine_bin)
    yield s
    stop_split(s)


async def wait_closed(c: AppClient) -> None:
    """Reads until the server side is gone (a killed sidecar: the kernel closes its sockets)."""
    from websockets.exceptions import ConnectionClosed

    with pytest.raises(ConnectionClosed):
        while True:
            await c.recv(timeout=10)


async def test_kill_9_of_the_sidecar_loses_no_reliable_message_even_one_sent_while_the_app_was_away(
        split: Split) -> None:
    d = await AppClient.open(f"{split.url}/ws/driver/d1")
    await d.expect("welcome")
    await d.send({"type": "driver_location", "lat": NEAR[0], "lon": NEAR[1], "id": "l0"})
    await d.expect("ack", id="l0")
    await d.send({"type": "driver_status", "status": "online", "id": "s0"})
    await d.expect("ack", id="s0")
    p = await AppClient.open(f"{split.url}/ws/passenger/p1")
    await p.expect("welcome")
    order = await request_ride(p)
    await d.expect("new_order", order_id=order)
    await accept(d, order, p)
    await drive(d, order, "order_arrived")
    await p.expect("order_update", order_id=order, status="arrived")

    split.sidecar.send_signal(signal.SIGKILL)
    split.sidecar.wait()
    await wait_closed(p)
    await wait_closed(d)
    # A fresh sidecar process: it knows nothing of these apps; the engine does.
    split.sidecar, split.out, split.port = start_sidecar(split.control)
    split.wait_health(200)

    def last(seen: list[dict[str, Any]]) -> int:
        return max(m["seq"] for m in seen if m["type"] in RELIABLE)

    d2 = await AppClient.open(f"{split.url}/ws/driver/d1?last_seq={last(d.seen)}")
    assert (await d2.expect("welcome"))["resumed"] is True
    await drive(d2, order, "trip_start", "trip_complete")  # the passenger is away: both are for later
    p2 = await AppClient.open(f"{split.url}/ws/passenger/p1?last_seq={last(p.seen)}")
    welcome = await p2.expect("welcome")
    assert welcome["resumed"] is True
    assert (await p2.expect("order_update", order_id=order, status="completed"))["driver_id"] == "d1"

    statuses = [m["status"] for s in (p, p2) for m in s.seen if m["type"] == "order_update"]
    assert statuses == ["searching", "accepted", "arrived", "started", "completed"]
    assert reliable_seqs(p, p2) == list(range(1, 6))
    await d2.expect("order_update", order_id=order, status="completed")
    assert reliable_seqs(d, d2) == list(range(1, 6))  # offer, accepted, arrived, started, completed
    await p2.close()
    await d2.close()


# ---- the engine is away: the welcome waits for it ------------------------------------------------------


async def test_a_client_connecting_while_the_engine_is_down_is_welcomed_when_it_is_back_and_only_once(
        split: Split) -> None:
    early = await AppClient.open(f"{split.url}/ws/passenger/early")
    assert (await early.expect("welcome"))["seq"] == 0
    assert split.engine is not None
    split.engine.send_signal(signal.SIGKILL)
    split.engine.wait()
    split.wait_health(503)

    late = await AppClient.open(f"{split.url}/ws/passenger/late")
    await late.send({"type": "ping", "id": "k"})
    assert (await late.recv())["type"] == "pong"  # accepted, answered locally, but no welcome yet

    split.start_engine()
    welcome = await late.expect("welcome", timeout=15)
    assert (welcome["id"], welcome["resumed"]) == ("late", False)
    for c in (early, late):  # the engine's answer comes after its SESSION_STATE: any welcome is in by then
        order = await request_ride(c, rid=f"after-{id(c)}")
        assert order > 0
    assert [m["type"] for m in early.seen].count("welcome") == 1  # the re-announce sent no second one
    assert [m["type"] for m in late.seen].count("welcome") == 1
    assert late.seen[0]["type"] == "pong" and late.seen[1]["type"] == "welcome"
    await early.close()
    await late.close()
