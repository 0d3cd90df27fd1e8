"""The ingest path's Python per `driver_location`, without sockets: the shell's frame callback to the
record handed to the ring.

    python bench/protocol/ingest_cost.py [--root DIR] [--conns 16] [--rounds 2000] [--repeats 5]
                                         [--binary] [--instructions]

What bench_codec.py's ingest run costs the sidecar per frame once picows has parsed it, in one
process: `conns` driver sessions, each an `AppListener` of a real `App` (rate limits lifted, as
the ingest run lifts them); per round, one `driver_location` frame from every driver through
`AppListener.on_ws_frame` (decode, admit, the core's handler), then the loop turn that drains the
core (`App.flush`: the records to the link, the link framing them). The ring is a stub that takes
every batch whole (the real one is one cffi call per batch), the frames are stubs with picows'
attributes, and nothing is read from a socket: what is left is the Python and msgspec the
sidecar spends per message on top of picows and the kernel.

`--root DIR` runs another checkout's sidecar with the same harness, so two trees compare side by
side; `--instructions` counts instructions per message with callgrind (a run of R rounds minus a
run of one, over the messages), which a busy machine does not disturb.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))  # (bench.*; the sidecar is imported from --root, put ahead in setup())
from bench import callgrind  # noqa: E402
from bench.stub_transport import StubTransport  # noqa: E402

MESSAGE = {"type": "driver_location", "lat": 38.5605, "lon": 68.784, "heading": 90.0, "speed_kmh": 32.5,
           "accuracy_m": 8.0}


async def setup(root: Path, conns: int, binary: bool) -> tuple[Any, list[tuple[Any, Any]], list[Any]]:
    sys.path.insert(0, str(root))
    import msgpack
    from picows import WSMsgType

    from sidecar.session.limits import Rate
    from sidecar.shell.server import App, AppListener, Settings
    from sidecar.wire.codec import JSON, MSGPACK
    from sidecar.wire.messages import DRIVER
    from sidecar.wire.router import WsRoute

    class Frame:
        """A data frame as picows hands it over: its attributes, and the payload as bytes."""

        __slots__ = ("fin", "msg_type", "payload", "rsv1", "rsv2", "rsv3")

        def __init__(self, payload: bytes) -> None:
            self.msg_type = WSMsgType.BINARY if binary else WSMsgType.TEXT
            self.fin = True
            self.rsv1 = self.rsv2 = self.rsv3 = False
            self.payload = payload

        def get_payload_as_bytes(self) -> bytes:
            return self.payload

    class Producer:
        """The ring, taking every batch whole."""

        def publish(self, buf: bytearray) -> tuple[int, int]:
            return len(buf), 0

        def should_wake(self) -> bool:
            return False

    unlimited = Rate(1e12, 1e12)
    app = App("/nonexistent/dgdo-bench-control", settings=Settings(positions_rate=unlimited, messages_rate=unlimited))
    link = app.link
    link.attached = link.available = True
    link.producer = Producer()
    app.core.engine_attached()
    app.core.engine_available(True, 10.0)
    listeners = []
    for i in range(conns):
        session = app.core.new_session(DRIVER, f"bench{i}", MSGPACK if binary else JSON)
        listener = AppListener(app, session, WsRoute(DRIVER, f"bench{i}", {}, None))
        transport = StubTransport(binary)
        listener.on_ws_connected(transport)
        listeners.append((listener, transport))
    frames = []
    for k in range(256):
        m = {**MESSAGE, "lat": 38.55 + k * 1e-4, "lon": 68.77 + k * 1e-4}
        frames.append(Frame(msgpack.packb(m) if binary else json.dumps(m, separators=(",", ":")).encode()))
    await asyncio.sleep(0)  # the opens' drain
    return app, listeners, frames


async def run(listeners: list[tuple[Any, Any]], frames: list[Any], rounds: int) -> None:
    k = 0
    for _ in range(rounds):
        for listener, transport in listeners:
            listener.on_ws_frame(transport, frames[k & 255])
            k += 1
        await asyncio.sleep(0)  # the loop turn that drains the core (App._flush_turn) and the link


def instructions(args: argparse.Namespace) -> float:
    def run(rounds: int) -> int:
        return callgrind.instructions([sys.executable, str(HERE), "--root", str(args.root), "--conns", str(args.conns),
                                       "--count", str(rounds), *(["--binary"] if args.binary else [])])

    base = run(1)  # set-up plus one round: the first round warms caches
    return (run(1 + args.rounds) - base) / (args.conns * args.rounds)


async def timed(args: argparse.Namespace, root: Path) -> int:
    app, listeners, frames = await setup(root, args.conns, args.binary)
    if args.count >= 0:
        await run(listeners, frames, args.count)
        return 0
    await run(listeners, frames, 10)
    samples = []
    for _ in range(args.repeats):
        t0 = time.process_time()
        await run(listeners, frames, args.rounds)
        samples.append((time.process_time() - t0) / (args.conns * args.rounds) * 1e6)
    records = app.stats.records_out
    assert records >= args.conns * args.rounds * args.repeats, f"only {records} records reached the link"
    print(f"{root}: {args.conns} drivers {'msgpack' if args.binary else 'JSON'}: {statistics.median(samples):.3f} µs "
          f"CPU per message (median of {args.repeats}: {', '.join(f'{x:.3f}' for x in samples)}; "
          f"{1e6 / statistics.median(samples):,.0f} per CPU-second)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose sidecar runs (default: this one)")
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--binary", action="store_true", help="msgpack frames (default JSON)")
    ap.add_argument("--instructions", action="store_true", help="count instructions per message (callgrind)")
    ap.add_argument("--count", type=int, default=-1, help=argparse.SUPPRESS)  # one callgrind run: this many rounds
    args = ap.parse_args()
    root = Path(args.root).resolve()
    if args.instructions:
        per = instructions(args)
        print(f"{root}: {args.conns} drivers {'msgpack' if args.binary else 'JSON'}: {per:,.0f} instructions per "
              f"message")
        return 0
    import uvloop

    return uvloop.run(timed(args, root))


if __name__ == "__main__":
    sys.exit(main())
