"""Python side of the ring through the cffi wrapper (sidecar/engine/ring): records/s on one core.

    .venv/bin/python bench/ring/py_bench.py [--quick | --smoke]

One thread, one segment, alternating batches so the ring never fills:
* publish: `Producer.publish()` of a pre-framed batch (one cffi call per batch),
  as EngineLink._flush does for inbound records (96 B driver_location bodies);
* drain: `Consumer.drain()` copying a batch out (one cffi call per batch);
* drain + records(): the same plus iterating `Consumer.records()`, what a reader of records one by one pays
  before decoding;
* drain + records() + unpack: plus `struct.unpack` of each 168 B NEW_ORDER body.
Each stage is timed separately (perf_counter_ns around the calls), so the numbers are
per-core costs of that stage alone. Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sidecar.engine import records as R  # noqa: E402
from sidecar.engine import ring  # noqa: E402


def bench(total: int, batch: int, body: bytes, type_: int, unpack=None, iterate: bool = False) -> dict[str, float]:
    seg = ring.Segment.create(1 << 22, label="dgdo.pybench")  # a memfd: nothing to leak, whatever kills us
    try:
        prod, cons = ring.Producer(seg), ring.Consumer(seg)
        framed = bytearray()
        for _ in range(batch):
            ring.frame(framed, type_, body)
        pub_ns = drain_ns = 0
        done = 0
        clock = time.perf_counter_ns
        while done < total:
            t0 = clock()
            n, _ = prod.publish(framed)
            t1 = clock()
            nbytes = cons.drain(limit=batch)
            if iterate:
                for rec in cons.records(nbytes):
                    if unpack is not None:
                        unpack(rec.body)
            t2 = clock()
            assert n == len(framed) and nbytes == len(framed)
            pub_ns += t1 - t0
            drain_ns += t2 - t1
            done += batch
        return {"publish_per_s": done / (pub_ns / 1e9), "drain_per_s": done / (drain_ns / 1e9)}
    finally:
        seg.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    total = 20_000 if args.smoke else 500_000 if args.quick else 2_000_000
    loc = R.IN_DRIVER_LOCATION.pack(1, 0, 7, 1, R.Role.DRIVER, b"d1", 38.56, 68.78, 90.0, 30.0, 5.0)
    offer = bytes(R.OUT_NEW_ORDER.size)
    rows = []
    for batch in (1, 16, 256):
        n = total // 4 if batch == 1 else total
        pub = bench(n, batch, loc, R.T.IN_DRIVER_LOCATION)
        drain = bench(n, batch, offer, R.T.OUT_NEW_ORDER)
        it = bench(n, batch, offer, R.T.OUT_NEW_ORDER, iterate=True)
        dec = bench(n, batch, offer, R.T.OUT_NEW_ORDER, unpack=R.OUT_NEW_ORDER.unpack, iterate=True)
        rows.append({"batch": batch, "publish_96B": pub["publish_per_s"], "drain_168B": drain["drain_per_s"],
                     "drain_records_168B": it["drain_per_s"], "drain_records_unpack_168B": dec["drain_per_s"]})
        print(f"py_bench: batch {batch} done", file=sys.stderr, flush=True)
    print("\n| Python via cffi, one core (records/s) | publish 96 B | drain 168 B | drain + records() | "
          "drain + records() + unpack |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| batch of {r['batch']} | {r['publish_96B'] / 1e6:.2f} M | {r['drain_168B'] / 1e6:.2f} M | "
              f"{r['drain_records_168B'] / 1e6:.2f} M | {r['drain_records_unpack_168B'] / 1e6:.2f} M |")
    print(f"\nJSON {json.dumps({'python': sys.version.split()[0], 'pid': os.getpid(), 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
