"""The idle strategy (sidecar/engine/idle.py): polls after work for its budget, restarts on work, then parks once."""

from __future__ import annotations

import asyncio
import time

from sidecar.engine.idle import IdleStrategy, default_spin_us


async def test_a_zero_budget_never_polls() -> None:
    calls: list[str] = []
    s = IdleStrategy(0, lambda: calls.append("poll") or False, lambda: calls.append("park"))
    s.worked()
    await asyncio.sleep(0.01)
    assert calls == [] and not s.enabled


async def test_polls_for_the_budget_after_work_then_parks_once() -> None:
    parked = asyncio.Event()
    events: list[str] = []
    s = IdleStrategy(2000, lambda: False, lambda: (events.append("park"), parked.set()),
                     unpark=lambda: events.append("unpark"))
    t0 = time.perf_counter()
    s.worked()
    s.worked()  # already polling: no second unpark, no second poller
    await asyncio.wait_for(parked.wait(), 1)
    assert time.perf_counter() - t0 >= 0.002
    assert events == ["unpark", "park"]
    assert s.polls > 1 and s.wins == 0


async def test_work_found_while_polling_is_done_and_restarts_the_budget() -> None:
    parked = asyncio.Event()
    found = iter([False, True, False, True])
    s = IdleStrategy(1000, lambda: next(found, False), parked.set)
    s.worked()
    await asyncio.wait_for(parked.wait(), 1)
    assert s.wins == 2


async def test_sockets_are_served_while_polling() -> None:
    # One poll per loop turn: other callbacks run in between.
    parked = asyncio.Event()
    s = IdleStrategy(20_000, lambda: False, parked.set)
    s.worked()
    ran = asyncio.Event()
    asyncio.get_running_loop().call_soon(ran.set)
    await asyncio.wait_for(ran.wait(), 0.005)
    assert not parked.is_set()
    await asyncio.wait_for(parked.wait(), 1)


def test_the_default_budget_depends_on_the_cores() -> None:
    assert default_spin_us(1) == default_spin_us(2) == 0
    assert default_spin_us(8) > 0
