"""Who is connected: connections by id and by (role, app id), and per-recipient mailboxes.

A `Mailbox` outlives the connection: it numbers the reliable messages of
one recipient (`seq`, +1 each) and keeps the most recent ones so that a
client reconnecting with `?last_seq=N` gets what it missed, in order.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

from picows import WSMsgType, WSTransport

from sidecar.events import Role
from sidecar.protocol import JSON, Format, encode
from sidecar.records import Origin
from sidecar.records import Role as WireRole

REPLAY_DEPTH = 256  # reliable messages kept per recipient for resume
MAX_MAILBOXES = 200_000  # least recently used mailboxes beyond this are forgotten

WIRE_ROLE = {Role.DRIVER: WireRole.DRIVER, Role.PASSENGER: WireRole.PASSENGER, Role.ADMIN: WireRole.ADMIN}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Mailbox:
    __slots__ = ("recent", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=REPLAY_DEPTH)

    def stamp(self, message: dict[str, Any]) -> dict[str, Any]:
        """Numbers a reliable message and keeps it for replay."""
        self.seq += 1
        message["seq"] = self.seq
        self.recent.append(message)
        return message

    def since(self, last_seq: int) -> list[dict[str, Any]] | None:
        """The messages after `last_seq`, or None when some are no longer held."""
        if last_seq >= self.seq:
            return []
        if not self.recent or self.recent[0]["seq"] > last_seq + 1:
            return None
        return [m for m in self.recent if m["seq"] > last_seq]


class Connection:
    """One authenticated WebSocket: its identity, format and transport."""

    __slots__ = ("app_id", "conn_id", "fmt", "mailbox", "origin", "resync", "role", "topics", "transport")

    def __init__(self, conn_id: int, role: Role, app_id: str, fmt: Format, worker: int) -> None:
        self.conn_id = conn_id
        self.role = role
        self.app_id = app_id
        self.fmt = fmt
        self.transport: WSTransport | None = None
        self.mailbox: Mailbox | None = None
        self.topics: frozenset[str] = frozenset()
        # The latest status / position / nearby record per type: what a restarted engine
        # needs to know about this connection, replayed after the session is re-announced.
        self.resync: dict[int, bytes] = {}
        self.origin = Origin(conn_id, worker, WIRE_ROLE[role], app_id.encode("ascii"))

    def send(self, message: dict[str, Any]) -> bool:
        """Encodes and writes one message; False when the socket is gone."""
        t = self.transport
        if t is None or t.is_disconnected:
            return False
        data = encode(message, self.fmt)
        t.send(WSMsgType.TEXT if self.fmt is JSON else WSMsgType.BINARY, data)
        return True

    def close(self, code: int, reason: str) -> None:
        t = self.transport
        if t is not None and not t.is_disconnected:
            from picows import WSCloseCode

            t.send_close(WSCloseCode(code) if code in WSCloseCode._value2member_map_ else code, reason.encode())
            t.disconnect()


class Registry:
    """Connections by conn id and by (role, app id); mailboxes by (role, app id)."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self._ids = itertools.count(1)
        self.by_conn: dict[int, Connection] = {}
        self.by_app: dict[tuple[Role, str], Connection] = {}
        self.mailboxes: OrderedDict[tuple[Role, str], Mailbox] = OrderedDict()
        self.admins: set[Connection] = set()

    def new(self, role: Role, app_id: str, fmt: Format) -> Connection:
        return Connection(next(self._ids), role, app_id, fmt, self.worker)

    def add(self, conn: Connection, on_replaced: Callable[[Connection], None]) -> None:
        """Registers a connection; an older one with the same role and id is replaced."""
        key = (conn.role, conn.app_id)
        old = self.by_app.get(key)
        if old is not None and old is not conn:
            self.remove(old)
            on_replaced(old)
        self.by_conn[conn.conn_id] = conn
        self.by_app[key] = conn
        conn.mailbox = self.mailbox(conn.role, conn.app_id)
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

    def mailbox(self, role: Role, app_id: str) -> Mailbox:
        key = (role, app_id)
        box = self.mailboxes.get(key)
        if box is None:
            box = self.mailboxes[key] = Mailbox()
            if len(self.mailboxes) > MAX_MAILBOXES:
                self.mailboxes.popitem(last=False)
        else:
            self.mailboxes.move_to_end(key)
        return box

    def find(self, role: Role, app_id: str) -> Connection | None:
        return self.by_app.get((role, app_id))

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self.by_conn.values()))

    def __len__(self) -> int:
        return len(self.by_conn)
