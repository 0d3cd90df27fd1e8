"""The load client of bench/push and bench/conns: N picows connections that count what they receive.

    clients.py --port P --n N [--role passenger] [--prefix bp] [--no-token] [--cafile PEM]

Its own process (the benches measure the server's CPU and memory, not this one's). It raises
RLIMIT_NOFILE to the hard limit, opens N connections (/ws/ROLE/PREFIX{i}, a token each), waits
for a first frame on every one (the welcome), then prints `ready {"n": N, ...}` on stdout and
answers lines on stdin:

    count  -> {"frames": total data frames received since start, "open": connections still open}
    quit   -> exits (closing every connection)

Frames are counted, not decoded: one picows callback and an integer add each. With `--cafile` the
connections are wss://, verifying the server against that certificate (bench/tls).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "latency"))
import common  # noqa: E402
import uvloop  # noqa: E402
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect  # noqa: E402

from sidecar.shell import lifetime  # noqa: E402


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Counter(WSListener):
    total = 0  # every frame of every connection (one process, one thread)
    open = 0

    def __init__(self, welcomed: asyncio.Future[None]) -> None:
        self.welcomed = welcomed

    def on_ws_connected(self, transport: WSTransport) -> None:
        Counter.open += 1

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        t = frame.msg_type
        if t is WSMsgType.TEXT or t is WSMsgType.BINARY:
            Counter.total += 1
            if not self.welcomed.done():
                self.welcomed.set_result(None)
        elif t is WSMsgType.CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        Counter.open -= 1


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    transports: list[WSTransport] = []
    t0 = time.monotonic()
    welcomes = []
    tls = ssl.create_default_context(cafile=args.cafile) if args.cafile else None

    async def one(i: int) -> None:
        app_id = f"{args.prefix}{i}"
        url = f"{'wss' if tls else 'ws'}://127.0.0.1:{args.port}/ws/{args.role}/{app_id}"
        if not args.no_token:
            url += f"?token={common.token(args.role, app_id)}"
        welcomed = loop.create_future()
        tr, _ = await ws_connect(lambda: Counter(welcomed), url, enable_auto_ping=False, ssl_context=tls)
        transports.append(tr)
        welcomes.append(welcomed)

    # In waves: the server's accept backlog is finite, and so is the patience of a SYN queue.
    for start in range(0, args.n, args.wave):
        await asyncio.gather(*(one(i) for i in range(start, min(args.n, start + args.wave))))
    await asyncio.wait_for(asyncio.gather(*welcomes), 60)
    print("ready " + json.dumps({"n": len(transports), "connect_s": round(time.monotonic() - t0, 2)}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).strip():
        if line == b"count":
            print(json.dumps({"frames": Counter.total, "open": Counter.open}), flush=True)
        elif line == b"quit":
            break
    for tr in transports:
        tr.disconnect()


if __name__ == "__main__":
    lifetime.die_with_parent_from_env()
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--role", default="passenger")
    ap.add_argument("--prefix", default="bp")
    ap.add_argument("--wave", type=int, default=200, help="connections opened at once")
    ap.add_argument("--no-token", action="store_true")
    ap.add_argument("--cafile", default="", help="connect over wss://, trusting this certificate")
    a = ap.parse_args()
    raise_nofile()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    uvloop.run(main(a))
