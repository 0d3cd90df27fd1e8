"""The original plan: a FastAPI/uvicorn WebSocket server fed by ZeroMQ (PULL on ipc://).

    fastapi_sidecar.py --endpoint ipc://@dgdo-x --port P

It keeps the sidecar's logic (sidecar.bridge.Bridge, the Registry and
`encode()`); only the WebSocket layer is Starlette's over
uvicorn (uvloop, `websockets` protocol) instead of picows. Each connection
gets a transport adapter with the picows `send()` shape that queues frames
for a writer task, the usual way to send from sync code in Starlette.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import uvicorn
from alt_sidecar import zmq_pull
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from picows import WSMsgType

from sidecar import lifetime
from sidecar.bridge import Bridge
from sidecar.connections import Registry
from sidecar.events import Role
from sidecar.protocol import JSON
from sidecar.stats import SidecarStats

stats = SidecarStats()
registry = Registry(1)
bridge = Bridge(registry, stats)
app = FastAPI()


class QueueTransport:
    """picows-shaped transport over a Starlette WebSocket."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[tuple[WSMsgType, bytes]] = asyncio.Queue()
        self.is_disconnected = False

    def send(self, msg_type: WSMsgType, data: bytes) -> None:
        self.queue.put_nowait((msg_type, data))

    async def writer(self) -> None:
        while True:
            t, data = await self.queue.get()
            if t is WSMsgType.TEXT:
                await self.ws.send_text(data.decode())
            else:
                await self.ws.send_bytes(data)


async def _serve(ws: WebSocket, role: Role, app_id: str) -> None:
    await ws.accept()
    conn = registry.new(role, app_id, JSON)
    transport = QueueTransport(ws)
    conn.transport = transport  # type: ignore[assignment]
    registry.add(conn, on_replaced=lambda old: None)
    bridge.welcome(conn, 0, False, time.time_ns() // 1_000_000)  # no engine here to answer the session
    writer = asyncio.get_running_loop().create_task(transport.writer())
    try:
        while True:
            await ws.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        transport.is_disconnected = True
        registry.remove(conn)
        writer.cancel()


@app.websocket("/ws/driver/{driver_id}")
async def driver(ws: WebSocket, driver_id: str) -> None:
    await _serve(ws, Role.DRIVER, driver_id)


@app.websocket("/ws/passenger/{passenger_id}")
async def passenger(ws: WebSocket, passenger_id: str) -> None:
    await _serve(ws, Role.PASSENGER, passenger_id)


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    keep = zmq_pull(loop, args.endpoint, lambda data: bridge.on_records(common.Chunk(data), len(data)))
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, loop="none", ws="websockets-sansio",
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    print(f"fastapi-sidecar: ready on port {args.port}", file=sys.stderr, flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await server.serve()
    del keep


if __name__ == "__main__":
    import uvloop

    lifetime.die_with_parent_from_env()  # the bench runner may be killed with -9: end with it
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--port", type=int, required=True)
    uvloop.run(main(ap.parse_args()))
