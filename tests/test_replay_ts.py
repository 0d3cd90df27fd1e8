"""A replayed or snapshot message says when its change happened, not when it was sent again: the
real engine, a real sidecar and `websockets` clients.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stack
from rides import NEAR, accept, online_driver, passenger, request_ride
from test_engine_death import Split, start_split, stop_split
from test_engine_death import online_driver as online_driver_at
from test_engine_recovery import kill_and_restart, ride_accepted
from wsclient import AppClient


async def test_a_resumed_or_snapshot_accepted_carries_the_ts_it_had_live(stack: Stack) -> None:
    d = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack, "p1")
    order = await request_ride(p)
    await d.expect("new_order", order_id=order)
    live = await accept(d, order, p)
    await p.close()
    # A real gap, not a synchronisation: what is sent again comes more than a millisecond later.
    await asyncio.sleep(1.1)

    back = await AppClient.open(f"{stack.url}/ws/passenger/p1?last_seq={live['seq'] - 1}")
    welcome = await back.expect("welcome")
    assert welcome["resumed"] is True and welcome["ts"] > live["ts"]
    replayed = await back.expect("order_update", order_id=order, status="accepted")
    assert replayed["seq"] == live["seq"]
    assert replayed["ts"] == live["ts"]
    await back.close()

    fresh = await AppClient.open(f"{stack.url}/ws/passenger/p1")
    welcome = await fresh.expect("welcome")
    assert welcome["resumed"] is False
    snap = await fresh.expect("order_update", order_id=order, status="accepted")
    assert snap["seq"] > live["seq"]
    assert snap["ts"] == live["ts"]
    await fresh.close()
    await d.close()


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


async def test_a_restarted_engine_replays_the_ts_the_live_message_carried(durable: Split, state_dir: str) -> None:
    d = await online_driver_at(durable.url, "d1")
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
