"""The push path's Python per message, without sockets: the session core and the shell's write.

    python bench/push/core_cost.py [--root DIR] [--n 1000] [--passes 50] [--repeats 5] [--binary]
                                   [--dump PATH] [--instructions] [--idle]

What bench_push.py's sidecar does per pass of the feeder, in one process: N welcomed passenger
sessions in a `SessionCore`; one buffer of records, one ORDER_UPDATE (numbered, +1 per pass) and
one DRIVER_POSITION per passenger, as bench/latency/feeder.py's `run_push` writes it; per pass,
`receive_records` (route, build, encode) then `App._write` (the shell's per-session writes) into
stub transports whose `send` / `write` only keep what they were given. No picows, no kernel:
what is left is the Python and msgspec the sidecar adds on top of the send(2) the raw loop
pays too.

`--root DIR` runs another checkout's sidecar (e.g. /work/main, the previous implementation)
with the same harness, so two trees compare side by side; `--dump PATH` writes every byte the
stubs were given, per session, to compare the wire of two trees (`cmp`); `--instructions`
counts instructions per message with callgrind (a run of P passes minus a run of none, over the
messages), which a busy machine does not disturb. `--idle`: each pass is one ORDER_UPDATE to one
passenger, what a drain holds at idle, so that what every drain pays shows beside the message
(run it with PYTHONHASHSEED=0 for a count that repeats to the instruction).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))  # (bench.*; the sidecar is imported from --root, put ahead in setup())
from bench import callgrind  # noqa: E402
from bench.stub_transport import StubTransport  # noqa: E402


def setup(root: Path, n: int, binary: bool, idle: bool = False):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(root))
    from sidecar.engine import records as R
    from sidecar.engine.records import frame
    from sidecar.session.core import SessionCore
    from sidecar.shell.server import App
    from sidecar.wire.codec import JSON, MSGPACK
    from sidecar.wire.messages import PASSENGER

    core = SessionCore(1)
    sessions = []
    for i in range(n):
        s = core.new_session(PASSENGER, f"bp{i}", MSGPACK if binary else JSON)
        core.open(s)
        s.io = StubTransport(binary)
        core.welcome(s, 0, False, 1764090000000)
        sessions.append(s)
    drain = getattr(core, "writes_to_send", core.data_to_send)  # (the previous core: one bytes per message)
    App._write(drain())
    for s in sessions:
        s.io.out.clear()
    buf = bytearray()
    seq_at = []
    real = 1764090000000123456
    for i, s in enumerate(sessions):
        pid = s.app_id.encode()
        meta = (5_000_000_000, real, 0, 1, R.Role.PASSENGER, pid)
        seq_at.append(len(buf) + 8 + R.OUT_ORDER_UPDATE.size - 8)
        frame(buf, R.T.OUT_ORDER_UPDATE, R.OUT_ORDER_UPDATE.pack(*meta, 1_000_000 + i, R.OrderStatus.ARRIVING, 0,
                                                                 b"bench-driver", pid, 0))
        if idle:
            continue
        frame(buf, R.T.OUT_DRIVER_POSITION, R.OUT_DRIVER_POSITION.pack(*meta, 1_000_000 + i, b"bench-driver",
                                                                       38.5605, 68.784, 80.0, 31.0))
    core.wall_ns = lambda: real + 1000  # fixed clocks: the dump is the same in every run
    core.mono_ns = lambda: 5_000_001_000
    return core, drain, App._write, sessions, buf, seq_at


def run(core, drain, write, buf: bytearray, seq_at: list[int], first: int, passes: int) -> None:  # type: ignore[no-untyped-def]
    import struct

    pack = struct.Struct("<Q").pack_into
    receive, size = core.receive_records, len(buf)
    for k in range(first, first + passes):
        for off in seq_at:
            pack(buf, off, k)
        receive(buf, size)
        write(drain())


def instructions(args: argparse.Namespace) -> float:
    def run(passes: int) -> int:
        return callgrind.instructions([sys.executable, str(HERE), "--root", str(args.root), "--n", str(args.n),
                                       "--count", str(passes), *(["--binary"] if args.binary else []),
                                       *(["--idle"] if args.idle else [])])

    base = run(1)  # set-up plus one pass: the first pass warms caches (ids, dicts)
    return (run(1 + args.passes) - base) / (messages_per_pass(args) * args.passes)


def messages_per_pass(args: argparse.Namespace) -> int:
    return 1 if args.idle else 2 * args.n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose sidecar runs (default: this one)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--binary", action="store_true", help="msgpack sessions (default JSON)")
    ap.add_argument("--idle", action="store_true", help="each pass one order update to one passenger (sets --n 1)")
    ap.add_argument("--dump", default="", help="write what the stubs were given here")
    ap.add_argument("--instructions", action="store_true", help="count instructions per message (callgrind)")
    ap.add_argument("--count", type=int, default=-1, help=argparse.SUPPRESS)  # one callgrind run: this many passes
    args = ap.parse_args()
    root = Path(args.root).resolve()
    if args.idle:
        args.n = 1
    what = "one-push drain" if args.idle else "message"
    if args.instructions:
        per = instructions(args)
        print(f"{root}: N={args.n} {'msgpack' if args.binary else 'JSON'}: {per:,.0f} instructions per {what}")
        return 0
    core, drain, write, sessions, buf, seq_at = setup(root, args.n, args.binary, args.idle)
    if args.count >= 0:
        run(core, drain, write, buf, seq_at, 1, args.count)
        return 0
    if args.dump:
        run(core, drain, write, buf, seq_at, 1, 3)
        with open(args.dump, "wb") as f:
            for s in sessions:
                for chunk in s.io.out:
                    f.write(chunk)
        print(f"dumped to {args.dump}")
        return 0
    samples = []
    k = 1
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run(core, drain, write, buf, seq_at, k, args.passes)
        samples.append((time.perf_counter() - t0) / (messages_per_pass(args) * args.passes) * 1e6)
        k += args.passes
        for s in sessions:
            s.io.out.clear()
    print(f"{root}: N={args.n} {'msgpack' if args.binary else 'JSON'}: {statistics.median(samples):.3f} µs per "
          f"{what} (median of {args.repeats}: {', '.join(f'{x:.3f}' for x in samples)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
