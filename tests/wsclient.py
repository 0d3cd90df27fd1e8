"""A test client on the independent `websockets` library: send maps, await typed messages.

Messages are encoded and decoded as the app client does (dgdo_apps/client.py: the `json` and
`msgpack` packages, never the server's codec); only the WebSocket library differs.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.client import ClientConnection, connect

from dgdo_apps.client import decode, encode

AUTO = "auto"  # mint a token for the URL's role and id (the tests' secret)


def with_token(url: str, token: str | None = AUTO) -> str:
    """`url` with `?token=` added: minted for the path's role and id when `token` is AUTO, none when None.

    A URL that already carries a token is left alone.
    """
    parts = urlsplit(url)
    if token is None or "token" in parse_qs(parts.query):
        return url
    if token == AUTO:
        from conftest import mint

        segments = parts.path.strip("/").split("/")  # ws / driver / d1, or ws / admin
        role, sub = (segments[1], segments[2]) if len(segments) == 3 else ("admin", "admin")
        token = mint(role, sub)
    return url + ("&" if parts.query else "?") + f"token={token}"


class Expecting:
    """`expect()` for a client that has `recv()` and keeps every message in `seen`."""

    seen: list[dict[str, Any]]

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        raise NotImplementedError

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


class AppClient(Expecting):
    def __init__(self, ws: ClientConnection, binary: bool = False) -> None:
        self.ws = ws
        self.binary = binary
        self.seen: list[dict[str, Any]] = []  # every message received, in order

    @classmethod
    async def open(cls, url: str, *, subprotocol: str | None = None, token: str | None = AUTO,
                   **kw: Any) -> AppClient:
        """Connects; `token` AUTO mints one for the path, None sends none, a string is sent as `?token=`."""
        ws = await connect(with_token(url, token), subprotocols=[subprotocol] if subprotocol else None, **kw)
        return cls(ws, binary=subprotocol == "dgdo.v1.msgpack")

    async def send(self, message: dict[str, Any]) -> None:
        data = encode(message, self.binary)
        await self.ws.send(data if self.binary else data.decode())

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        m = decode(raw, True) if isinstance(raw, bytes) else decode(raw.encode())
        self.seen.append(m)
        return m

    async def close(self) -> None:
        await self.ws.close()
