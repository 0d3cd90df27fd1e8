"""The baseline of bench/push: a bare picows server that writes pre-encoded frames in a loop.

    raw_server.py --port P

Every connection gets a first frame at once (the clients wait for one, as for a welcome). On
`go SECONDS` (stdin) it writes, for that long, passes of one `order_update` and one
`driver_location` to every connection, the same bytes the sidecar writes for the feeder's
records (encoded once, up front), with one picows `send` each (`go SECONDS batched`: both
frames in one write), yielding to the event loop between passes; a connection
whose write buffer is over picows' high-water mark is skipped for that pass (counted). Then it
prints {"sent": frames written, "skipped": ...}. No decoding, no routing, no ring: what is
left is picows' send and the kernel's, per message: the floor under the sidecar's push path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import uvloop  # noqa: E402
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server  # noqa: E402

from bench.push.clients import raise_nofile  # noqa: E402
from sidecar.shell import lifetime  # noqa: E402
from sidecar.shell.server import PICOWS_SERVER_OPTIONS  # noqa: E402
from sidecar.wire.codec import JSON, encode  # noqa: E402
from sidecar.wire.frames import frames  # noqa: E402

# What the sidecar's bridge makes of the feeder's ORDER_UPDATE and DRIVER_POSITION records.
ORDER_UPDATE = encode({"type": "order_update", "order_id": 1000001, "status": "arriving", "ts": 1764090000000,
                       "driver_id": "bench-driver", "seq": 12}, JSON)
DRIVER_LOCATION = encode({"type": "driver_location", "order_id": 1764090000000123456, "driver_id": "bench-driver",
                          "lat": 38.5605, "lon": 68.784, "ts": 1764090000000, "heading": 80.0, "speed_kmh": 31.0},
                         JSON)
WELCOME = b'{"type":"welcome"}'
BOTH = frames(False, [ORDER_UPDATE, DRIVER_LOCATION])  # the two as whole frames, for one write

conns: dict[WSTransport, Conn] = {}


class Conn(WSListener):
    def __init__(self) -> None:
        self.paused = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        conns[transport] = self
        transport.send(WSMsgType.TEXT, WELCOME)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        conns.pop(transport, None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False


async def blast(seconds: float, batched: bool = False) -> dict[str, int]:
    """`batched`: the two frames of a pass in one write (sidecar/wire/frames.py), not one picows send each."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    sent = skipped = 0
    text = WSMsgType.TEXT
    while loop.time() < end:
        for tr, c in list(conns.items()):
            if c.paused:
                skipped += 1
                continue
            if batched:
                tr.underlying_transport.write(BOTH)
            else:
                tr.send(text, ORDER_UPDATE)
                tr.send(text, DRIVER_LOCATION)
            sent += 2
        await asyncio.sleep(0)
    return {"sent": sent, "skipped": skipped}


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    # The sidecar's own picows settings (read buffer, logger, transport), so that the difference is ours.
    opts = dict(PICOWS_SERVER_OPTIONS)
    if os.environ.get("BENCH_AIOFASTNET"):  # to compare picows' two transports
        opts["use_aiofastnet"] = True
    server = await ws_create_server(lambda _req: Conn(), "127.0.0.1", port, enable_auto_ping=False, **opts)
    print("raw-server: ready", file=sys.stderr, flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).strip():
        cmd, *args = line.decode().split()
        if cmd == "go":
            print(json.dumps(await blast(float(args[0]), batched="batched" in args)), flush=True)
        elif cmd == "quit":
            break
    server.close()


if __name__ == "__main__":
    lifetime.die_with_parent_from_env()
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    raise_nofile()
    uvloop.run(main(ap.parse_args().port))
