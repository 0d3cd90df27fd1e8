"""Top frames of a py-spy `--format raw` profile: self and inclusive share of the non-idle samples.

    .venv/bin/python bench/latency/pyspy_top.py bench/results/prof/pyspy-ring-load-*.txt [N]
"""

from __future__ import annotations

import re
import sys
from collections import Counter


def main() -> int:
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(path) as fh:
        lines = fh.read().splitlines()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [re.sub(r" \(/.*/(site-packages/|work/main/)?", " (", f) for f in stack.split(";")]
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"{path}: {total} samples (non-idle)")
    print("self:")
    for f, n in self_c.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("inclusive:")
    for f, n in incl.most_common(top + 10):
        print(f"  {100 * n / total:5.1f}%  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
