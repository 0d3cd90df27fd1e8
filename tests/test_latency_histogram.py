"""The push-latency window and the histogram folded from it (session/stats.py), against a direct count."""

from __future__ import annotations

import random
from bisect import bisect_left

from sidecar.engine.records import LATENCY_BOUNDS_NS
from sidecar.session.stats import LatencyWindow


def direct(samples: list[int]) -> list[int]:
    counts = [0] * (len(LATENCY_BOUNDS_NS) + 1)
    for s in samples:
        counts[bisect_left(LATENCY_BOUNDS_NS, s)] += 1  # the first bound >= s: `le` is inclusive
    return counts


def test_every_sample_is_counted_once_across_wraps_and_scrapes() -> None:
    rng = random.Random(7)
    w = LatencyWindow(size=64)
    now, added = 10**15, []
    for drain in range(200):
        stamps = [now - rng.choice((5_000, 10_000, 10_001, 30_000, 2_000_000, 200_000_000))
                  for _ in range(rng.randint(0, 40))]
        stamps.append(-1)  # no commit time: skipped
        w.add_since(now, stamps)
        added += [now - s for s in stamps if s >= 0]
        if drain % 7 == 0:
            buckets, sum_ns, count = w.histogram()  # a scrape, at any point of the window
            assert count == len(added) == w.count
    buckets, sum_ns, count = w.histogram()
    assert buckets == direct(added)
    assert (sum_ns, count) == (sum(added), len(added))
    assert buckets[0] > 0 and buckets[1] > 0 and buckets[-1] > 0  # 10 µs exactly is in the first bucket


def test_percentiles_read_the_most_recent_window_only() -> None:
    w = LatencyWindow(size=4)
    assert w.percentiles(50) == [0] and len(w) == 0
    for ns in (900, 900, 900, 900, 100, 200):
        w.add(ns)
    assert len(w) == 4 and w.count == 6
    assert w.percentiles(0, 100) == [100, 900]
    buckets, _sum, count = w.histogram()
    assert count == 6 and buckets[0] == 6


def test_a_drain_of_any_size_counts_as_its_samples_added_one_by_one() -> None:
    # Drains of one push (at idle, every drain) and of a few, around and across the window's wrap.
    rng = random.Random(11)
    by_drain, one_by_one = LatencyWindow(size=8), LatencyWindow(size=8)
    now = 10**15
    for drain in range(300):
        size = 1 if drain < 20 else rng.choice((1, 1, 1, 2, 3, 7, 8, 9, 17))  # one-push drains first: fill, wrap
        stamps = [now - rng.choice((5_000, 30_000, 2_000_000)) for _ in range(size)]
        if drain % 5 == 4:
            stamps[rng.randrange(len(stamps))] = -1  # no commit time: skipped, one-push drains too
        by_drain.add_since(now, stamps)
        for s in stamps:
            if s >= 0:
                one_by_one.add(now - s)
        assert (len(by_drain), by_drain.count) == (len(one_by_one), one_by_one.count)
        assert by_drain.percentiles(0, 50, 100) == one_by_one.percentiles(0, 50, 100)
        if drain % 13 == 0:
            assert by_drain.histogram() == one_by_one.histogram()
    assert by_drain.histogram() == one_by_one.histogram()
