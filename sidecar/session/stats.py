"""Counters and latency windows the status line, /metrics and admins read."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from sidecar.engine.records import LATENCY_BOUNDS_NS
from sidecar.wire.errors import ErrorCode


class LatencyWindow:
    """Latency samples (ns): the most recent `size` for exact percentiles (status line, admin page),
    and all of them since start as a Prometheus histogram (/metrics), with LATENCY_BOUNDS_NS buckets.

    The hot path only stores each sample in the window. The histogram is folded from the window
    in bulk, by C code (a sort and a bisect per bound), when the window wraps and when /metrics
    reads it (`histogram()`): per sample that is cheaper than bucketing each one as it comes
    (bench figures in README "Metrics"), and no sample is missed, since the part of the window not
    yet folded is always folded before it is overwritten.
    """

    __slots__ = ("_from", "_i", "_samples", "buckets", "filled", "folded", "size", "sum_ns")

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._samples: list[int] = [0] * size
        self._i = 0  # next slot to write
        self._from = 0  # samples[_from:_i] are not in the histogram yet
        self.filled = 0  # slots holding a sample (grows to `size`)
        self.buckets = [0] * (len(LATENCY_BOUNDS_NS) + 1)  # per bucket, not cumulative; last: above every bound
        self.sum_ns = 0
        self.folded = 0  # samples in `buckets`

    @property
    def count(self) -> int:
        """All samples ever added."""
        return self.folded + self._i - self._from

    def add(self, ns: int) -> None:
        self._samples[self._i] = ns
        self._advance()

    def add_since(self, now: int, stamps: list[int]) -> None:
        """Adds `now - stamp` for each stamp >= 0: one drain's worth in one call (a comprehension and
        slice stores: a loop that stores one sample at a time costs as much as a push's framing)."""
        if len(stamps) == 1:  # a drain of one push (at idle, each drain): no list, no loop
            stamp = stamps[0]
            if stamp >= 0:
                self._samples[self._i] = now - stamp
                self._advance()
            return
        values = [now - stamp for stamp in stamps if stamp >= 0]
        samples, size, i = self._samples, self.size, self._i
        at = 0
        while at < len(values):
            take = min(size - i, len(values) - at)
            samples[i:i + take] = values[at:at + take]
            i += take
            at += take
            if i == size:
                self._fold(self._from, size)
                self._from = i = 0
        self._i = i
        if self.filled < size:
            self.filled = min(size, self.filled + len(values))

    def _advance(self) -> None:
        """Past the sample just stored (plain comparisons: at idle this is every drain's)."""
        i = self._i = self._i + 1
        if self.filled < self.size:
            self.filled += 1
        if i == self.size:
            self._fold(self._from, i)
            self._from = self._i = 0

    def _fold(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        chunk = self._samples[lo:hi]
        chunk.sort()
        buckets, below = self.buckets, 0
        for j, bound in enumerate(LATENCY_BOUNDS_NS):
            upto = bisect_right(chunk, bound)  # Prometheus buckets are `le`: inclusive
            buckets[j] += upto - below
            below = upto
        buckets[-1] += len(chunk) - below
        self.sum_ns += sum(chunk)
        self.folded += len(chunk)

    def histogram(self) -> tuple[list[int], int, int]:
        """(per-bucket counts, sum ns, count) of every sample so far: folds what is pending first."""
        self._fold(self._from, self._i)
        self._from = self._i
        return self.buckets, self.sum_ns, self.folded

    def percentiles(self, *ps: float) -> list[int]:
        """Nearest-rank percentiles of the window; zeros when empty."""
        if not self.filled:
            return [0 for _ in ps]
        s = sorted(self._samples[: self.filled])
        n = len(s)
        return [s[min(n - 1, max(0, round(p / 100.0 * n + 0.5) - 1))] for p in ps]

    def __len__(self) -> int:
        return self.filled


@dataclass(slots=True)
class EngineSnapshot:
    """The engine's latest ENGINE_STATS record."""

    drivers_online: int = 0
    drivers_available: int = 0
    active_orders: int = 0
    orders_created: int = 0
    orders_matched: int = 0
    orders_completed: int = 0
    match_p99_ns: int = 0
    match_p50_ns: int = 0
    # Every offer decision since the engine started: a histogram on LATENCY_BOUNDS_NS, per bucket
    # (not cumulative; the last counts those above every bound).
    match_count: int = 0
    match_sum_ns: int = 0
    match_buckets: tuple[int, ...] = (0,) * (len(LATENCY_BOUNDS_NS) + 1)
    workers: int = 0  # sidecar workers attached to the engine
    # The journal: 0 while it takes writes, else the errno of the write it refused; the engine then
    # holds (silent, commands refused) and says so with these, since `held_since_ns` (CLOCK_MONOTONIC).
    journal_errno: int = 0
    held_inputs: int = 0
    held_since_ns: int = 0
    # False until an ENGINE_STATS arrived: the zeros above are then not the engine's figures, and
    # reading them as such shows a sidecar restarted beside a running engine its counters falling
    # to 0 and jumping back (/metrics, the dashboard's orders per minute).
    known: bool = False


@dataclass(frozen=True, slots=True)
class LinkGauges:
    """What the engine link reports about itself for `system_stats`: read when an admin needs it."""

    heartbeat_age_ns: int | None = None  # None while detached
    in_bytes: int = 0  # records in the engine's inbound ring, not yet consumed
    backlog_bytes: int = 0  # records waiting for space in that ring
    out_bytes: int = 0  # records in the engine's outbound ring, not yet drained


@dataclass(slots=True)
class SidecarStats:
    push_latency: LatencyWindow = field(default_factory=LatencyWindow)
    engine: EngineSnapshot = field(default_factory=EngineSnapshot)
    frames_in: int = 0
    messages_out: int = 0
    positions_coalesced: int = 0  # driver positions a newer one for the same recipient replaced within one drain
    records_in: int = 0  # records drained from the engine
    records_out: int = 0  # records the engine link took (the shell's flush counts them; a counter: never down)
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys((c.value for c in ErrorCode), 0))  # by code
    connections: int = 0
    paused: int = 0  # connections whose write buffer is above its high-water mark right now
    auth_refused: int = 0
    rate_limited: int = 0
    abuse_closes: int = 0
    slow_reader_closes: int = 0
    too_large_closes: int = 0
    expired_closes: int = 0  # connections closed because their token expired (4401)

    @property
    def errors_sent(self) -> int:
        """`error` messages sent to apps, every code."""
        return sum(self.errors.values())

    def status_line(self) -> str:
        e = self.engine
        if len(self.push_latency):
            p50, p99 = self.push_latency.percentiles(50, 99)
            push = f"push p50 {p50 / 1000:7.1f} µs p99 {p99 / 1000:7.1f} µs (n={len(self.push_latency)})"
        else:
            push = "no pushes yet"  # not "p50 0.0 µs", which reads as perfect latency
        return (
            f"drivers online {e.drivers_online:>4} | orders requested {e.orders_created:>5}"
            f" matched {e.orders_matched:>5} completed {e.orders_completed:>5}"
            f" | {push} | connections {self.connections}"
        )
