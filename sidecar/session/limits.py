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
tunnel or a reconnect.

A refusal is made nearly free for the server, so that a flood costs the flooder: only the
first `ANSWERED_REFUSALS` refusals of each second are answered `rate_limited` (an app that
bursts learns why), the rest are dropped unanswered, and after each refusal the shell stops
reading the socket until the bucket that refused holds a token again (`pause_s`): the
kernel's buffers fill and TCP slows the sender down, at no cost to anyone else. Flooding
is counted in a sliding window, not "in a row": `ABUSE_AFTER` refusals within
`ABUSE_WINDOW_S` close the connection (1008), whatever was admitted in between (a bucket
refilling at 2000/s admits a message every few refusals of a 70k/s flood, which a run
count never sees as abuse).

Outbound, `Outbox` holds what a connection owes its client while the
transport is paused (its write buffer is above the high-water mark):
latest-wins messages are coalesced per (type, order), reliable ones queue up
to a cap. Past the cap the connection must be closed (4008); the engine keeps
the reliable messages for a resume with `?last_seq`.
"""

from __future__ import annotations

import functools
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
ABUSE_AFTER = 100  # refusals within ABUSE_WINDOW_S (admitted messages in between or not) -> close 1008
ABUSE_WINDOW_S = 1.0
# rate_limited answers per window; further refusals are dropped silently. Enough for an app that
# bursts 30 positions against a bucket of 20 to be told about each refusal (tests/test_live_protocol.py).
ANSWERED_REFUSALS = 16
# How long the shell stops reading a connection after a refusal: until the refusing bucket holds a
# token again, within these bounds (a 2000/s bucket refills a token in 0.5 ms: too short a pause to
# relieve anyone; a 10/s one in 100 ms).
PAUSE_MIN_S = 0.01
PAUSE_MAX_S = 0.25


@functools.cache
def _shape(rate: Rate) -> tuple[float, float, float]:
    """A bucket's constants: a token's interval, a full bucket's worth of time (the span), and how
    far ahead of now `full_at` may go (the span and the slack). (per_s > 0: config.py.)"""
    interval = 1.0 / rate.per_s
    span = rate.burst * interval
    return interval, span, span + TokenBucket.SLACK * interval


class TokenBucket:
    """`burst` tokens, refilled at `per_s` a second; starts full.

    Kept as one time rather than a count and a stamp (GCRA, the generic cell rate algorithm:
    the same verdicts as a token bucket): `full_at`, when the bucket will be full again. Taking
    `cost` tokens moves it `cost / per_s` later, and is refused when that would put it more
    than `burst / per_s` ahead of now. A refill is no arithmetic at all (any time in the past
    is "full"), so a frame costs a comparison, an addition and a store: this runs for every
    inbound frame, twice for a position. Times are floats of seconds: `SLACK` of a token absorbs
    their rounding, so a burst taken in one instant is never short by one.
    """

    __slots__ = ("ahead", "full_at", "interval", "span")

    SLACK = 1e-3  # of a token's interval: a take that early is admitted (at 10/s, 0.1 ms)

    def __init__(self, rate: Rate, now: float) -> None:
        # The same three float objects for every bucket of a rate: each its own would cost a
        # connection ~150 bytes more (bench-conns).
        self.interval, self.span, self.ahead = _shape(rate)
        self.full_at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Takes `cost` tokens (at most a full bucket's worth) if there are that many."""
        at = self.full_at
        if at < now:
            at = now
        step = cost * self.interval
        if step > self.span:
            step = self.span
        at += step
        if at - now <= self.ahead:
            self.full_at = at
            return True
        return False

    def wait_s(self, now: float) -> float:
        """How long until the bucket holds a token again."""
        return self.full_at + self.interval - self.span - now


class Verdict(Enum):
    ADMIT = "admit"
    LIMITED = "limited"  # drop the message, answer rate_limited, pause reading (pause_s)
    DROPPED = "dropped"  # drop the message unanswered, pause reading (pause_s)
    ABUSE = "abuse"  # close the connection (1008)


ADMIT, LIMITED, DROPPED, ABUSE = Verdict.ADMIT, Verdict.LIMITED, Verdict.DROPPED, Verdict.ABUSE


