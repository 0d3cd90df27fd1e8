"""The two relays the passenger path is measured against (bench/latency/passenger_path.py).

    relays.py --kind picows|fastapi --port P

Both pair /ws/driver/pd{i} with /ws/passenger/pp{i} and hold no engine, no auth, no ring:

* `picows`: the bare floor. A driver's frame is written to its passenger's socket as it came
  (the same bytes; nothing parsed, nothing built): one picows callback and one send.
* `fastapi`: what a team would write with the original plan's WebSocket layer (FastAPI on
  uvicorn, uvloop, the `websockets` protocol): `receive_text`, `json.loads`, a
  `driver_location` message built for the passenger and `send_text(json.dumps(...))`.

Every connection gets a `{"type": "welcome"}` first, as from the sidecar.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: F401  (puts the repo root on sys.path)
import uvicorn
import uvloop
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from sidecar.shell import lifetime

WELCOME = b'{"type":"welcome"}'


# ---- picows -------------------------------------------------------------------------------------

passengers: dict[str, WSTransport] = {}


class Driver(WSListener):
    def __init__(self, pair: str) -> None:
        self.pair = pair

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(WSMsgType.TEXT, WELCOME)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            p = passengers.get(self.pair)
            if p is not None:
                p.send(WSMsgType.TEXT, frame.get_payload_as_bytes())
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()


class Passenger(WSListener):
    def __init__(self, pair: str) -> None:
        self.pair = pair

    def on_ws_connected(self, transport: WSTransport) -> None:
        passengers[self.pair] = transport
        transport.send(WSMsgType.TEXT, WELCOME)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if passengers.get(self.pair) is transport:
            del passengers[self.pair]


def picows_listener(request: WSUpgradeRequest) -> WSListener | None:
    parts = request.path.decode().split("?")[0].strip("/").split("/")  # ws / driver / pd7
    if len(parts) != 3:
        return None
    pair = parts[2][2:]
    return Driver(pair) if parts[1] == "driver" else Passenger(pair)


async def serve_picows(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await ws_create_server(picows_listener, "127.0.0.1", port, enable_auto_ping=False)
    print(f"relay: picows on {port}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()


# ---- FastAPI ------------------------------------------------------------------------------------


def fastapi_app() -> FastAPI:
    app = FastAPI()
    riders: dict[str, WebSocket] = {}

    @app.websocket("/ws/passenger/{app_id}")
    async def passenger(ws: WebSocket, app_id: str) -> None:
        await ws.accept()
        pair = app_id[2:]
        riders[pair] = ws
        await ws.send_text(WELCOME.decode())
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.receive_text()
        if riders.get(pair) is ws:
            del riders[pair]

    @app.websocket("/ws/driver/{app_id}")
    async def driver(ws: WebSocket, app_id: str) -> None:
        await ws.accept()
        pair = app_id[2:]
        await ws.send_text(WELCOME.decode())
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                m = json.loads(await ws.receive_text())
                rider = riders.get(pair)
                if rider is not None and m.get("type") == "driver_location":
                    out = {"type": "driver_location", "order_id": 1, "driver_id": app_id, "lat": m["lat"],
                           "lon": m["lon"], "ts": time.time_ns() // 1_000_000}
                    if "heading" in m:
                        out["heading"] = m["heading"]
                    if "speed_kmh" in m:
                        out["speed_kmh"] = m["speed_kmh"]
                    await rider.send_text(json.dumps(out))

    return app


def serve_fastapi(port: int) -> None:
    print(f"relay: fastapi on {port}", file=sys.stderr, flush=True)
    uvicorn.run(fastapi_app(), host="127.0.0.1", port=port, loop="uvloop", ws="websockets", log_level="warning")


if __name__ == "__main__":
    lifetime.die_with_parent_from_env()  # the bench runner may be killed with -9: end with it
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["picows", "fastapi"], required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    if args.kind == "picows":
        uvloop.run(serve_picows(args.port))
    else:
        serve_fastapi(args.port)
