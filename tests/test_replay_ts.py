"""A replayed or snapshot message says when its change happened, not when it was sent again: the
real engine, a real sidecar and `websockets` clients. (After an engine restart too:
test_engine_recovery.py.)
"""

from __future__ import annotations

import asyncio

from conftest import Stack
from rides import accepted_ride
from wsclient import AppClient


async def test_a_resumed_or_snapshot_accepted_carries_the_ts_it_had_live(stack: Stack) -> None:
    d, p, order, live = await accepted_ride(stack)
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
