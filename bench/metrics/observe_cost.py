"""What observing push latency costs the hot path: per sample, three ways (README "Metrics to alert on").

* window: the recent-window list alone (what the sidecar kept before the histogram);
* folded: session/stats.py's LatencyWindow: the same window, folded into histogram buckets in bulk
  when it wraps and at each scrape (what the sidecar does);
* inline: the window plus a bisect into the buckets per sample.

    python bench/metrics/observe_cost.py [--batch 10] [--calls 20000] [--only folded]

Run under `valgrind --tool=callgrind` with `--only` (and once with `--calls 0`) for instruction
counts, which a busy 2-vCPU machine does not blur the way it blurs timings.
"""

from __future__ import annotations

import argparse
import random
import timeit
from bisect import bisect_left

from sidecar.engine.records import LATENCY_BOUNDS_NS as BOUNDS
from sidecar.session.stats import LatencyWindow


class Window:
    """The window alone, as it was: append until full, then overwrite round-robin."""

    def __init__(self, size: int = 8192) -> None:
        self.size, self.samples, self.i, self.count = size, [], 0, 0

    def add_since(self, now: int, stamps: list[int]) -> None:
        samples, size, i = self.samples, self.size, self.i
        for stamp in stamps:
            if stamp < 0:
                continue
            if len(samples) < size:
                samples.append(now - stamp)
            else:
                samples[i] = now - stamp
                i = (i + 1) % size
            self.count += 1
        self.i = i

    def histogram(self) -> None:
        pass


class Inline(Window):
    """The window, and each sample bisected into its bucket as it comes."""

    def __init__(self, size: int = 8192) -> None:
        super().__init__(size)
        self.buckets, self.sum_ns = [0] * (len(BOUNDS) + 1), 0

    def add_since(self, now: int, stamps: list[int]) -> None:
        samples, size, i, buckets = self.samples, self.size, self.i, self.buckets
        n = total = 0
        for stamp in stamps:
            if stamp < 0:
                continue
            d = now - stamp
            if len(samples) < size:
                samples.append(d)
            else:
                samples[i] = d
                i = (i + 1) % size
            buckets[bisect_left(BOUNDS, d)] += 1
            total += d
            n += 1
        self.i, self.count, self.sum_ns = i, self.count + n, self.sum_ns + total


KINDS = {"window": Window, "folded": LatencyWindow, "inline": Inline}


def run(kind: str, calls: int, batch: int) -> None:
    random.seed(1)
    now = 10**18
    batches = [[now - random.randint(15_000, 300_000) for _ in range(batch)] for _ in range(64)]
    w = KINDS[kind]()
    for k in range(calls):
        w.add_since(now, batches[k & 63])
    w.histogram()  # a scrape: folds what is pending


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=10, help="samples per drain")
    ap.add_argument("--calls", type=int, default=20000, help="drains")
    ap.add_argument("--only", choices=sorted(KINDS), help="run one kind once, untimed (for callgrind)")
    args = ap.parse_args()
    if args.only:
        run(args.only, args.calls, args.batch)
        return
    for kind in KINDS:
        t = min(timeit.repeat(lambda k=kind: run(k, args.calls, args.batch), number=1, repeat=5))
        print(f"{kind:7s} {t / (args.calls * args.batch) * 1e9:7.1f} ns per sample (batch {args.batch})")


if __name__ == "__main__":
    main()
