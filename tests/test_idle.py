"""The idle strategy (sidecar/engine/idle.py): polls after work for its budget, restarts on work, then parks once."""

from __future__ import annotations

import asyncio
import time

from sidecar.engine.idle import IdleStrategy, ReplyBudget, default_spin_us


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


def test_the_reply_budget_starts_at_the_cap_and_follows_recent_answers_within_floor_and_cap() -> None:
    b = ReplyBudget(250, window=64, floor_us=10)
    assert b.budget_ns == 250_000  # nothing seen yet: the operator's budget
    for _ in range(64):
        b.observe(40_000)  # an awake engine: answers in 40 µs
    assert b.budget_ns == 50_000  # the 90th percentile and a quarter more
    for _ in range(64):
        b.observe(2_000)
    assert b.budget_ns == 10_000  # never below the floor
    for _ in range(64):
        b.observe(240_000)  # a slower engine: never more than the cap
    assert b.budget_ns == 250_000
    for _ in range(64):
        b.observe(900_000)  # answers beyond the cap (an fsync per batch): a spin would miss them all
    assert b.budget_ns == 10_000


def test_a_few_slow_answers_lengthen_the_budget_to_catch_nine_in_ten() -> None:
    b = ReplyBudget(250, window=64)
    for _ in range(64):
        b.observe(30_000)
    for _ in range(8):  # one in eight answers now needs a woken engine: 120 µs
        b.observe(120_000)
    assert b.budget_ns == 150_000
    for _ in range(64):  # and once they are gone, the budget shrinks back
        b.observe(30_000)
    assert b.budget_ns == 37_500


def test_a_zero_cap_never_spins() -> None:
    b = ReplyBudget(0)
    b.observe(50_000)
    assert b.budget_ns == 0
