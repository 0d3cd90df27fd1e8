"""The session core: everything the sidecar decides, with no I/O (websockets' Protocol shape).

Feed it, then drain it. The shells (shell/server.py for the sockets, engine/link.py
for the rings) call the feed methods and then write what the drain methods return;
nothing here touches a socket, an event loop or the ring, so tests drive it with
bytes and typed values only.

Feed (inputs)
    sessions:  new_session() / open() / disconnected(); pause() / resume() of a
               session's writing; close() / close_for() a session
    client:    receive(session, request) a typed message; refuse() an undecodable
               or invalid one; rate_limited(); too_large()
    engine:    receive_records(buffer, nbytes) a batch of whole records;
               engine_attached() / engine_detached(carried) / engine_available(up);
               not_taken(record, ...) for a record the link could not take
    time:      tick() (sessions whose token expired closed with 4401; system_stats to
               subscribed admins), feed_tick() (the dashboard's `fleet` deltas,
               session/admin_feed.py)

Drain (outputs), each emptied as it is read
    records_to_send()  records for the engine, in order (`ToEngine`)
    writes_to_send()   (session, buffer) pairs: per session one bytearray of whole WebSocket
                       frames, its messages in order (data_to_send(): the same as one
                       (session, payload) pair per message, for tests)
    closes_to_send()   (session, close code, reason): after that session's frames

The push path (engine records -> frames) is the hot one: per drain, each record is
unpacked in place, its message built as a typed Struct (wire/pushes.py), encoded by
msgspec into one scratch buffer the whole drain reuses, and appended as a frame to its
session's buffer of this drain, so one drain costs one bytearray and one write per client
and no bytes object per message. A paused session's outbox keeps the typed message and
encodes it when the session resumes (it counts in `messages_out` and push latency then, when it
is written, not when it is owed); a broadcast (admin topics) is encoded once per format
and copied into each subscriber's buffer. `_order_update` and `_driver_position` inline
what `_deliver` does, and `_deliver` what `_frame` does: on CPython a call costs as much as the
framing (callgrind, order updates and positions to 300 sessions: ~500 instructions a message
more when both handlers call `_deliver` -> `_frame`, ~2 % of the core's). Keep the copies
identical: tests/test_pushes.py reads the frames of each back, in both formats.

What it owns: the registry (sessions by conn id and by role + id, the admins), the
correlations of commands awaiting the engine's answer, the resync state a
re-attached engine must be told (sessions and their latest status / position /
nearby records), the admin fan-out by topic (and the fleet model the dashboard
draws, fed as traffic passes), and the delivery bookkeeping the engine
leaves to the sidecar (welcome gating, `last_seq` per session, de-duplication).

Vocabulary, one meaning each across Python and C++:
    publish  put records into a ring for the other process (the engine publishes its
             outputs to each worker's out ring; the sidecar publishes commands to the
             in ring). Here: what `records_to_send()` yields, for the link to publish.
    deliver  route a message to its recipient under the delivery contract: the engine
             numbers reliable messages per recipient and keeps them (dgdo::Deliveries);
             the core picks the recipient's session, holds everything until its welcome,
             and never delivers a seq twice (`_deliver`).
    send     put one frame on one client's WebSocket: the core frames what to send
             (`writes_to_send()`), the server shell writes it.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from msgspec import UNSET, Struct

from sidecar.engine import records as R
from sidecar.engine.records import ID_NAMES, Result, T, id_str
from sidecar.session import commands
from sidecar.session.admin_feed import AdminFeed, RateWindow
from sidecar.session.limits import MAX_QUEUED, Outbox
from sidecar.session.session import WIRE_ROLE, Session
from sidecar.session.stats import EngineSnapshot, LinkGauges, SidecarStats
from sidecar.wire.codec import ENCODE_INTO, Format, Request, encode
from sidecar.wire.errors import EXPIRED, ClientError, ErrorCode
from sidecar.wire.frames import HEADERS, header, payloads
from sidecar.wire.messages import (
    AdminSubscribe,
    DriverLocation,
    DriverStatus,
    Nearby,
    NearbySubscribe,
    NearbyUnsubscribe,
    OrderAction,
    OrderReject,
    Ping,
    RideRequest,
    Role,
)
from sidecar.wire.pushes import (
    CancelOrder,
    DriverPosition,
    EstimateUpdate,
    NewOrder,
    OrderUpdate,
    Point,
    Push,
    round_to,
)

log = logging.getLogger("dgdo.session")

# Close codes the core asks for (the server shell adds 1000 for a client's CLOSE and 1001 at shutdown).
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_TEXT = 1007  # a text message that is not UTF-8 (RFC 6455 §8.1)
CLOSE_POLICY = 1008  # flooding past the rate limit
CLOSE_TOO_BIG = 1009  # a message over the size or fragment cap
CLOSE_REPLACED = 4001  # a newer connection with the same role and id took over
CLOSE_SLOW_READER = 4008  # the client stopped reading: what it missed waits in the engine (?last_seq)
# The token that opened it expired: 4401, as a browser's upgrade with that token is refused (wire/auth.py
# CLOSE_UNAUTHORIZED; not imported: PyJWT loads socket, and the core loads no I/O module).
CLOSE_EXPIRED = 4401
EXPIRED_REASON = f"{ErrorCode.UNAUTHORIZED.value}: {EXPIRED}"  # as shell/refusal.py words a refusal's close
# Entries of the deadline heap left by sessions gone before their token expired are dropped all at
# once when they are over half of it and more than this: the heap stays within twice the sessions.
STALE_DEADLINES_MIN = 1024
# A deadline heap entry: the deadline (whole seconds since the epoch) above the conn id's bits.
# Conn ids count connections since the process started: 2**40 is a thousand years at 30k a second.
_CONN_BITS = 40
_CONN_MASK = (1 << _CONN_BITS) - 1
EXPIRED_LOG_EACH = 8  # expiry closes in one tick logged to admins one by one; more: one line for all

ROLE_OF_WIRE = {R.Role.DRIVER: Role.DRIVER, R.Role.PASSENGER: Role.PASSENGER, R.Role.ADMIN: Role.ADMIN}
# The push path's tables and constants are keyed by plain ints, not the IntEnum members: a record's
# fields unpack as ints, and an int finds an IntEnum key (or equals an IntEnum) only through a rich
# comparison, where an int key matches by identity (small ints are shared) and `==` of two ints is
# the interpreter's fast path (~450 instructions per pushed message, bench/push/core_cost.py).
STATUS_NAME = {int(s): s.name.lower() for s in R.OrderStatus}
REASON_NAME = {int(r): r.name.lower() for r in R.Reason}
RESULT_ERROR = {
    Result.CONFLICT: (ErrorCode.CONFLICT, "invalid transition for the order's current state"),
    Result.NOT_FOUND: (ErrorCode.NOT_FOUND, "order_id: no such order"),
    Result.FORBIDDEN: (ErrorCode.FORBIDDEN, "order_id: not your order"),
    Result.BAD_MESSAGE: (ErrorCode.BAD_MESSAGE, "refused by the engine"),
}
_HEADER = R.HEADER.unpack_from
_ORDER_UPDATE = R.OUT_ORDER_UPDATE.unpack_from
_DRIVER_POSITION = R.OUT_DRIVER_POSITION.unpack_from
_NEW_ORDER = R.OUT_NEW_ORDER.unpack_from
_DRIVER = int(R.Role.DRIVER)
_PASSENGER = int(R.Role.PASSENGER)
_IN_DRIVER_LOCATION = int(T.IN_DRIVER_LOCATION)
_PACK_DRIVER_LOCATION = R.IN_DRIVER_LOCATION.pack  # R.driver_location's, called directly on the hot path
# FLEET entries per record: 72 + 64 x 32 = 2,120 bytes, within the record cap of any ring of 32 KiB or more.
FLEET_CHUNK = 32
_NO_GAUGES = LinkGauges()
# An order in these states has a driver whose positions the engine forwards to its passenger.
_ON_TRIP = frozenset(int(s) for s in (R.OrderStatus.ACCEPTED, R.OrderStatus.ARRIVING, R.OrderStatus.ARRIVED,
                                       R.OrderStatus.STARTED))
Message = Push | dict[str, Any]  # a server message: typed on the push path (wire/pushes.py), else a map
# A session's open and close: nobody could send them again, so the link takes them even behind a
# backlog past its bounds (only commands, which an app can retry, are refused `overloaded`).
ANNOUNCEMENTS = frozenset({T.IN_SESSION_OPEN, T.IN_SESSION_CLOSE})


class ToEngine(Struct, gc=False):
    """One record for the engine, and who to answer should the link not take it.

    `latest` names a latest-wins stream (a driver's positions): behind a backlog only the
    newest record per key waits. `corr` != 0: the engine will answer (the link may spin
    for it). `session` None: nobody to answer (session announcements, resync).
    `reply_due`: an answer comes back through this worker within microseconds though no
    one waits for it by corr (a position of a driver whose passenger is connected here:
    the engine forwards it to them), so the link may spin for it too.
    """

    type: int
    body: bytes
    corr: int = 0
    latest: object = None
    session: Session | None = None
    request_id: str | int | None = None
    reply_due: bool = False


class PendingReply:
    """A command waiting for the engine's COMMAND_RESULT."""

    __slots__ = ("conflict", "request_id", "session")

    def __init__(self, session: Session, request_id: str | int | None, conflict: str | None = None) -> None:
        self.session = session
        self.request_id = request_id
        self.conflict = conflict


class SessionCore:
    """Args:
    worker: this sidecar worker's id (stamped on every record).
    stats: the counters to keep (the shells read them for /metrics and the status line).
    max_queued: messages a paused session may owe before it is closed with 4008.
    gauges: reads the engine link's gauges for `system_stats` (a pure read, no I/O).
    wall_ns, mono_ns: the clocks (CLOCK_REALTIME for `ts` and push latency, CLOCK_MONOTONIC
        for records' receive stamps and rates); tests pass their own.
    """

    def __init__(self, worker: int, stats: SidecarStats | None = None, *, max_queued: int = MAX_QUEUED,
                 gauges: Callable[[], LinkGauges] = lambda: _NO_GAUGES,
                 wall_ns: Callable[[], int] = time.time_ns, mono_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.worker = worker
        self.stats = stats if stats is not None else SidecarStats()
        self.max_queued = max_queued
        self.gauges = gauges
        self.wall_ns = wall_ns
        self.mono_ns = mono_ns
        # registry
        self._next_conn = 0
        self.by_conn: dict[int, Session] = {}
        self.by_wire: dict[int, dict[bytes, Session]] = {int(r): {} for r in WIRE_ROLE.values()}  # role -> padded id
        self.admins: set[Session] = set()
        # Token expiry: one entry per session opened with a token, soonest first: an int, the deadline
        # above the conn id (a tuple and its two ints cost ~70 bytes more a connection: README,
        # `bench-conns`). A tick looks at the top only, so 50k connections cost
        # nothing until one is due (no timer each). A session that goes earlier leaves its entry (a
        # heap cannot drop one from the middle): counted in `_stale_deadlines`, skipped when it comes
        # up, swept out when they pile up.
        self._deadlines: list[int] = []
        self._stale_deadlines = 0
        # engine
        self.attached = False
        self.available = False  # attached and beating
        self.pending: dict[int, PendingReply] = {}
        self._corr = 0
        self._announced: dict[int, R.Origin] = {}  # while detached: the sessions there were at the detach
        # Drivers on this worker with a live trip: driver wire id -> passenger wire id. When that
        # passenger is here too, the driver's positions are answered through this worker at once
        # (ToEngine.reply_due). One entry per driver at most. Set by the driver's order updates, or
        # by a position of it forwarded to a passenger here (a driver resumed mid-trip with nothing
        # missed is told nothing else); gone with a trip-ending update, a cancel_order (a driver
        # that gave up its trip hears nothing more), the driver's session or the engine.
        self._trips: dict[bytes, bytes] = {}
        # outputs
        self._records: list[ToEngine] = []
        # Frames to send: each session's are appended to its own buffer (`Session.wbuf`, made by its
        # first frame of a drain: one per session per drain, one write), the sessions listed here in
        # the order they got their first. Messages are encoded into `_scratch`, reused by every one.
        self._to_write: list[Session] = []
        self._scratch = bytearray()
        self._cuts: dict[Session, list[tuple[int, int]]] = {}  # frames replaced by a newer position: cut out
        self._closes: list[tuple[Session, int, str]] = []
        # per drain of engine records
        self._position_at: dict[tuple[int, bytes, int], tuple[int, int, int]] = {}  # -> frame start, end, commit
        self._commits: list[int] = []  # commit stamps of what this drain delivered: push latency at its end
        self._now_s = 0.0  # CLOCK_MONOTONIC seconds at the start of the drain (the admin feed's clock)
        # the dashboard's model of the fleet (`fleet` topic), fed as traffic passes
        self.feed = AdminFeed()
        self._rates = RateWindow()
        self._fleet_behind: set[int] = set()  # admins (conn ids) that missed a delta: a full snapshot is owed
        self._by_message: dict[type, Callable[[Session, Any, str | int | None], None]] = {
            DriverLocation: self._driver_location,
            DriverStatus: self._driver_status,
            RideRequest: self._ride_request,
            **dict.fromkeys(commands.COMMANDS, self._order_action),
            NearbySubscribe: self._nearby,
            NearbyUnsubscribe: self._nearby,
            AdminSubscribe: self._admin_subscribe,
            Ping: self._ping,
        }
        self._by_record: dict[int, Callable[[Any, int, int], None]] = {int(t): h for t, h in {  # (int keys: above)
            T.OUT_COMMAND_RESULT: self._command_result,
            T.OUT_ORDER_UPDATE: self._order_update,
            T.OUT_NEW_ORDER: self._new_order,
            T.OUT_CANCEL_ORDER: self._cancel_order,
            T.OUT_DRIVER_POSITION: self._driver_position,
            T.OUT_ESTIMATE_UPDATE: self._estimate_update,
            T.OUT_NEARBY_DRIVERS: self._nearby_drivers,
            T.OUT_ENGINE_STATS: self._engine_stats,
            T.OUT_SESSION_STATE: self._session_state,
            T.OUT_SESSION_REPLACED: self._session_replaced,
            T.OUT_FLEET: self._fleet,
        }.items()}

    # ---- drain ---------------------------------------------------------------------------

    def records_to_send(self) -> list[ToEngine]:
        """Records for the engine since the last call, in order."""
        out, self._records = self._records, []
        return out

    def writes_to_send(self) -> list[tuple[Session, bytearray]]:
        """What to write since the last call: per session, one buffer of whole WebSocket frames (text,
        or binary when `session.binary`; RFC 6455 §5.2, unmasked), its messages in order. The shell
        writes each buffer as it is, in one write, and hands it over: the core never touches it again.
        """
        to_write, self._to_write = self._to_write, []
        cuts = self._cuts
        if cuts:  # (rare: two positions of one stream in one drain) cut from the end, offsets stay valid
            for s, spans in cuts.items():
                buf = s.wbuf
                if buf is not None:
                    for start, end in sorted(spans, reverse=True):
                        del buf[start:end]
            cuts.clear()
        out = []
        for s in to_write:
            buf = s.wbuf
            s.wbuf = None
            if buf:
                out.append((s, buf))
        return out  # type: ignore[return-value]

    def data_to_send(self) -> list[tuple[Session, bytes]]:
        """The same as writes_to_send(), as one (session, payload) pair per message: in order for each
        session, sessions in the order of their first message (for tests and shells that frame themselves)."""
        return [(s, p) for s, buf in self.writes_to_send() for p in payloads(buf)]

    def closes_to_send(self) -> list[tuple[Session, int, str]]:
        """Sessions to close (code, reason), each after its frames of the same drain."""
        out, self._closes = self._closes, []
        return out

    # ---- registry ------------------------------------------------------------------------

    def new_session(self, role: Role, app_id: str, fmt: Format, last_seq: int | None = None,
                    expires: int | None = None) -> Session:
        """A session for an accepted upgrade; registered by open() once the socket is up.

        Called before the 101 goes out: its `opened_ns` is earlier than any connection the app
        makes after seeing this one's 101, on any worker (the engine keeps the later: Session).
        `expires`: when its token stops opening connections (seconds since the epoch, wire/auth.py
        `expires_at`), when the session is closed with 4401 (tick); None with auth off.
        """
        self._next_conn += 1
        return Session(self._next_conn, role, app_id, fmt, self.worker, last_seq, self.mono_ns(), expires)

    def open(self, session: Session) -> None:
        """Registers the session and opens it with the engine.

        An older session with the same role and id is closed (4001). The welcome goes out when
        the engine answers (SESSION_STATE), followed by what the app missed since its `?last_seq`
        or a snapshot. With no engine attached the session waits without a welcome: it is
        announced when one attaches (engine_attached()).
        """
        ids = self.by_wire[session.wire_role]
        old = ids.get(session.wire_id)
        if old is not None and old is not session:
            self._unregister(old)
            self.close(old, CLOSE_REPLACED, "replaced by a newer connection")
            self.admin_log("info", f"{old.role.value} {old.app_id} reconnected; the older connection closed 4001")
        self.by_conn[session.conn_id] = session
        ids[session.wire_id] = session
        if session.role is Role.ADMIN:
            self.admins.add(session)
        self.stats.connections = len(self.by_conn)
        if session.expires is not None:
            heapq.heappush(self._deadlines, session.expires << _CONN_BITS | session.conn_id)
        if self.attached:
            self._records.append(ToEngine(T.IN_SESSION_OPEN, R.session(session.origin, session.opened_ns,
                                                                       session.last_seq)))

    def disconnected(self, session: Session) -> None:
        """The session's socket is closed: forget it, and tell the engine."""
        session.gone = True
        if session.paused:
            self.stats.paused -= 1
            session.paused = False
        if self._unregister(session):
            self.stats.connections = len(self.by_conn)
            if self.attached:
                self._records.append(ToEngine(T.IN_SESSION_CLOSE, R.session(session.origin, self.mono_ns())))
            if session.role is Role.DRIVER:
                self._trips.pop(session.wire_id, None)
                self.feed.driver_gone(session.app_id)
                self.to_admins("drivers", {"type": "driver_status", "driver_id": session.app_id,
                                           "status": "disconnected", "ts": self._now_ms()})

    def _unregister(self, session: Session) -> bool:
        if self.by_conn.pop(session.conn_id, None) is None:
            return False
        ids = self.by_wire[session.wire_role]
        if ids.get(session.wire_id) is session:
            del ids[session.wire_id]
        self.admins.discard(session)
        if session.expires is not None:  # its deadline stays in the heap, now stale
            session.expires = None
            self._stale_deadlines += 1
            if self._stale_deadlines > STALE_DEADLINES_MIN and self._stale_deadlines * 2 > len(self._deadlines):
                by_conn = self.by_conn
                self._deadlines = [d for d in self._deadlines if d & _CONN_MASK in by_conn]
                heapq.heapify(self._deadlines)
                self._stale_deadlines = 0
        return True

    def find(self, role: Role, app_id: str) -> Session | None:
        return self.by_wire[WIRE_ROLE[role]].get(app_id.encode("ascii").ljust(R.ID_SIZE, b"\0"))

    def sessions(self) -> list[Session]:
        return list(self.by_conn.values())

    def __len__(self) -> int:
        return len(self.by_conn)

    # ---- sending and closing ----------------------------------------------------------

    def _send(self, session: Session, message: Message, stamp: int | None = None) -> bool:
        """Queues one message for a session (in its outbox while paused, with `stamp`: `_owe`); False
        when it takes nothing more."""
        if session.closing or session.gone:
            return False
        if session.paused:
            return self._owe(session, message, stamp)
        self._frame(session, message)
        return True

    def _owe(self, session: Session, message: Message, stamp: int | None = None) -> bool:
        """Keeps a message for a paused session, as it is: encoded when the session resumes.

        It is counted then (`resume`), as it is written: `stamp` is its engine commit time
        (CLOCK_REALTIME ns) for a message counted in `messages_out` and push latency, -1 for one
        counted without a latency (a broadcast), None for one not counted (welcome, error, pong).
        One replaced in the outbox by a newer version, or dropped by a close, is never written.
        """
        assert session.outbox is not None
        if not session.outbox.put(message, stamp):
            self.close_for(session, CLOSE_SLOW_READER, "slow reader: too much owed")
            return False
        return True

    def _frame(self, session: Session, message: Message) -> int:
        """Appends `message` as one frame to the session's buffer of this drain; returns the frame's offset.

        msgspec encodes into the one scratch buffer (no bytes object per message), then header and
        payload are copied to the end of the session's buffer.
        """
        buf = session.wbuf
        if buf is None:
            buf = session.wbuf = bytearray()
            self._to_write.append(session)
        at = len(buf)
        binary = session.binary
        scratch = self._scratch
        ENCODE_INTO[binary](message, scratch)
        n = len(scratch)
        buf += HEADERS[binary][n] if n < 1024 else header(binary, n)
        buf += scratch
        return at

    def _frame_bytes(self, session: Session, data: bytes) -> None:
        """Appends one frame of an already encoded message (a broadcast's)."""
        buf = session.wbuf
        if buf is None:
            buf = session.wbuf = bytearray()
            self._to_write.append(session)
        binary = session.binary
        n = len(data)
        buf += HEADERS[binary][n] if n < 1024 else header(binary, n)
        buf += data

    def _broadcast(self, sessions: Iterable[Session], message: dict[str, Any]) -> int:
        """Sends one message to many sessions, encoded once per format; returns how many it was written
        to now (a paused session's copy is counted when it goes out: `_owe`)."""
        encoded: dict[Format, bytes] = {}
        n = 0
        for s in sessions:
            if s.closing or s.gone:
                continue
            if s.paused:
                self._owe(s, message, -1)  # counted when it goes out (resume)
                continue
            data = encoded.get(s.fmt)
            if data is None:
                data = encoded[s.fmt] = encode(message, s.fmt)
            self._frame_bytes(s, data)
            n += 1
        return n

    def close(self, session: Session, code: int, reason: str) -> None:
        """Closes a session: nothing more is sent to it; the shell sends the CLOSE after its frames."""
        if session.closing or session.gone:
            return
        session.closing = True
        if session.outbox is not None:
            session.outbox.pending.clear()  # reliable ones stay in the engine's history; the rest is stale
        self._closes.append((session, code, reason))

    def close_for(self, session: Session, code: int, why: str) -> None:
        """Closes a session for misbehaving, counted and logged to admins."""
        if session.closing or session.gone:
            return
        if code == CLOSE_SLOW_READER:
            self.stats.slow_reader_closes += 1
        elif code == CLOSE_POLICY:
            self.stats.abuse_closes += 1
        elif code == CLOSE_TOO_BIG:
            self.stats.too_large_closes += 1
        self.close(session, code, why)
        self.admin_log("warning", f"closed {session.role.value} {session.app_id} with {code}: {why}")

    def pause(self, session: Session) -> None:
        """The session's write buffer went above its high-water mark: queue, do not send."""
        if session.paused or session.closing or session.gone:
            return
        session.paused = True
        self.stats.paused += 1
        if session.outbox is None:
            session.outbox = Outbox(self.max_queued)

    def resume(self, session: Session) -> None:
        """The write buffer drained below its low-water mark: what is owed goes out, oldest first."""
        if not session.paused:
            return
        session.paused = False
        self.stats.paused -= 1
        box = session.outbox
        if box is not None:
            counted, stamps = 0, []
            for message, stamp in box.drain():
                if not self._send(session, message):
                    break
                if stamp is not None:  # (`_owe`) written now: counted now, its latency up to now
                    counted += 1
                    if stamp >= 0:
                        stamps.append(stamp)
            if counted:
                self.stats.messages_out += counted
                if stamps:
                    self.stats.push_latency.add_since(self.wall_ns(), stamps)

    # ---- client input -------------------------------------------------------------------

    def receive(self, session: Session, request: Request) -> None:
        """One decoded, validated, admitted client message."""
        if session.closing or session.gone:
            return
        self._by_message[type(request.message)](session, request.message, request.request_id)

    def refuse(self, session: Session, err: ClientError) -> None:
        """A message the codec refused: answered with an `error`, the connection stays."""
        self.error(session, err.code, err.message, err.request_id)

    def rate_limited(self, session: Session, request_id: str | int | None) -> None:
        self.stats.rate_limited += 1
        self.error(session, ErrorCode.RATE_LIMITED, "too many messages; slow down", request_id)

    def too_large(self, session: Session, why: str) -> None:
        """A message over the size or fragment cap: say why in the negotiated format, then close 1009.

        Framed even while the session is paused: the close drops what it owes, and this error is
        what explains the close (docs/protocol.md: sent just before it). It goes into the socket's
        buffer right ahead of the CLOSE frame, which the close puts there all the same.
        """
        if session.closing or session.gone:
            return
        self._count_error(ErrorCode.TOO_LARGE)
        self._frame(session, self._error(ErrorCode.TOO_LARGE, why))
        self.close_for(session, CLOSE_TOO_BIG, "message too big")

    def error(self, session: Session, code: ErrorCode, message: str, request_id: str | int | None = None) -> None:
        self._count_error(code)
        self._send(session, self._error(code, message, request_id))

    def _error(self, code: ErrorCode, message: str, request_id: str | int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "error", "code": code.value, "message": message, "ts": self._now_ms()}
        if request_id is not None:
            out["id"] = request_id
        return out

    def _count_error(self, code: str) -> None:
        """One `error` sent to an app, by code (/metrics `dgdo_errors_total{code=...}`)."""
        errors = self.stats.errors
        errors[code] = errors.get(code, 0) + 1

    def _expect_reply(self, session: Session, request_id: str | int | None, conflict: str | None = None) -> int:
        """A correlation id for a command whose outcome the engine will report."""
        self._corr += 1
        self.pending[self._corr] = PendingReply(session, request_id, conflict)
        return self._corr

    def _publish(self, session: Session, request_id: str | int | None, type_: int, body: bytes, corr: int,
                 latest: object = None, reply_due: bool = False) -> bool:
        """Queues a command for the engine, or refuses it at once: an app must not wait on a silent engine."""
        if not self.available:
            self.pending.pop(corr, None)
            self.error(session, ErrorCode.ENGINE_UNAVAILABLE,
                       "engine not responding" if self.attached else "engine not attached", request_id)
            return False
        self._records.append(ToEngine(type_, body, corr, latest if not corr else None, session, request_id,
                                      reply_due))
        return True

    def not_taken(self, record: ToEngine, code: ErrorCode, message: str) -> None:
        """The link refused a record (engine gone, ring full too long): its command is answered with an error.

        (`stats.records_out` counts the records the link took: the shell counts them as it hands them over.)"""
        if record.session is None:
            return  # an announcement: made again at the next attach
        self.pending.pop(record.corr, None)
        self.error(record.session, code, message, record.request_id)

    def _driver_location(self, session: Session, m: DriverLocation, rid: str | int | None) -> None:
        # The hot path of client input (every driver, every few seconds): R.driver_location's pack,
        # keep_for_resync, _publish's queueing and feed.position written out here, int constants
        # for the enums (a Python call costs ~450 instructions and an enum lookup more than the
        # line they save, at 100k positions a second).
        corr = self._expect_reply(session, rid) if rid is not None else 0
        o = session.origin
        body = _PACK_DRIVER_LOCATION(self.mono_ns(), corr, o.conn, o.worker, o.role, o.actor,
                                     m.lat, m.lon, m.heading, m.speed_kmh, m.accuracy_m)
        resync = session.resync  # kept even when refused: the next engine's resync
        if resync is None:
            resync = session.resync = {}
        resync[_IN_DRIVER_LOCATION] = body
        if not self.available:
            self._publish(session, rid, _IN_DRIVER_LOCATION, body, corr)  # refused: engine_unavailable
            return
        passenger = self._trips.get(session.wire_id)
        self._records.append(ToEngine(_IN_DRIVER_LOCATION, body, corr, None if corr else session.app_id, session, rid,
                                      passenger is not None and passenger in self.by_wire[_PASSENGER]))
        self.feed.moved[session.app_id] = m

    def _driver_status(self, session: Session, m: DriverStatus, rid: str | int | None) -> None:
        corr = self._expect_reply(session, rid) if rid is not None else 0
        body = R.driver_status(session.origin, self.mono_ns(), corr, m.online)
        session.keep_for_resync(T.IN_DRIVER_STATUS, body)
        if self._publish(session, rid, T.IN_DRIVER_STATUS, body, corr):
            self.feed.driver_status(session.app_id, m.online)
            self.to_admins("drivers", {"type": "driver_status", "driver_id": session.app_id,
                                       "status": "online" if m.online else "offline", "ts": self._now_ms()})

    def _ride_request(self, session: Session, m: RideRequest, rid: str | int | None) -> None:
        corr = self._expect_reply(session, rid, commands.RIDE_ID_CONFLICT)
        pickup, dropoff = (m.pickup.lat, m.pickup.lon), (m.dropoff.lat, m.dropoff.lon)
        body = R.ride_request(session.origin, self.mono_ns(), corr, commands.idempotency_key(session.app_id, rid),
                              pickup, dropoff)
        if self._publish(session, rid, T.IN_RIDE_REQUEST, body, corr):
            self.feed.ride_requested(corr, session.app_id, pickup, dropoff)

    def _order_action(self, session: Session, m: OrderAction, rid: str | int | None) -> None:
        corr = self._expect_reply(session, rid)
        body = commands.order_command(session.origin, self.mono_ns(), corr, m)
        if self._publish(session, rid, T.IN_ORDER_COMMAND, body, corr) and isinstance(m, OrderReject):
            self.feed.offer_ended(session.app_id, m.order_id)  # the engine answers a reject with its ack only

    def _nearby(self, session: Session, m: Nearby, rid: str | int | None) -> None:
        corr = self._expect_reply(session, rid) if rid is not None else 0
        body = R.nearby(session.origin, self.mono_ns(), corr, m.lat if m.subscribe else 0.0,
                        m.lon if m.subscribe else 0.0, m.radius_m, m.subscribe)
        session.keep_for_resync(T.IN_NEARBY, body)
        self._publish(session, rid, T.IN_NEARBY, body, corr)

    def _admin_subscribe(self, session: Session, m: AdminSubscribe, rid: str | int | None) -> None:
        session.topics = m.topics
        if rid is not None:
            self._send(session, {"type": "ack", "id": rid, "topics": sorted(m.topics), "ts": self._now_ms()})
        if "system_stats" in m.topics:
            self._send(session, self.system_stats())  # a dashboard shows numbers at once, not a second later
        if "fleet" in m.topics:
            self._send(session, self.feed.snapshot(self._now_ms()))  # the whole map at once; deltas follow

    def _ping(self, session: Session, m: Ping, rid: str | int | None) -> None:
        out: dict[str, Any] = {"type": "pong", "ts": self._now_ms()}
        if rid is not None:
            out["id"] = rid
        self._send(session, out)

    # ---- engine state ---------------------------------------------------------------------

    def engine_attached(self) -> None:
        """An engine (maybe a restarted one) attached: tell it who is connected here and how far each got.

        It replays what it committed but never delivered here (or sends a snapshot). Those already
        welcomed get no second welcome; those still waiting get theirs now. Each session's latest
        status, position and nearby subscription follow its announcement.
        """
        self.attached = self.available = True
        self.admin_log("info", "engine attached")
        # The other workers' admins (after our restart, or the engine's) know nothing of our drivers.
        self.feed.relay_everything()
        records = self._records
        # Sessions gone since the last engine detached: what the link carries over to this one (the
        # records the dead one never read) may hold their open, which it would take for a live
        # connection (a driver offered rides it never hears of). Their close follows what is carried;
        # for one the engine never opened, it is ignored.
        now = self.mono_ns()
        for conn_id, origin in self._announced.items():
            if conn_id not in self.by_conn:
                records.append(ToEngine(T.IN_SESSION_CLOSE, R.session(origin, now)))
        self._announced = {}
        for s in self.sessions():
            s.resyncing = s.welcomed  # (Session): until this engine answers the announcement
            records.append(ToEngine(T.IN_SESSION_OPEN, R.session(s.origin, s.opened_ns, s.last_seq)))
            if s.resync:
                for type_, body in s.resync.items():
                    records.append(ToEngine(type_, body))

    def engine_detached(self, carried: Collection[int] = ()) -> None:
        """The engine went away: the commands in flight are answered `engine_unavailable`.

        Args:
            carried: correlation ids of commands the dead engine never consumed, which the link
                publishes to the next engine first: they stay pending, and are answered by it.
        """
        self.attached = self.available = False
        self._trips.clear()  # the next engine may not hold them (no journal): learnt again from what it forwards
        self._announced = {s.conn_id: s.origin for s in self.by_conn.values()}  # see engine_attached()
        self.admin_log("error", "engine detached")
        failed = [p for c, p in self.pending.items() if c not in carried]
        self.pending = {c: p for c, p in self.pending.items() if c in carried}
        ts = self._now_ms()
        for p in failed:
            out: dict[str, Any] = {"type": "error", "code": ErrorCode.ENGINE_UNAVAILABLE.value,
                                   "message": "engine restarted; retry the command", "ts": ts}
            if p.request_id is not None:
                out["id"] = p.request_id
            self._count_error(ErrorCode.ENGINE_UNAVAILABLE)
            self._send(p.session, out)

    def engine_available(self, up: bool, timeout_s: float = 0.0) -> None:
        """The attached engine fell silent (`up` False) or beats again.

        While silent, commands are refused at once; those already in the ring wait for it and are
        answered when it beats again, or failed as on any engine death if it never does.
        """
        if not self.attached:
            return
        self.available = up
        if up:
            self.admin_log("info", "engine beats again: available")
        else:
            self.admin_log("error", f"engine silent for over {timeout_s:g} s: "
                                    "unavailable, commands refused until it beats again")

    # ---- engine records ---------------------------------------------------------------------

    def receive_records(self, buffer: Any, nbytes: int) -> None:
        """Routes one batch of whole records (`records.HEADER` + body each, 8-aligned) to their recipients.

        Read in place: no object per record. Within one batch a driver position replaces an
        earlier one for the same recipient, driver and order that is still waiting to be sent
        (latest-wins), and moves behind whatever reliable message came in between.
        """
        by_record = self._by_record
        self._now_s = self.mono_ns() / 1e9
        commits = self._commits
        coalesced = self.stats.positions_coalesced
        off = count = 0
        while off + 8 <= nbytes:
            length, type_ = _HEADER(buffer, off)
            if length < 8:
                log.error("! malformed record batch (length %d at %d): rest dropped", length, off)
                break
            count += 1
            h = by_record.get(type_)
            if h is None:
                log.warning("! unknown record type %d from the engine", type_)
            else:
                try:
                    h(buffer, off + 8, length - 8)
                except Exception:  # one bad record must not stop the stream
                    log.exception("! failed to route record type %d", type_)
            off += (length + 7) & ~7
        stats = self.stats
        stats.records_in += count
        self._position_at.clear()
        if commits:
            # Every delivered message once (a position replaced within the drain is not one).
            stats.messages_out += len(commits) - (stats.positions_coalesced - coalesced)
            stats.push_latency.add_since(self.wall_ns(), commits)
            commits.clear()

    def _recipient(self, to_conn: int, role_w: int, to_id: bytes) -> Session | None:
        """The live session a record is for: by `to_conn` when set (and only if it is still that
        role and id: conn ids are per sidecar process), else by role + id."""
        if to_conn:
            s = self.by_conn.get(to_conn)
            if s is None or s.wire_role != role_w or s.wire_id != to_id:
                return None
            return s
        ids = self.by_wire.get(role_w)
        return None if ids is None else ids.get(to_id)

    @staticmethod
    def _due(session: Session | None, seq: int) -> bool:
        """Whether a message (numbered `seq`, 0: not numbered) is to be delivered to `session`: nothing
        before the welcome, no seq twice, none while it is `resyncing`. A seq it takes is the session's
        `last_seq` from now on."""
        if session is None or not session.welcomed:
            return False
        if seq:
            if session.resyncing:
                return False  # the engine's answer to its re-announcement brings it, in order
            last = session.last_seq
            if last is not None and seq <= last:
                return False  # delivered already
            session.last_seq = seq
        return True

    def _deliver(self, session: Session, message: Message, commit_real_ns: int) -> int:
        """Delivers one message (due: `_due`) to its recipient's session, counted in this drain.

        `commit_real_ns` is its engine commit time, its push latency measured from it; -1 for a
        replay or snapshot, whose time is when its change first went out: counted, no latency.

        Returns the offset of its frame in the session's buffer, or -1 when none was framed
        (the session is paused: kept in its outbox, and counted when it goes out; or closing: dropped).
        """
        if session.closing or session.gone:
            return -1
        if session.paused:
            self._owe(session, message, commit_real_ns)
            return -1
        # self._frame(session, message), inline: this is every push
        buf = session.wbuf
        if buf is None:
            buf = session.wbuf = bytearray()
            self._to_write.append(session)
        at = len(buf)
        binary = session.binary
        scratch = self._scratch
        ENCODE_INTO[binary](message, scratch)
        n = len(scratch)
        buf += HEADERS[binary][n] if n < 1024 else header(binary, n)
        buf += scratch
        self._commits.append(commit_real_ns)
        return at

    def welcome(self, session: Session, seq: int, resumed: bool, ts: int) -> None:
        """Sends the welcome (once per session) and starts delivering to it.

        After a resumed welcome the replay follows, numbered from the app's own last_seq; after
        a snapshot, fresh messages above `seq`. A second SESSION_STATE for the same session
        (re-announced to a (re)attached engine) sends no welcome.
        """
        if session.welcomed:
            session.resyncing = False  # what the engine numbered before it took the announcement follows
            if not resumed:  # a snapshot follows: numbered above seq
                session.last_seq = max(session.last_seq or 0, seq)
            return
        session.welcomed = True
        if not resumed or session.last_seq is None:
            session.last_seq = seq
        self._send(session, {"type": "welcome", "role": session.role.value, "id": session.app_id,
                             "resumed": resumed, "seq": seq, "ts": ts})  # a handshake: not in messages_out

    def _session_state(self, buf: Any, off: int, size: int) -> None:
        (_m, real, to_conn, _w, role, to_id, seq, resumed, online) = R.OUT_SESSION.unpack_from(buf, off)
        session = self._recipient(to_conn, role, to_id) if to_conn else None
        if session is not None:
            if role == _DRIVER:  # the map shows it as the engine has it (off shift, or back after its grace)
                self.feed.driver_status(session.app_id, bool(online))
            self.welcome(session, seq, bool(resumed), real // 1_000_000)

    def _command_result(self, buf: Any, off: int, size: int) -> None:
        (_m, real, _to_conn, _w, _r, _id, corr, order_id, status) = R.OUT_COMMAND_RESULT.unpack_from(buf, off)
        p = self.pending.pop(corr, None)
        if p is None:
            return
        ts = real // 1_000_000
        self.feed.request_answered(corr, order_id if status == Result.OK else 0, self._now_s, ts)
        if status == Result.OK:
            if p.request_id is None:
                return
            out: dict[str, Any] = {"type": "ack", "id": p.request_id, "ts": ts}
            if order_id:
                out["order_id"] = order_id
        else:
            code, message = RESULT_ERROR.get(Result(status), (ErrorCode.BAD_MESSAGE, "refused"))
            if status == Result.CONFLICT and p.conflict is not None:
                message = p.conflict
            out = {"type": "error", "code": code.value, "message": message, "ts": ts}
            if order_id:
                out["order_id"] = order_id
            if p.request_id is not None:
                out["id"] = p.request_id
            self._count_error(code)
        if self._send(p.session, out, real) and not p.session.paused:
            self._commits.append(real)  # written in this drain (a paused session's counts when it goes out)

    def _order_update(self, buf: Any, off: int, size: int) -> None:
        (_m, real, to_conn, w, role, to_id, order_id, status, reason, driver_id, passenger_id, seq) = (
            _ORDER_UPDATE(buf, off)
        )
        status_name = STATUS_NAME[status]
        driver = (ID_NAMES.get(driver_id) or id_str(driver_id)) if driver_id[0] else ""
        ts = real // 1_000_000
        if w == self.worker:  # else a copy for our admins (another worker's app: module doc)
            if to_conn:
                session = self._recipient(to_conn, role, to_id)
            else:  # (the usual case, inline)
                ids = self.by_wire.get(role)
                session = None if ids is None else ids.get(to_id)
            if session is not None and session.welcomed:
                last = session.last_seq  # (self._due(session, seq), inline)
                if not seq or (not session.resyncing and (last is None or seq > last)):
                    if seq:
                        session.last_seq = seq
                    msg = OrderUpdate(order_id, status_name, ts, driver or UNSET,  # type: ignore[arg-type]
                                      id_str(passenger_id) if role == _DRIVER else UNSET,
                                      REASON_NAME[reason] if reason else UNSET, seq or UNSET)
                    # A replay or snapshot (to_conn) says when its change happened, long ago maybe: counted
                    # without a push latency (-1), which is the live path's.
                    stamp = -1 if to_conn else real
                    if session.paused or session.closing or session.gone:
                        self._deliver(session, msg, stamp)
                    else:  # (self._deliver(session, msg, stamp), inline: a call costs as much as the framing)
                        buf = session.wbuf
                        if buf is None:
                            buf = session.wbuf = bytearray()
                            self._to_write.append(session)
                        binary = session.binary
                        scratch = self._scratch
                        ENCODE_INTO[binary](msg, scratch)
                        n = len(scratch)
                        buf += HEADERS[binary][n] if n < 1024 else header(binary, n)
                        buf += scratch
                        self._commits.append(stamp)
            if role == _DRIVER:
                if status in _ON_TRIP:
                    self._trips[to_id] = passenger_id
                else:
                    self._trips.pop(to_id, None)
        if not to_conn:  # a change as it happens (not a replay or snapshot to one session)
            # A change reaches the passenger and its driver, in two records: the feed takes the first, and the
            # second is a no-op it is not called for (as order_update() tests it: AdminFeed.orders). The call and
            # the passenger id's str cost ~2,000 instructions (bench/push/core_cost.py), the test ~150.
            known = self.feed.orders.get(order_id)
            if known is None or not known.announced or known.status != status_name or known.driver_id != driver:
                self.feed.order_update(order_id, status_name, ID_NAMES.get(passenger_id) or id_str(passenger_id),
                                       driver, self._now_s, ts)
            if role == _PASSENGER and self.admins:
                # Each change reaches the passenger (and the driver, once there is one): admins see it once,
                # and not again when a replay or snapshot (to one session) repeats it.
                self._admin_order(order_id, status_name, id_str(to_id), driver, REASON_NAME[reason] if reason else "",
                                  ts)

    def _admin_order(self, order_id: int, status: str, passenger_id: str, driver_id: str, reason: str,
                     ts: int) -> None:
        order: dict[str, Any] = {"order_id": order_id, "status": status, "passenger_id": passenger_id}
        if driver_id:
            order["driver_id"] = driver_id
        if reason:
            order["reason"] = reason
        self.to_admins("active_orders", {"type": "active_orders", **order,
                                         "active": self.stats.engine.active_orders, "ts": ts})
        if status == "accepted":
            self.to_admins("assignments", {"type": "assignment", "order_id": order_id, "driver_id": driver_id,
                                           "passenger_id": passenger_id, "ts": ts})

    def _new_order(self, buf: Any, off: int, size: int) -> None:
        (_m, real, to_conn, w, role, to_id, order_id, passenger_id,
         plat, plon, dlat, dlon, distance_m, eta_s, expires_in_s, seq) = _NEW_ORDER(buf, off)
        ts = real // 1_000_000
        if w == self.worker:
            session = self._recipient(to_conn, role, to_id)
            if self._due(session, seq):
                self._deliver(session, NewOrder(  # type: ignore[arg-type]
                    order_id, id_str(passenger_id), Point(plat, plon), Point(dlat, dlon), round_to(distance_m, 1),
                    round_to(eta_s, 1), round_to(expires_in_s, 3), ts, seq or UNSET), -1 if to_conn else real)
        if not to_conn:
            self.feed.offer(id_str(to_id), order_id, (plat, plon), (dlat, dlon), eta_s, expires_in_s, self._now_s, ts)

    def _cancel_order(self, buf: Any, off: int, size: int) -> None:
        (_m, real, to_conn, w, role, to_id, order_id, reason, seq) = R.OUT_CANCEL_ORDER.unpack_from(buf, off)
        reason_name = REASON_NAME[reason]
        if w == self.worker:
            if role == _DRIVER:  # an offer withdrawn (no trip) or a trip given up: no trip now
                self._trips.pop(to_id, None)
            session = self._recipient(to_conn, role, to_id)
            if self._due(session, seq):
                self._deliver(session, CancelOrder(order_id, reason_name, real // 1_000_000, seq or UNSET),  # type: ignore[arg-type]
                              -1 if to_conn else real)  # a replay's time is its change's: no push latency
        if not to_conn:
            self.feed.offer_ended(id_str(to_id), order_id)

    def _driver_position(self, buf: Any, off: int, size: int) -> None:
        (_m, real, to_conn, _w, role, to_id, order_id, driver_id, lat, lon, heading, speed) = (
            _DRIVER_POSITION(buf, off)
        )
        if to_conn:
            session = self._recipient(to_conn, role, to_id)
        else:  # (the usual case, inline)
            ids = self.by_wire.get(role)
            session = None if ids is None else ids.get(to_id)
        if session is None or not session.welcomed:
            return
        trips = self._trips
        if driver_id not in trips and driver_id in self.by_wire[_DRIVER]:
            trips[driver_id] = to_id  # the engine forwards its positions here: its trip, learnt (`_trips`)
        msg = DriverPosition(order_id, ID_NAMES.get(driver_id) or id_str(driver_id), lat, lon, real // 1_000_000,
                             round_to(heading, 1) if heading == heading else UNSET,  # (NaN: unknown)
                             round_to(speed, 1) if speed == speed else UNSET)
        # Latest-wins within the drain: a newer position for the same stream makes the queued one moot.
        key = (session.conn_id, driver_id, order_id)
        position_at, commits = self._position_at, self._commits
        if position_at:
            earlier = position_at.pop(key, None)
            if earlier is not None:
                start, end, commit_at = earlier
                cuts = self._cuts.get(session)
                if cuts is None:
                    self._cuts[session] = [(start, end)]
                else:
                    cuts.append((start, end))
                commits[commit_at] = -1
                self.stats.positions_coalesced += 1
        if session.paused or session.closing or session.gone:
            self._deliver(session, msg, real)
            return
        # self._deliver(session, msg, real), inline: a call costs as much as the framing
        buf = session.wbuf
        if buf is None:
            buf = session.wbuf = bytearray()
            self._to_write.append(session)
        at = len(buf)
        binary = session.binary
        scratch = self._scratch
        ENCODE_INTO[binary](msg, scratch)
        n = len(scratch)
        buf += HEADERS[binary][n] if n < 1024 else header(binary, n)
        buf += scratch
        commits.append(real)
        position_at[key] = (at, len(buf), len(commits) - 1)

    def _estimate_update(self, buf: Any, off: int, size: int) -> None:
        (_m, real, to_conn, w, role, to_id, order_id, eta_s, distance_m) = R.OUT_ESTIMATE_UPDATE.unpack_from(buf, off)
        if w == self.worker:
            session = self._recipient(to_conn, role, to_id)
            if self._due(session, 0):
                self._deliver(session, EstimateUpdate(order_id, round_to(eta_s, 1), round_to(distance_m, 1),  # type: ignore[arg-type]
                                                      real // 1_000_000), real)
        if not to_conn:
            self.feed.estimate(order_id, eta_s)

    def _nearby_drivers(self, buf: Any, off: int, size: int) -> None:
        head = R.OUT_NEARBY_HEAD
        (_m, real, to_conn, _w, role, to_id, count) = head.unpack_from(buf, off)
        entry = R.NEARBY_ENTRY
        drivers = []
        for i in range(min(count, (size - head.size) // entry.size)):
            did, lat, lon = entry.unpack_from(buf, off + head.size + i * entry.size)
            drivers.append({"driver_id": id_str(did), "lat": lat, "lon": lon})
        session = self._recipient(to_conn, role, to_id)
        if self._due(session, 0):
            self._deliver(session, {"type": "nearby_drivers", "drivers": drivers, "ts": real // 1_000_000},  # type: ignore[arg-type]
                          real)

    def _engine_stats(self, buf: Any, off: int, size: int) -> None:
        (_m, _real, _c, _w, _r, _id, online, available, active, workers, created, matched, completed, p99, p50, n,
         sum_ns, *buckets, journal_errno, held, held_since) = R.OUT_ENGINE_STATS.unpack_from(buf, off)
        if workers > self.stats.engine.workers:  # a worker joined: it needs all of ours, not just what moves
            self.feed.relay_everything()
        was = self.stats.engine.journal_errno
        self.stats.engine = EngineSnapshot(online, available, active, created, matched, completed, p99, p50, n,
                                           sum_ns, tuple(buckets), workers, journal_errno, held, held_since,
                                           known=True)
        if journal_errno != was:
            if journal_errno:
                self.admin_log("error", f"engine holds: {self.engine_hold()}; free space on its state "
                                        "directory's disk (or make it writable) and it goes on by itself")
            else:
                self.admin_log("info", "engine journal writable again")

    def engine_hold(self) -> str | None:
        """Why the attached engine holds, as its last ENGINE_STATS said ("journal not writable (No
        space left on device) for 42 s, 3 input(s) held"); None when it does not."""
        hold = self._hold()
        if hold is None:
            return None
        return f"journal not writable ({hold['error']}) for {hold['for_s']} s, {hold['inputs_held']} input(s) held"

    def engine_held_ns(self) -> int | None:
        """How long the attached engine has held, its journal not writable, as its last ENGINE_STATS
        said (held since, on the engine's CLOCK_MONOTONIC: the one `mono_ns` reads); None when it
        does not. The one reckoning of it: system_stats and /healthz say it in whole seconds,
        /metrics (dgdo_engine_journal_hold_seconds) in fractional ones."""
        e = self.stats.engine
        if not (self.attached and e.journal_errno):
            return None
        return max(0, self.mono_ns() - e.held_since_ns)  # stats stamped after our reading: just began

    def _hold(self) -> dict[str, Any] | None:
        """`system_stats.engine_hold`: what the engine's last ENGINE_STATS said of its journal, while it holds."""
        held_ns = self.engine_held_ns()
        if held_ns is None:
            return None
        e = self.stats.engine
        return {"error": os.strerror(e.journal_errno), "for_s": held_ns // 1_000_000_000, "inputs_held": e.held_inputs}

    # ---- several workers ---------------------------------------------------------------------

    def _session_replaced(self, buf: Any, off: int, size: int) -> None:
        """The engine saw the same role and id open elsewhere: this (older) session closes with 4001.

        Same worker: open() closed it already and this finds nothing. Another worker: this is the
        only news of it. Unregistered at once (the engine routes to the newer one now, and its
        close would only be ignored); off this worker's map, which the newer worker now feeds.
        """
        (_m, _real, to_conn, w, role, to_id, by_worker) = R.OUT_SESSION_REPLACED.unpack_from(buf, off)
        if w != self.worker or not to_conn:
            return
        old = self._recipient(to_conn, role, to_id)
        if old is None or old.closing or old.gone:
            return
        if self._unregister(old):
            self.stats.connections = len(self.by_conn)
            if old.role is Role.DRIVER:
                self._trips.pop(old.wire_id, None)  # its positions go to the other worker now
                self.feed.driver_gone(old.app_id)
        self.close(old, CLOSE_REPLACED, "replaced by a newer connection")
        self.admin_log("info", f"{old.role.value} {old.app_id} reconnected to worker {by_worker}; "
                               f"the older connection on worker {self.worker} closed 4001")

    def _fleet(self, buf: Any, off: int, size: int) -> None:
        """Another worker's drivers (FLEET, relayed by the engine) for our admins' views."""
        head, entry = R.FLEET_HEAD, R.FLEET_ENTRY
        (_m, _real, _c, worker, _r, _id, count, notice) = head.unpack_from(buf, off)
        if worker == self.worker:
            return
        if notice == R.FleetNotice.WORKER_DETACHED:
            for driver_id in self.feed.worker_left(worker):
                self.to_admins("drivers", {"type": "driver_status", "driver_id": driver_id,
                                           "status": "disconnected", "ts": self._now_ms()})
            return
        if notice == R.FleetNotice.WORKER_ATTACHED:
            self.feed.relay_everything()
            # Another worker is attached, whatever the last ENGINE_STATS (up to a second old) said:
            # the relay at the next feed tick must go out, not be dropped as if we were alone.
            self.stats.engine.workers = max(self.stats.engine.workers, 2)
            return
        mine = self.by_wire[R.Role.DRIVER]
        entries = []
        for i in range(min(count, (size - head.size) // entry.size)):
            raw, lat, lon, kind = entry.unpack_from(buf, off + head.size + i * entry.size)
            if raw in mine:  # connected here: what we see ourselves is the truth
                continue
            entries.append((id_str(raw), lat, lon, kind))
        for driver_id, status in self.feed.remote(worker, entries, self.mono_ns() / 1e9):
            self.to_admins("drivers", {"type": "driver_status", "driver_id": driver_id, "status": status,
                                       "ts": self._now_ms()})

    def _relay_fleet(self) -> None:
        """Publishes what the other workers' admins need from this one (admin_feed.py); nothing when alone."""
        entries = self.feed.relay()
        if not entries:
            return
        if not self.available:  # the other workers are still there: they must hear of these once one is
            self.feed.hold(entries)
            return
        if self.stats.engine.workers < 2:  # nobody to tell (one that joins gets everything: relay_everything)
            return
        origin = R.Origin(0, self.worker, R.Role.ADMIN, b"")
        for at in range(0, len(entries), FLEET_CHUNK):
            chunk = [(i.encode("ascii"), lat, lon, kind) for i, lat, lon, kind in entries[at:at + FLEET_CHUNK]]
            self._records.append(ToEngine(T.IN_FLEET, R.fleet(origin, chunk)))

    # ---- admins ------------------------------------------------------------------------------

    def to_admins(self, topic: str, message: dict[str, Any]) -> None:
        """Sends a monitoring message to the admins subscribed to `topic`."""
        if self.admins:
            subscribers = [s for s in self.admins if topic in s.topics]
            if subscribers:
                self.stats.messages_out += self._broadcast(subscribers, message)

    def admin_log(self, level: str, text: str) -> None:
        self.to_admins("log", {"type": "log", "level": level, "message": text, "ts": self._now_ms()})

    def tick(self, now: float | None = None) -> None:
        """The core's clock (the shell calls this every stats interval, a second): sessions whose
        token expired by `now` (seconds since the epoch; default the wall clock) are closed, and
        `system_stats` goes to the admins subscribed."""
        self.expire(self.wall_ns() / 1e9 if now is None else now)
        if any("system_stats" in s.topics for s in self.admins):
            self.to_admins("system_stats", self.system_stats())

    def expire(self, now: float) -> None:
        """Closes each session whose token expired by `now` (seconds since the epoch): an `error`
        (`unauthorized`, "token expired") and close 4401, as an upgrade with that token would be
        refused. Only the soonest deadlines are looked at. Its orders stay: the close is a
        disconnect like any other, and the app comes back with a fresh token and `?last_seq`.

        The error is framed even while the session is paused, as `too_large`'s is: the close drops
        what it owes, and this is what tells the app why (a browser sees no HTTP status).
        """
        deadlines, by_conn = self._deadlines, self.by_conn
        closed: list[Session] = []
        while deadlines and deadlines[0] >> _CONN_BITS <= now:
            session = by_conn.get(heapq.heappop(deadlines) & _CONN_MASK)
            if session is None:  # gone before its token expired (`_unregister`)
                self._stale_deadlines -= 1
                continue
            session.expires = None  # out of the heap
            if session.closing or session.gone:
                continue
            self._count_error(ErrorCode.UNAUTHORIZED)
            self._frame(session, self._error(ErrorCode.UNAUTHORIZED, EXPIRED))
            self.close(session, CLOSE_EXPIRED, EXPIRED_REASON)
            closed.append(session)
        if not closed:
            return
        self.stats.expired_closes += len(closed)
        # Tokens minted together expire together: one line for a crowd, not a line each.
        if len(closed) <= EXPIRED_LOG_EACH:
            for session in closed:
                self.admin_log("info", f"closed {session.role.value} {session.app_id} with {CLOSE_EXPIRED}: {EXPIRED}")
        else:
            self.admin_log("info", f"closed {len(closed)} connections with {CLOSE_EXPIRED}: {EXPIRED}")

    def system_stats(self) -> dict[str, Any]:
        """The `system_stats` admin message: the engine's last ENGINE_STATS plus this worker's gauges."""
        s, e, g, feed = self.stats, self.stats.engine, self.gauges(), self.feed
        # Requested, matched and completed are the engine's own counters (every worker's orders);
        # no_driver is counted from the updates seen here, every worker's (the engine keeps no such counter).
        # Not before the engine's first ENGINE_STATS: its counters are not 0 then, only not known yet.
        requested, matched, completed, no_driver = self._rates.per_min(
            self.mono_ns() / 1e9, (e.orders_created, e.orders_matched, e.orders_completed, feed.counts["no_driver"])
        ) if e.known else (0.0, 0.0, 0.0, 0.0)
        p50, p99 = s.push_latency.percentiles(50, 99)
        by_role = dict.fromkeys((r.value for r in Role), 0)
        for session in self.by_conn.values():
            by_role[session.role.value] += 1
        age = g.heartbeat_age_ns if self.attached else None
        out: dict[str, Any] = {
            "type": "system_stats",
            "matching_latency_us": {"p50": round(e.match_p50_ns / 1000, 1), "p99": round(e.match_p99_ns / 1000, 1)},
            "push_latency_us": {"p50": round(p50 / 1000, 1), "p99": round(p99 / 1000, 1)},
            "orders_per_min": requested,
            "order_rates": {"requested": requested, "matched": matched, "completed": completed,
                            "no_driver": no_driver},
            "orders": {"created": e.orders_created, "matched": e.orders_matched, "completed": e.orders_completed},
            "drivers_online": e.drivers_online,
            "drivers_available": e.drivers_available,
            "drivers_by_state": feed.driver_counts(),
            "active_orders": e.active_orders,
            "live_orders": feed.live_orders(),
            "connections": len(self.by_conn),
            "connections_by_role": by_role,
            "paused_connections": s.paused,
            "engine_attached": self.attached,
            "engine_available": self.available,
            "engine_heartbeat_age_ms": None if age is None else age // 1_000_000,
            "ring_depths": {"in_bytes": g.in_bytes if self.attached else 0, "in_backlog_bytes": g.backlog_bytes,
                            "out_bytes": g.out_bytes if self.attached else 0},
            "worker": self.worker,  # connections, push latency and ring depths are this worker's
            "workers": e.workers,
            "ts": self._now_ms(),
        }
        hold = self._hold()
        if hold is not None:  # only while the engine holds: what it said of its journal
            out["engine_hold"] = hold
        return out

    def feed_tick(self, now: float | None = None, ts_ms: int | None = None) -> None:
        """One tick of the `fleet` topic: the delta to admins keeping up, a full snapshot to the rest.

        An admin whose socket is paused (its write buffer full) is skipped, not queued: deltas
        cannot be coalesced, and a tab that cannot keep up must not make the sidecar hold a
        growing backlog. Once it drains, it gets one full snapshot instead of what it missed.
        """
        now = self.mono_ns() / 1e9 if now is None else now
        ts_ms = self._now_ms() if ts_ms is None else ts_ms
        feed = self.feed
        subscribers = [s for s in self.admins if "fleet" in s.topics]
        delta = feed.tick(now, ts_ms, want=bool(subscribers))
        self._relay_fleet()
        behind = self._fleet_behind
        if not subscribers:
            behind.clear()
            return
        behind.intersection_update(s.conn_id for s in subscribers)
        if feed.full_due(now):
            behind.update(s.conn_id for s in subscribers)
        ready: list[Session] = []
        owed: list[Session] = []
        for s in subscribers:
            if s.paused:
                behind.add(s.conn_id)
            elif s.conn_id in behind:
                owed.append(s)
                behind.discard(s.conn_id)
            else:
                ready.append(s)
        if owed:
            self.stats.messages_out += self._broadcast(owed, feed.snapshot(ts_ms))
        if delta is not None and ready:
            self.stats.messages_out += self._broadcast(ready, delta)

    def _now_ms(self) -> int:
        return self.wall_ns() // 1_000_000
