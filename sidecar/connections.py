"""Who is connected: connections by id and by (role, app id).

The sidecar keeps no delivery state that matters: the engine numbers each recipient's
reliable messages (`seq`, +1 each) and keeps the recent ones, so any worker, or a
restarted sidecar, resumes any client. A `Connection` only remembers, in memory, the
highest seq it delivered (`last_seq`): re-announced to an engine that (re)attaches, it
lets the engine replay what it committed but never delivered here.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from picows import WSCloseCode, WSMsgType, WSTransport

from sidecar.events import Role
from sidecar.limits import MAX_QUEUED, Outbox
from sidecar.protocol import JSON, Format, encode
from sidecar.records import Origin
from sidecar.records import Role as WireRole

WIRE_ROLE = {Role.DRIVER: WireRole.DRIVER, Role.PASSENGER: WireRole.PASSENGER, Role.ADMIN: WireRole.ADMIN}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


CLOSE_WAIT_S = 2.0  # how long a CLOSE we sent waits for the client's echo (RFC 6455 §7.1.1)
CLOSE_GRACE_S = 10.0  # how long a closing connection may take to flush before it is aborted
CLOSE_SLOW_READER = 4008  # the client stopped reading: what it missed waits in the engine (?last_seq)
_CLOSE_CODES = {c.value: c for c in WSCloseCode}


class Connection:
    """One authenticated WebSocket: its identity, format, transport and outbound flow state.

    Slow readers (DESIGN §4 "Delivery"): the server sets the transport's write-buffer
    watermarks; above the high one picows calls `pause()`. While paused nothing is
    written: messages go to the `Outbox` (positions coalesced, reliable ones queued),
    and `resume()` sends them in order. A client that owes more than the outbox holds
    is closed with 4008 by `on_overflow`; reliable messages are never dropped silently:
    the engine keeps them for a resume with `?last_seq`.

    Delivery state: `welcomed` turns true when the engine's SESSION_STATE for this
    connection arrives and the welcome goes out; until then nothing else is delivered to
    it (what the engine sent meanwhile is in the replay or the snapshot that follows the
    SESSION_STATE). `last_seq` is the highest seq delivered (or the welcome's), None
    before the welcome when the app gave no `?last_seq`.
    """

    __slots__ = ("app_id", "closing", "conn_id", "fmt", "last_seq", "on_overflow", "origin", "outbox", "paused",
                 "resync", "role", "topics", "transport", "welcomed")

    def __init__(self, conn_id: int, role: Role, app_id: str, fmt: Format, worker: int,
                 last_seq: int | None = None) -> None:
        self.conn_id = conn_id
        self.role = role
        self.app_id = app_id
        self.fmt = fmt
        self.transport: WSTransport | None = None
        self.last_seq = last_seq
        self.welcomed = False
        self.topics: frozenset[str] = frozenset()
        # The latest status / position / nearby record per type: what a restarted engine
        # needs to know about this connection, replayed after the session is re-announced.
        self.resync: dict[int, bytes] = {}
        self.origin = Origin(conn_id, worker, WIRE_ROLE[role], app_id.encode("ascii"))
        self.outbox: Outbox | None = None  # created on the first pause
        self.paused = False
        self.closing = False  # a CLOSE was sent: nothing more is written
        self.on_overflow: Callable[[Connection], None] = lambda conn: conn.close(CLOSE_SLOW_READER, "slow reader")

    def send(self, message: dict[str, Any]) -> bool:
        """Encodes and writes one message (or queues it while paused); False when the socket is gone."""
        t = self.transport
        if t is None or self.closing or t.is_disconnected:
            return False
        if self.paused:
            assert self.outbox is not None
            if not self.outbox.put(message):
                self.on_overflow(self)
                return False
            return True
        t.send(WSMsgType.TEXT if self.fmt is JSON else WSMsgType.BINARY, encode(message, self.fmt))
        return True

    def pause(self, max_queued: int = MAX_QUEUED) -> None:
        """The transport's write buffer went above its high-water mark."""
        self.paused = True
        if self.outbox is None:  # most connections never pause: no outbox until one does
            self.outbox = Outbox(max_queued)

    def resume(self) -> None:
        """The write buffer drained below its low-water mark: send what is owed, oldest first."""
        self.paused = False
        box = self.outbox
        if box is None:
            return
        for message in box.drain():
            if not self.send(message) or self.paused:
                # Paused again (this write crossed the mark) or gone: the rest stays queued.
                break

    def close(self, code: int, reason: str) -> None:
        t = self.transport
        if self.outbox is not None:
            self.outbox.pending.clear()  # reliable ones stay in the engine's history; the rest is stale
        if t is not None and not self.closing and not t.is_disconnected:
            self.closing = True
            t.send_close(_CLOSE_CODES.get(code, code), reason.encode())  # type: ignore[arg-type]
            # Not disconnect() now: closing a socket with unread input sends RST, and the client's
            # kernel then drops our CLOSE frame unread (a flooding client always has input in flight).
            # The client's CLOSE echo normally ends it (AppListener); these only bound the wait.
            loop = asyncio.get_running_loop()
            loop.call_later(CLOSE_WAIT_S, t.disconnect)  # graceful: buffered frames, the CLOSE, then FIN
            loop.call_later(CLOSE_GRACE_S, t.disconnect, False)  # a client that never reads: abort


def broadcast(conns: Iterable[Connection], message: dict[str, Any]) -> int:
    """Sends one message to many connections, encoding it once per format.

    No backpressure of its own: a paused connection queues the map in its outbox (where
    latest-wins types coalesce), a closing or closed one is skipped. Returns how many took it.
    """
    encoded: dict[Format, bytes] = {}
    n = 0
    for conn in conns:
        t = conn.transport
        if t is None or conn.closing or t.is_disconnected:
            continue
        if conn.paused:
            n += conn.send(message)
            continue
        data = encoded.get(conn.fmt)
        if data is None:
            data = encoded[conn.fmt] = encode(message, conn.fmt)
        t.send(WSMsgType.TEXT if conn.fmt is JSON else WSMsgType.BINARY, data)
        n += 1
    return n


class Registry:
    """Connections by conn id and by (role, app id)."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self._ids = itertools.count(1)
        self.by_conn: dict[int, Connection] = {}
        self.by_app: dict[tuple[Role, str], Connection] = {}
        self.admins: set[Connection] = set()

    def new(self, role: Role, app_id: str, fmt: Format, last_seq: int | None = None) -> Connection:
        return Connection(next(self._ids), role, app_id, fmt, self.worker, last_seq)

    def add(self, conn: Connection, on_replaced: Callable[[Connection], None]) -> None:
        """Registers a connection; an older one with the same role and id is replaced."""
        key = (conn.role, conn.app_id)
        old = self.by_app.get(key)
        if old is not None and old is not conn:
            self.remove(old)
            on_replaced(old)
        self.by_conn[conn.conn_id] = conn
        self.by_app[key] = conn
        if conn.role is Role.ADMIN:
            self.admins.add(conn)

    def remove(self, conn: Connection) -> bool:
        """Forgets a connection; False when it was not (or no longer) registered."""
        if self.by_conn.pop(conn.conn_id, None) is None:
            return False
        key = (conn.role, conn.app_id)
        if self.by_app.get(key) is conn:
            del self.by_app[key]
        self.admins.discard(conn)
        return True

    def find(self, role: Role, app_id: str) -> Connection | None:
        return self.by_app.get((role, app_id))

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self.by_conn.values()))

    def __len__(self) -> int:
        return len(self.by_conn)
