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
        self.fork_fails = 0  # spawns that fail with EAGAIN before one succeeds

    def spawn(self, worker: int) -> Any:
        if self.fork_fails:
            self.fork_fails -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
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


async def run_lives(w: FakeWorkers, lives: list[float], fork_fails: int = 0) -> list[float]:
    """Worker 2 dies after each of `lives` seconds (its first restart's first `fork_fails` spawns
    fail); returns every back-off waited."""
    w.spawn(2)
    w.fork_fails = fork_fails
    task = asyncio.create_task(w.watch(2, w.exited))
    for ran in lives:
        w.spawned.clear()
        await w.ends.put((ran, 1))
        restarted = asyncio.create_task(w.spawned.wait())
        await asyncio.wait({restarted, task}, return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), task.exception()  # the watch gave the worker up
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


async def test_a_worker_whose_restart_cannot_fork_is_tried_again_not_given_up() -> None:
    w = FakeWorkers()
    delays = await run_lives(w, [0.1], fork_fails=2)
    assert delays == [0.2, 0.4, 0.8]  # the restart's back-off, then one per failed fork
    assert w.restarts == 1
