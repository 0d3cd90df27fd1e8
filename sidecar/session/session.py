"""One client connection as the session core sees it: who, which format, what was delivered.

A `Session` holds no transport. The shell that owns the socket keeps its handle in
`io`, which the core never reads; the core names a session in what it yields
(`(session, frame)`), and the shell writes to `session.io`.
"""

from __future__ import annotations

from typing import Any

from sidecar.engine.records import ID_SIZE, Origin
from sidecar.engine.records import Role as WireRole
from sidecar.session.limits import Outbox
from sidecar.wire.codec import MSGPACK, Format
from sidecar.wire.messages import Role

NO_TOPICS: frozenset[str] = frozenset()  # shared: each `frozenset()` call is a new 216-byte object
WIRE_ROLE = {Role.DRIVER: WireRole.DRIVER, Role.PASSENGER: WireRole.PASSENGER, Role.ADMIN: WireRole.ADMIN}


class Session:
    """Identity, format, delivery bookkeeping and flow state of one connection.

    Delivery: `welcomed` turns true when the engine's SESSION_STATE for this session
    arrives and the welcome is sent; until then nothing else is delivered to it (what
    the engine committed meanwhile is in the replay or snapshot right behind the
    SESSION_STATE). `last_seq` is the highest seq delivered (or the welcome's), None
    before the welcome when the app gave no `?last_seq`. `resyncing`: a welcomed session
    re-announced to a (re)attached engine, until that engine's SESSION_STATE for it: no reliable
    message is delivered meanwhile. One the engine numbered before it took the announcement may
    come after a gap (what the dead engine committed but never published), and taking it would
    raise `last_seq` over the gap, whose replay behind the SESSION_STATE would then be dropped
    as delivered; that replay (or snapshot) brings it, in order.

    Output: `wbuf` holds the frames owed to the client in the current drain, until the shell
    takes them (one buffer, one write).

    Flow: while `paused` (the socket's write buffer is above its high-water mark) the
    core queues messages in `outbox` (positions coalesced, reliable ones in order).
    `closing`: a CLOSE is on its way, nothing more is sent. `gone`: the socket is closed.

    Resync: the latest status / position / nearby record per type, what a restarted
    engine must be told about this session after it is re-announced.

    `expires`: when its token stops opening connections (seconds since the epoch: the token's `exp`
    plus the clock skew the upgrade tolerates, wire/auth.py `expires_at`); the core closes the
    session then (4401, SessionCore.tick). None: no token (auth off), or its deadline is past and
    out of the core's heap.

    `opened_ns`: when the upgrade was taken (CLOCK_MONOTONIC, before the 101 went out), sent
    with every announcement: of two connections of one app on two workers, the engine keeps
    the one opened later, whichever announcement reaches it first.
    """

    __slots__ = ("app_id", "binary", "closing", "conn_id", "expires", "fmt", "gone", "io", "last_seq", "opened_ns",
                 "origin", "outbox", "paused", "resync", "resyncing", "role", "topics", "wbuf", "welcomed",
                 "wire_id", "wire_role")

    def __init__(self, conn_id: int, role: Role, app_id: str, fmt: Format, worker: int,
                 last_seq: int | None = None, opened_ns: int = 0, expires: int | None = None) -> None:
        self.conn_id = conn_id
        self.expires = expires
        self.opened_ns = opened_ns
        self.role = role
        self.app_id = app_id
        self.fmt = fmt
        self.binary = fmt is MSGPACK  # the frame type the shell writes
        self.last_seq = last_seq
        self.welcomed = False
        self.resyncing = False
        self.topics = NO_TOPICS
        self.resync: dict[int, bytes] | None = None  # made by the first record kept: most sessions keep none
        self.wire_role = int(WIRE_ROLE[role])  # a plain int: struct packs an IntEnum ~60 ns slower, every record
        # As a record's dgdo_id field holds it (NUL-padded): the registry's key, and the origin's actor
        # too (a struct "40s" packs it as it packs the unpadded id: one bytes object, not two).
        self.wire_id = app_id.encode("ascii").ljust(ID_SIZE, b"\0")
        self.origin = Origin(conn_id, worker, self.wire_role, self.wire_id)
        self.outbox: Outbox | None = None  # made on the first pause: most sessions never pause
        self.paused = False
        self.closing = False
        self.gone = False
        self.io: Any = None
        self.wbuf: bytearray | None = None  # this drain's frames, whole, for one write (SessionCore.writes_to_send)

    def keep_for_resync(self, type_: int, body: bytes) -> None:
        """Keeps `body` as the latest record of its type, for a re-attached engine (`resync`)."""
        resync = self.resync
        if resync is None:
            resync = self.resync = {}
        resync[type_] = body

    def __repr__(self) -> str:
        return f"<Session {self.conn_id} {self.role.value} {self.app_id}>"
