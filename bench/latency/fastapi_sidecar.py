"""The original plan: a FastAPI/uvicorn WebSocket server fed by ZeroMQ (PULL on ipc://).

    fastapi_sidecar.py --endpoint ipc://@dgdo-x --port P

It keeps the sidecar's logic (sidecar.session.core.SessionCore: the registry,
routing, `encode()`); only the shell around it differs: Starlette's WebSocket
over uvicorn (uvloop, `websockets` protocol) instead of picows. The core is
sans-I/O, so this shell is a second one of its kind: each connection's frames
go to a queue that a writer task sends from, the usual way to send from sync
code in Starlette.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import uvicorn
from alt_sidecar import zmq_pull
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from sidecar.session.core import SessionCore
from sidecar.shell import lifetime
from sidecar.wire.codec import JSON
from sidecar.wire.messages import Role

core = SessionCore(1)
app = FastAPI()


def flush() -> None:
    """Hands each frame the core yielded to its connection's writer queue."""
    for session, data in core.data_to_send():
        queue: asyncio.Queue[bytes] | None = session.io
        if queue is not None:
            queue.put_nowait(data)
    core.records_to_send()  # no engine here: the clients only listen
    core.closes_to_send()


def deliver(data: bytes) -> None:
    core.receive_records(data, len(data))
    flush()


async def _writer(ws: WebSocket, queue: asyncio.Queue[bytes]) -> None:
    while True:
        data = await queue.get()
        await ws.send_text(data.decode())


async def _serve(ws: WebSocket, role: Role, app_id: str) -> None:
    await ws.accept()
    session = core.new_session(role, app_id, JSON)
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    session.io = queue
    core.open(session)
    core.welcome(session, 0, False, time.time_ns() // 1_000_000)  # no engine here to answer the session
    flush()
    writer = asyncio.get_running_loop().create_task(_writer(ws, queue))
    try:
        while True:
            await ws.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        session.io = None
        core.disconnected(session)
        flush()
        writer.cancel()


@app.websocket("/ws/driver/{driver_id}")
async def driver(ws: WebSocket, driver_id: str) -> None:
    await _serve(ws, Role.DRIVER, driver_id)


@app.websocket("/ws/passenger/{passenger_id}")
async def passenger(ws: WebSocket, passenger_id: str) -> None:
    await _serve(ws, Role.PASSENGER, passenger_id)


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    keep = zmq_pull(loop, args.endpoint, deliver)
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
