"""How a worker waits for the engine: spin, then yield, then park (Aeron's backoff idle strategy).

A parked sidecar is woken by the engine's doorbell (an eventfd in the event loop's epoll): on a
small VM that wake-up costs ~50-100 µs, more than the ring hop it follows (~1 µs to a consumer
that is awake). After doing work, a worker that expects more soon can instead keep polling for
a while: `IdleStrategy` does that on the event loop, one poll per loop turn (`call_soon`), so
sockets are still served between polls. For the first half of the budget it only polls (spin);
for the second half it also gives the CPU away between polls (`sched_yield`: the engine may
share the core); past the budget it parks (the caller's `park`, typically: announce sleep and
wait for the doorbell). Work found while polling restarts the budget.

The budget is the operator's (`dgdo run --idle-spin-us`): 0 never polls (park at once: least
CPU, a wake-up per event once idle). A poll that finds nothing costs one loop turn (~2-5 µs of
CPU); a budget of B µs burns up to B µs of a core after every burst of work, whether anything
comes or not. See README "Idle strategy" for measured trade-offs.

Sans-I/O apart from the clock and the loop's `call_soon`: `poll`, `park` and `unpark` are the
caller's.

`ReplyBudget` is the other wait: how long the link spins for an answer the engine owes right
after a publish (a command's, or a forwarded position's: engine/link.py `_spin_for_reply`),
learnt from recent answer times under the operator's cap (`dgdo run --reply-spin-us`). Pure.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable


def default_spin_us(cores: int | None = None) -> float:
    """The default budget for this machine.

    With 2 cores or fewer, the engine, the sidecar and the clients' network stack share them:
    a polling sidecar takes CPU the engine needs, and bench-latency measured no gain worth the
    core it burns (README "Idle strategy"). With more cores a short budget catches the engine's
    answers that follow a client's message within microseconds, at a bounded cost.
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return 0.0 if cores <= 2 else 100.0


class IdleStrategy:
    """Polls after work for up to `budget_us`, then parks.

    Args:
        poll: does any work waiting; True when there was some.
        park: called once the budget is spent with nothing found.
        unpark: called when polling starts (e.g. tell the producer not to ring the doorbell).
    """

    __slots__ = ("_half_ns", "_last_work_ns", "_loop", "_polling", "budget_ns", "enabled", "park", "poll", "polls",
                 "unpark", "wins")

    def __init__(self, budget_us: float, poll: Callable[[], bool], park: Callable[[], None],
                 unpark: Callable[[], None] = lambda: None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.budget_ns = int(budget_us * 1000)
        self.enabled = self.budget_ns > 0  # (an attribute: the link reads it for every engine batch)
        self._half_ns = self.budget_ns // 2
        self.poll = poll
        self.park = park
        self.unpark = unpark
        self._loop = loop
        self._polling = False
        self._last_work_ns = 0
        self.polls = 0  # loop turns spent polling
        self.wins = 0  # polls that found work (a wake-up saved)

    def worked(self) -> None:
        """Call after doing work: keep polling for the budget instead of parking."""
        if self.budget_ns <= 0:
            return
        self._last_work_ns = time.perf_counter_ns()
        if not self._polling:
            self._polling = True
            self.unpark()
            (self._loop or asyncio.get_running_loop()).call_soon(self._tick)

    def _tick(self) -> None:
        self.polls += 1
        if self.poll():
            self.wins += 1
            self._last_work_ns = time.perf_counter_ns()
        else:
            idle = time.perf_counter_ns() - self._last_work_ns
            if idle >= self.budget_ns:
                self._polling = False
                self.park()
                return
            if idle >= self._half_ns:
                os.sched_yield()
        (self._loop or asyncio.get_running_loop()).call_soon(self._tick)


class ReplyBudget:
    """How long to spin for an answer the engine owes: a high quantile of recent answer times, capped.

    An answer comes within microseconds when the engine is awake, and ~50-150 µs later when it was
    parked and had to be woken first (on a small VM). A fixed budget is either too short for the
    second case (the spin misses and the sidecar parks: a second wake-up) or burns its whole length
    when the engine is slow. This learns the answer times as they are (`observe`, spin hits and
    doorbell answers alike: a miss teaches a longer budget) and spins for their `quantile`, never
    longer than `cap_us` (the operator's --reply-spin-us) nor shorter than `floor_us`; when even that
    quantile is beyond the cap, a spin would mostly miss, so it lasts only the floor.

    Pure: the caller measures and observes; `budget_ns` is read before each spin.
    """

    __slots__ = ("_at", "_filled", "_floor_ns", "_q", "_seen", "budget_ns", "cap_ns", "samples")

    def __init__(self, cap_us: float, window: int = 64, quantile: float = 0.9, floor_us: float = 10.0) -> None:
        self.cap_ns = int(cap_us * 1000)
        self._floor_ns = min(self.cap_ns, int(floor_us * 1000))
        self._q = quantile
        self.samples = [0] * window
        self._at = 0
        self._filled = 0
        self._seen = 0
        self.budget_ns = self.cap_ns  # until answers have been seen: the operator's budget

    def observe(self, answer_ns: int) -> None:
        """One answer came `answer_ns` after its command was published."""
        window = len(self.samples)
        self.samples[self._at] = answer_ns
        self._at = (self._at + 1) % window
        self._filled = min(self._filled + 1, window)
        self._seen += 1
        if self._seen % 8 == 0 or self._filled < 8:  # re-derived now and then: a sort of 64 ints, ~2 µs
            recent = sorted(self.samples[: self._filled])
            q = recent[min(len(recent) - 1, int(self._q * len(recent)))]
            # Answers slower than the cap (an engine that fsyncs each batch, or a busy one) are
            # missed by any spin we allow: spin only the floor then, enough to keep learning.
            self.budget_ns = self._floor_ns if q > self.cap_ns else max(self._floor_ns, min(self.cap_ns, q + q // 4))
