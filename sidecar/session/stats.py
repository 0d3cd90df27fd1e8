"""Counters and latency windows the status line, /metrics and admins read."""

from __future__ import annotations

from dataclasses import dataclass, field


class LatencyWindow:
    """The most recent `size` samples (ns), for percentiles over a sliding window."""

    __slots__ = ("_i", "_samples", "count", "size")

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._samples: list[int] = []
        self._i = 0
        self.count = 0  # all samples ever added

    def add(self, ns: int) -> None:
        if len(self._samples) < self.size:
            self._samples.append(ns)
        else:
            self._samples[self._i] = ns
            self._i = (self._i + 1) % self.size
        self.count += 1

    def add_since(self, now: int, stamps: list[int]) -> None:
        """Adds `now - stamp` for each stamp >= 0: one drain's worth in one call."""
        samples, size, i = self._samples, self.size, self._i
        for stamp in stamps:
            if stamp < 0:
                continue
            if len(samples) < size:
                samples.append(now - stamp)
            else:
                samples[i] = now - stamp
                i = (i + 1) % size
            self.count += 1
        self._i = i

    def percentiles(self, *ps: float) -> list[int]:
        """Nearest-rank percentiles of the window; zeros when empty."""
        if not self._samples:
            return [0 for _ in ps]
        s = sorted(self._samples)
        n = len(s)
        return [s[min(n - 1, max(0, round(p / 100.0 * n + 0.5) - 1))] for p in ps]

    def __len__(self) -> int:
        return len(self._samples)


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
    workers: int = 0  # sidecar workers attached to the engine


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
    records_out: int = 0  # records published to the engine
    errors_sent: int = 0
    connections: int = 0
    paused: int = 0  # connections whose write buffer is above its high-water mark right now
    auth_refused: int = 0
    rate_limited: int = 0
    abuse_closes: int = 0
    slow_reader_closes: int = 0
    too_large_closes: int = 0

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
