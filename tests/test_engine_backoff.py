"""`dgdo run` restarts a dead engine: at once after a run of STABLE_S or more (a crash in service:
every second without dispatch counts), after a back-off doubled up to MAX_BACKOFF_S while it keeps
dying soon after its start (a crash loop: a failing disk, a bad flag), so a loop costs a restart
every few seconds, not one a second forever. The same policy as the workers' (test_workers_backoff.py).
Driven with a fake clock, a fake sleep and fake process ends: no process, no real waiting.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.shell import workers
from sidecar.shell.cli import EngineSupervisor


class FakeEngine(EngineSupervisor):
    """Spawns nothing: the test says when each 'engine' exits and how long it ran."""

    def __init__(self) -> None:  # (no command line: nothing is run)
        self.proc = None
        self.restarts = 0
        self.now = 1000.0
        self.clock = lambda: self.now
        self.started = self.now
        self.delays: list[float] = []
        self.ends: asyncio.Queue[float] = asyncio.Queue()  # seconds each engine ran before it died
        self.spawned = asyncio.Event()
        self.failed_starts = 0  # starts that fail (no ready line) before one succeeds

    def spawn(self) -> Any:
        return object()

    def ready(self, proc: Any) -> None:
        if self.failed_starts:
            self.failed_starts -= 1
            raise RuntimeError("engine failed to start (status 1)")
        self.proc = proc
        self.started = self.clock()
        self.spawned.set()

    async def sleep(self, s: float) -> None:
        self.delays.append(s)

    async def exited(self, _proc: Any) -> int:  # type: ignore[override]
        self.now += await self.ends.get()
        return 1


async def run_lives(e: FakeEngine, lives: list[float], failed_starts: int = 0) -> list[float]:
    """The engine dies after each of `lives` seconds (its first restart's first `failed_starts`
    starts fail); returns every back-off waited."""
    e.ready(e.spawn())
    e.failed_starts = failed_starts
    stop = asyncio.Event()
    task = asyncio.create_task(e.watch(stop))
    for ran in lives:
        e.spawned.clear()
        await e.ends.put(ran)
        restarted = asyncio.create_task(e.spawned.wait())
        await asyncio.wait({restarted, task}, return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), task.exception()
    stop.set()
    await e.ends.put(0.0)
    await task
    return e.delays


async def test_an_engine_that_ran_a_while_is_restarted_at_once() -> None:
    e = FakeEngine()
    assert await run_lives(e, [workers.STABLE_S, 3600.0]) == []
    assert e.restarts == 2


async def test_an_engine_that_keeps_dying_soon_after_its_start_waits_longer_each_time_up_to_the_cap() -> None:
    delays = await run_lives(FakeEngine(), [1.0] * 7)
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, workers.MAX_BACKOFF_S, workers.MAX_BACKOFF_S]


async def test_a_run_of_stable_s_ends_the_crash_loop_back_off() -> None:
    delays = await run_lives(FakeEngine(), [1.0] * 4 + [workers.STABLE_S] + [1.0])
    assert delays == [0.2, 0.4, 0.8, 1.6, 0.2]


async def test_starts_that_fail_back_off_too() -> None:
    delays = await run_lives(FakeEngine(), [workers.STABLE_S], failed_starts=3)
    assert delays == [0.2, 0.4, 0.8]