class RateLimiter:
    """The inbound limits of one connection.

    Refusals are counted in a sliding window of `ABUSE_WINDOW_S`, approximated the way
    rate limiters at scale do (two fixed windows, the previous one weighted by how much of
    it the sliding window still covers): four numbers per connection instead of a list of
    timestamps.
    """

    __slots__ = ("abuse_after", "answered", "messages", "positions", "refused", "refused_at", "refused_before",
                 "refused_by", "window_start")

    def __init__(self, now: float, positions: Rate = POSITIONS_RATE, messages: Rate = MESSAGES_RATE,
                 abuse_after: int = ABUSE_AFTER) -> None:
        self.positions = TokenBucket(positions, now)
        self.messages = TokenBucket(messages, now)
        self.abuse_after = abuse_after
        self.window_start = now
        self.refused = 0  # in the current window
        self.refused_before = 0  # in the previous window
        self.answered = 0  # refusals answered in the current window
        self.refused_by: TokenBucket | None = None  # the bucket of the latest refusal
        self.refused_at = now  # ... and when it was

    def check(self, now: float, position: bool, frames: int = 1) -> Verdict:
        """Charges one message of `frames` frames (and one position when `position`).

        Each frame of a fragmented message costs a token: fragments are work, and empty
        ones would otherwise be free. Control frames (PING, PONG) cost one like a message.

        The same verdicts as `self.messages.take(now, frames)`, then (a position, admitted so
        far) `self.positions.take(now)`, with the two takes written out: this runs for every
        inbound frame, and a Python call costs ~450 instructions, a third of what the two
        takes' arithmetic does (bench/protocol/ingest_cost.py). tests/test_limits.py checks
        the two against each other.
        """
        b = self.messages
        at = b.full_at
        if at < now:
            at = now
        step = frames * b.interval
        at += step if step < b.span else b.span
        if at - now <= b.ahead:
            b.full_at = at
            if not position:
                return ADMIT
            b = self.positions
            at = b.full_at
            if at < now:
                at = now
            at += b.interval if b.interval < b.span else b.span
            if at - now <= b.ahead:
                b.full_at = at
                return ADMIT
        self.refused_by = b
        return self._refuse(now)

    def _refuse(self, now: float) -> Verdict:
        self.refused_at = now
        window = ABUSE_WINDOW_S
        elapsed = now - self.window_start
        if elapsed >= window:
            # One window on: the current count becomes the previous one; two or more: both are stale.
            self.refused_before = self.refused if elapsed < 2 * window else 0
            self.window_start = now if elapsed >= 2 * window else self.window_start + window
            self.refused = self.answered = 0
            elapsed = now - self.window_start
        self.refused += 1
        if self.refused + self.refused_before * (1.0 - elapsed / window) >= self.abuse_after:
            return ABUSE
        if self.answered < ANSWERED_REFUSALS:
            self.answered += 1
            return LIMITED
        return DROPPED

    def pause_s(self) -> float:
        """How long to stop reading after a refusal: until the bucket that refused holds a token again."""
        b = self.refused_by
        wait = b.wait_s(self.refused_at) if b is not None else PAUSE_MAX_S
        return PAUSE_MIN_S if wait < PAUSE_MIN_S else PAUSE_MAX_S if wait > PAUSE_MAX_S else wait


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
        self.pending: OrderedDict[object, Any] = OrderedDict()
        self._keys = itertools.count()

    def put(self, message: Any, stamp: int | None = None) -> bool:
        """Queues a message (a map, or a typed one of wire/pushes.py, encoded only when it is sent);
        False when the client now owes more than `max_queued` (close 4008). `stamp` goes with it, for
        the sender to count it by when it is sent (session/core.py `_owe`): one replaced by a newer
        version is never sent, so never counted."""
        if isinstance(message, dict):
            mtype, order_id = message.get("type"), message.get("order_id")
        else:
            mtype, order_id = message.__struct_config__.tag, getattr(message, "order_id", None)
        if mtype in LATEST_WINS:
            key: object = (mtype, order_id)
            self.pending.pop(key, None)
        else:
            key = next(self._keys)
        self.pending[key] = (message, stamp)
        return len(self.pending) <= self.max_queued

    def drain(self) -> Iterator[tuple[Any, int | None]]:
        """Yields (message, stamp) pairs oldest first, removing each as it goes (stop early to keep the rest)."""
        while self.pending:
            _key, queued = self.pending.popitem(last=False)
            yield queued

    def __len__(self) -> int:
        return len(self.pending)
