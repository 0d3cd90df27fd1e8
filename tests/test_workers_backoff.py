"""`dgdo run --workers N` restarts a dead worker after a back-off: doubled while it keeps dying at
once, back to the first step once it has run a while (as the engine supervisor does after a
successful start). Driven with a fake clock, a fake sleep and fake process ends: no process, no
real waiting.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.shell import workers
from sidecar.shell.workers import WorkerProcesses


class FakeWorkers(WorkerProcesses):
    """Spawns nothing: each 'process' is a token; the test says when it exits and how much time passed."""

    def __init__(self) -> None:
        super().__init__("@ctl", 8765, 2, [])
        self.now = 1000.0
        self.clock = lambda: self.now
        self.delays: list[float] = []
        self.ends: asyncio.Queue[tuple[float, int]] = asyncio.Queue()  # (seconds it ran, exit status)
        self.spawned = asyncio.Event()

    def spawn(self, worker: int) -> Any:
        self.procs[worker] = object()
        self.started[worker] = self.clock()
        self.spawned.set()
        return self.procs[worker]

    async def sleep(self, s: float) -> None:
        self.delays.append(s)

    async def exited(self, _proc: Any) -> int:
        ran, rc = await self.ends.get()
        self.now += ran
        return rc


async def run_lives(w: FakeWorkers, lives: list[float]) -> list[float]:
    """Worker 2 dies after each of `lives` seconds; returns the back-off chosen before each restart."""
    w.spawn(2)
    task = asyncio.create_task(w.watch(2, w.exited))
    for ran in lives:
        w.spawned.clear()
        await w.ends.put((ran, 1))
        await w.spawned.wait()  # restarted
    w._stopping = True
    await w.ends.put((0.0, 0))
    await task
    return w.delays


async def test_a_worker_that_keeps_dying_at_once_waits_longer_each_time_up_to_the_cap() -> None:
    delays = await run_lives(FakeWorkers(), [0.1] * 8)
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, workers.MAX_BACKOFF_S, workers.MAX_BACKOFF_S, workers.MAX_BACKOFF_S]


async def test_a_worker_that_ran_a_while_before_it_died_restarts_at_the_first_step_again() -> None:
    lives = [0.1] * 6 + [workers.STABLE_S] + [0.1, 0.1]
    delays = await run_lives(FakeWorkers(), lives)
    assert delays[:6] == [0.2, 0.4, 0.8, 1.6, 3.2, workers.MAX_BACKOFF_S]
    assert delays[6:] == [0.2, 0.4, 0.8]  # back to the first step, then doubling again


async def test_a_short_life_does_not_reset_the_back_off() -> None:
    delays = await run_lives(FakeWorkers(), [0.1, 0.1, workers.STABLE_S - 1, 0.1])
    assert delays == [0.2, 0.4, 0.8, 1.6]
