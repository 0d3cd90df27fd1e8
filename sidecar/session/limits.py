"""Per-connection limits, sans-I/O: inbound rate (token buckets) and outbound flow control.

Nothing here reads a clock or touches a socket: callers pass `now` (monotonic
seconds) and act on the returned verdicts, so tests drive every case with
plain numbers.

Inbound, every complete message costs a token per frame it spanned (one for
an ordinary message, more for a fragmented one) from a generous `messages`
bucket (a flood guard: one connection cannot monopolise a worker that does
~100k messages/s), and latest-wins inputs (`driver_location`,
`nearby_subscribe`/`_unsubscribe`) also cost one from the `positions`
bucket, sized for an app that reports once a second with bursts after a
tunnel or a reconnect. A refused message is answered `rate_limited`; a long
run of refusals with nothing admitted in between is abuse and closes the
connection (1008).

Outbound, `Outbox` holds what a connection owes its client while the
transport is paused (its write buffer is above the high-water mark):
latest-wins messages are coalesced per (type, order), reliable ones queue up
to a cap. Past the cap the connection must be closed (4008); the engine keeps
the reliable messages for a resume with `?last_seq`.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True, slots=True)
class Rate:
    per_s: float
    burst: float


POSITIONS_RATE = Rate(per_s=10.0, burst=20.0)  # one position a second, bursts after a tunnel
# Every message, all types: ride requests, order commands, pings. Generous on purpose (load tools and
# benchmarks drive hundreds of commands a second over one connection); it bounds a flood, not a person.
MESSAGES_RATE = Rate(per_s=2000.0, burst=2000.0)
ABUSE_AFTER = 100  # refusals in a row (nothing admitted in between) -> close 1008


class TokenBucket:
    """`burst` tokens, refilled at `per_s` a second; starts full."""

    __slots__ = ("burst", "per_s", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.per_s = rate.per_s
        self.burst = rate.burst
        self.tokens = rate.burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Takes `cost` tokens (at most a full bucket's worth) if there are that many."""
        # Plain comparisons rather than min(): this runs for every inbound frame.
        if now > self.stamp:
            tokens = self.tokens + (now - self.stamp) * self.per_s
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now
        if cost > self.burst:
            cost = self.burst
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class Verdict(Enum):
    ADMIT = "admit"
    LIMITED = "limited"  # answer rate_limited, drop the message
    ABUSE = "abuse"  # close the connection (1008)


ADMIT, LIMITED, ABUSE = Verdict.ADMIT, Verdict.LIMITED, Verdict.ABUSE


class RateLimiter:
    """The inbound limits of one connection."""

    __slots__ = ("abuse_after", "messages", "positions", "refused_in_a_row")

    def __init__(self, now: float, positions: Rate = POSITIONS_RATE, messages: Rate = MESSAGES_RATE,
                 abuse_after: int = ABUSE_AFTER) -> None:
        self.positions = TokenBucket(positions, now)
        self.messages = TokenBucket(messages, now)
        self.abuse_after = abuse_after
        self.refused_in_a_row = 0

    def check(self, now: float, position: bool, frames: int = 1) -> Verdict:
        """Charges one message of `frames` frames (and one position when `position`).

        Each frame of a fragmented message costs a token: fragments are work, and empty
        ones would otherwise be free.

        A run of refusals can only grow while the client keeps sending faster than the
        refill rate, so "N in a row" needs no time window of its own.
        """
        ok = self.messages.take(now, frames) and (not position or self.positions.take(now))
        if ok:
            self.refused_in_a_row = 0
            return ADMIT
        self.refused_in_a_row += 1
        return ABUSE if self.refused_in_a_row >= self.abuse_after else LIMITED


# ---- outbound -----------------------------------------------------------------------

# Server messages that only matter in their latest version: a slow reader gets the newest one.
LATEST_WINS = frozenset({"driver_location", "estimate_update", "nearby_drivers", "system_stats"})
MAX_QUEUED = 1024  # messages owed to a paused client before it is closed with 4008
MAX_PAUSED_S = 10.0  # a write buffer that has not drained for this long means the client stopped reading


class Outbox:
    """Messages owed to a client whose transport is paused, in order of their latest version.

    A latest-wins message replaces the previous one of the same (type, order) and moves to the
    end, so it never overtakes the reliable messages that preceded it.
    """

    __slots__ = ("_keys", "max_queued", "pending")

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self.max_queued = max_queued
        self.pending: OrderedDict[object, dict[str, Any]] = OrderedDict()
        self._keys = itertools.count()

    def put(self, message: dict[str, Any]) -> bool:
        """Queues a message; False when the client now owes more than `max_queued` (close 4008)."""
        mtype = message.get("type")
        if mtype in LATEST_WINS:
            key: object = (mtype, message.get("order_id"))
            self.pending.pop(key, None)
        else:
            key = next(self._keys)
        self.pending[key] = message
        return len(self.pending) <= self.max_queued

    def drain(self) -> Iterator[dict[str, Any]]:
        """Yields queued messages oldest first, removing each as it goes (stop early to keep the rest)."""
        while self.pending:
            _key, message = self.pending.popitem(last=False)
            yield message

    def __len__(self) -> int:
        return len(self.pending)
