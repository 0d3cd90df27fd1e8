"""A test client on the independent `websockets` library: send maps, await typed messages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect


class AppClient:
    def __init__(self, ws: ClientConnection, binary: bool = False) -> None:
        self.ws = ws
        self.binary = binary
        self.seen: list[dict[str, Any]] = []  # every message received, in order

    @classmethod
    async def open(cls, url: str, *, subprotocol: str | None = None, **kw: Any) -> AppClient:
        ws = await connect(url, subprotocols=[subprotocol] if subprotocol else None, **kw)
        return cls(ws, binary=subprotocol == "dgdo.v1.msgpack")

    async def send(self, message: dict[str, Any]) -> None:
        if self.binary:
            await self.ws.send(msgpack.packb(message))
        else:
            await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        m = msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)
        self.seen.append(m)
        return m

    async def expect(self, type_: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """The next message of `type_` whose fields match, skipping others (positions, snapshots)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no {type_} {fields}; saw {[m.get('type') for m in self.seen[-10:]]}")
            m = await self.recv(left)
            if m.get("type") == type_ and all(m.get(k) == v for k, v in fields.items()):
                return m

    async def close(self) -> None:
        await self.ws.close()
