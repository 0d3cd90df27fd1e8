"""The records of include/dgdo/events.h, packed and unpacked in Python: pure data, no cffi.

Each struct.Struct below mirrors one C struct byte for byte. `check_layout()`
compares the sizes with what the C compiler laid out (through the cffi ring
module, which calls it when it is imported), so the two languages cannot drift
apart silently; this module itself imports nothing compiled, so the session
core reads and writes records without the ring.

A batch of records (what one drain of the engine's ring yields, what a publish
writes) is each record's `{int32 length incl. header, int32 type}` header, its
body, and padding to 8 bytes (`frame()`, `HEADER`, `aligned()`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

ID_SIZE = 40
HEADER = struct.Struct("<ii")  # {int32 length incl. this header, int32 type} before each record's body
HEADER_SIZE = 8
ALIGN = 8


def aligned(length: int) -> int:
    """Bytes a record of `length` (header included) occupies in a batch."""
    return (length + ALIGN - 1) & ~(ALIGN - 1)


PACK_HEADER = HEADER.pack
ALIGN_ZEROS = tuple(b"\0" * (-n % ALIGN) for n in range(ALIGN))  # length % ALIGN -> the zeros after it


def frame(buf: bytearray, type_: int, body: bytes | bytearray | memoryview) -> None:
    """Appends one record to `buf`, with its header and padding, as a batch holds it.

    (Written out in engine/link.py `publish_latest`, every position's path.)"""
    # (Once per record the sidecar publishes, every position among them: no call to aligned().)
    length = HEADER_SIZE + len(body)
    buf += PACK_HEADER(length, type_)
    buf += body
    if length % ALIGN:
        buf += ALIGN_ZEROS[length % ALIGN]


class T(IntEnum):
    """Record type ids (enum dgdo_event_type)."""

    IN_SESSION_OPEN = 1
    IN_SESSION_CLOSE = 2
    IN_DRIVER_LOCATION = 3
    IN_DRIVER_STATUS = 4
    IN_RIDE_REQUEST = 5
    IN_ORDER_COMMAND = 6
    IN_NEARBY = 7
    IN_FLEET = 8
    OUT_COMMAND_RESULT = 100
    OUT_ORDER_UPDATE = 101
    OUT_NEW_ORDER = 102
    OUT_CANCEL_ORDER = 103
    OUT_DRIVER_POSITION = 104
    OUT_ESTIMATE_UPDATE = 105
    OUT_NEARBY_DRIVERS = 106
    OUT_ENGINE_STATS = 107
    OUT_SESSION_STATE = 108
    OUT_SESSION_REPLACED = 109
    OUT_FLEET = 110


class Role(IntEnum):
    NONE = 0
    DRIVER = 1
    PASSENGER = 2
    ADMIN = 3


class Command(IntEnum):
    ACCEPT = 1
    REJECT = 2
    ARRIVED = 3
    START = 4
    COMPLETE = 5
    CANCEL = 6


class OrderStatus(IntEnum):
    SEARCHING = 1
    ACCEPTED = 2
    ARRIVING = 3
    ARRIVED = 4
    STARTED = 5
    COMPLETED = 6
    CANCELED = 7
    NO_DRIVER = 8


class Reason(IntEnum):
    NONE = 0
    PASSENGER_CANCELED = 1
    DRIVER_CANCELED = 2
    OFFER_EXPIRED = 3
    OFFER_REJECTED = 4  # never sent (events.h): a driver's reject is answered by its ack alone
    NO_DRIVER = 5
    DRIVER_OFFLINE = 6
    DRIVER_DISCONNECTED = 7
    OPERATOR_CANCELED = 8  # an admin's order_cancel


class Result(IntEnum):
    OK = 0
    CONFLICT = 1
    NOT_FOUND = 2
    FORBIDDEN = 3
    BAD_MESSAGE = 4


_META = "QQIHBx40s"  # dgdo_in_meta and dgdo_out_meta share one shape
IN_SESSION = struct.Struct("<" + _META + "B7xQ")
SESSION_HAS_LAST_SEQ = 0x01  # dgdo_in_session.flags: last_seq holds the app's ?last_seq
IN_DRIVER_LOCATION = struct.Struct("<" + _META + "ddfff4x")
IN_DRIVER_STATUS = struct.Struct("<" + _META + "B7x")
IN_RIDE_REQUEST = struct.Struct("<" + _META + "Qdddd")
IN_ORDER_COMMAND = struct.Struct("<" + _META + "QB7x64s")
IN_NEARBY = struct.Struct("<" + _META + "dddB7x")

OUT_META = struct.Struct("<" + _META)
OUT_COMMAND_RESULT = struct.Struct("<" + _META + "QQB7x")
# Reliable records end with their seq (+1 per recipient, stamped by the engine).
OUT_ORDER_UPDATE = struct.Struct("<" + _META + "QBB6x40s40sQ")
OUT_NEW_ORDER = struct.Struct("<" + _META + "Q40sdddddddQ")
OUT_CANCEL_ORDER = struct.Struct("<" + _META + "QB7xQ")
OUT_DRIVER_POSITION = struct.Struct("<" + _META + "Q40sddff8x")
OUT_ESTIMATE_UPDATE = struct.Struct("<" + _META + "Qdd")
OUT_NEARBY_HEAD = struct.Struct("<" + _META + "I4x")
NEARBY_ENTRY = struct.Struct("<40sdd")
# Latency histogram bucket upper bounds (ns, inclusive): events.h's DGDO_LATENCY_BOUNDS_NS, 10 µs to
# 100 ms. The engine counts offer decisions in them (ENGINE_STATS), the sidecar its pushes.
LATENCY_BOUNDS_NS = (10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
                     10_000_000, 25_000_000, 50_000_000, 100_000_000)
# online, available, active, workers, created, matched, completed, p99, p50, then the match
# histogram: count, sum_ns, one count per bucket + the overflow (not cumulative), then the
# journal: errno (0: writable), inputs held, hold start (CLOCK_MONOTONIC ns).
OUT_ENGINE_STATS = struct.Struct("<" + _META + "IIIIQQQQQ" + "QQ" + f"{len(LATENCY_BOUNDS_NS) + 1}Q" + "IIQ")
OUT_SESSION = struct.Struct("<" + _META + "QBB6x")  # seq, resumed, online
OUT_SESSION_REPLACED = struct.Struct("<" + _META + "H6x")
# FLEET (IN_FLEET from a worker, OUT_FLEET relayed to the others): this head, then `count` entries.
FLEET_HEAD = struct.Struct("<" + _META + "II")  # count, notice
FLEET_ENTRY = struct.Struct("<40sddB7x")


class FleetKind(IntEnum):
    """What a FLEET entry says about its driver (enum dgdo_fleet_kind)."""

    MOVED = 1
    ONLINE = 2
    OFFLINE = 3
    GONE = 4


class FleetNotice(IntEnum):
    """What the engine's own FLEET record (no entries) says (enum dgdo_fleet_notice): 0 in a worker's."""

    NONE = 0
    WORKER_ATTACHED = 1  # pass on all of our drivers: its admins know nothing of them yet
    WORKER_DETACHED = 2  # its drivers are disconnected: nobody else will say so

_C_NAMES = {
    "dgdo_in_session": IN_SESSION,
    "dgdo_in_driver_location": IN_DRIVER_LOCATION,
    "dgdo_in_driver_status": IN_DRIVER_STATUS,
    "dgdo_in_ride_request": IN_RIDE_REQUEST,
    "dgdo_in_order_command": IN_ORDER_COMMAND,
    "dgdo_in_nearby": IN_NEARBY,
    "dgdo_out_meta": OUT_META,
    "dgdo_out_command_result": OUT_COMMAND_RESULT,
    "dgdo_out_order_update": OUT_ORDER_UPDATE,
    "dgdo_out_new_order": OUT_NEW_ORDER,
    "dgdo_out_cancel_order": OUT_CANCEL_ORDER,
    "dgdo_out_driver_position": OUT_DRIVER_POSITION,
    "dgdo_out_estimate_update": OUT_ESTIMATE_UPDATE,
    "dgdo_nearby_entry": NEARBY_ENTRY,
    "dgdo_out_engine_stats": OUT_ENGINE_STATS,
    "dgdo_out_session": OUT_SESSION,
    "dgdo_out_session_replaced": OUT_SESSION_REPLACED,
    "dgdo_fleet": FLEET_HEAD,
    "dgdo_fleet_entry": FLEET_ENTRY,
}


def check_layout(sizeof: Callable[[str], int], offsetof: Callable[[str, str], int], record_header: int,
                 record_align: int, latency_bounds: tuple[int, ...] = LATENCY_BOUNDS_NS) -> None:
    """Raises ImportError when a struct here and its C twin differ (the ring module calls this with cffi's answers)."""
    if latency_bounds != LATENCY_BOUNDS_NS:
        raise ImportError(f"latency bucket bounds differ: C {latency_bounds}, Python {LATENCY_BOUNDS_NS}")
    for c_name, s in _C_NAMES.items():
        if s.size != sizeof(c_name):
            raise ImportError(f"{c_name}: Python packs {s.size} bytes, C lays out {sizeof(c_name)}")
    if OUT_NEARBY_HEAD.size != offsetof("dgdo_out_nearby_drivers", "drivers"):
        raise ImportError("dgdo_out_nearby_drivers header size differs between Python and C")
    if (record_header, record_align) != (HEADER_SIZE, ALIGN):
        raise ImportError("record header or alignment differs between Python and C")

NAN = math.nan


def id_bytes(value: str) -> bytes:
    """An id for a dgdo_id field (already validated: 1-36 ASCII chars)."""
    return value.encode("ascii")


_ID_NAMES: dict[bytes, str] = {}  # a dgdo_id field's bytes -> its str: the same few ids recur in every batch
ID_NAMES = _ID_NAMES  # for a hot path that looks up first (`ID_NAMES.get(raw) or id_str(raw)`): no call on a hit
_ID_NAMES_MAX = 1 << 16


def id_str(raw: bytes) -> str:
    """The str of a dgdo_id field (NUL-padded). Cached: decoding costs ~5x a dict lookup on the push path."""
    name = _ID_NAMES.get(raw)
    if name is None:
        if len(_ID_NAMES) >= _ID_NAMES_MAX:
            _ID_NAMES.clear()
        name = _ID_NAMES[raw] = raw.rstrip(b"\0").decode("ascii", "replace")
    return name


@dataclass(slots=True)
class Origin:
    """Who sends an inbound record: the fixed part of dgdo_in_meta for one connection."""

    conn: int
    worker: int
    role: int  # a Role's value (sessions keep a plain int: packed into every record they send)
    actor: bytes


def session(origin: Origin, recv_ns: int, last_seq: int | None = None) -> bytes:
    """SESSION_OPEN / SESSION_CLOSE. An open with `last_seq` (the highest seq the app has
    processed) asks the engine to resume from there; without, it gets a snapshot."""
    if last_seq is None:
        return IN_SESSION.pack(recv_ns, 0, origin.conn, origin.worker, origin.role, origin.actor, 0, 0)
    return IN_SESSION.pack(recv_ns, 0, origin.conn, origin.worker, origin.role, origin.actor,
                           SESSION_HAS_LAST_SEQ, last_seq)


def fleet(origin: Origin, entries: list[tuple[bytes, float, float, int]]) -> bytes:
    """IN_FLEET: (padded driver id, lat, lon, FleetKind) per entry, for the other workers' admins."""
    out = bytearray(FLEET_HEAD.pack(0, 0, origin.conn, origin.worker, origin.role, origin.actor, len(entries), 0))
    pack = FLEET_ENTRY.pack
    for driver_id, lat, lon, kind in entries:
        out += pack(driver_id, lat, lon, kind)
    return bytes(out)


def driver_location(
    origin: Origin, recv_ns: int, corr: int, lat: float, lon: float,
    heading: float = NAN, speed_kmh: float = NAN, accuracy_m: float = NAN,
) -> bytes:
    return IN_DRIVER_LOCATION.pack(
        recv_ns, corr, origin.conn, origin.worker, origin.role, origin.actor,
        lat, lon, heading, speed_kmh, accuracy_m,
    )


def driver_status(origin: Origin, recv_ns: int, corr: int, online: bool) -> bytes:
    return IN_DRIVER_STATUS.pack(
        recv_ns, corr, origin.conn, origin.worker, origin.role, origin.actor, 1 if online else 0
    )


def ride_request(
    origin: Origin, recv_ns: int, corr: int, idem_key: int,
    pickup: tuple[float, float], dropoff: tuple[float, float],
) -> bytes:
    return IN_RIDE_REQUEST.pack(
        recv_ns, corr, origin.conn, origin.worker, origin.role, origin.actor,
        idem_key, pickup[0], pickup[1], dropoff[0], dropoff[1],
    )


def order_command(
    origin: Origin, recv_ns: int, corr: int, order_id: int, command: Command, reason: str = ""
) -> bytes:
    return IN_ORDER_COMMAND.pack(
        recv_ns, corr, origin.conn, origin.worker, origin.role, origin.actor,
        order_id, command, reason.encode("utf-8")[:64],
    )


def nearby(
    origin: Origin, recv_ns: int, corr: int, lat: float, lon: float, radius_m: float, subscribe: bool
) -> bytes:
    return IN_NEARBY.pack(
        recv_ns, corr, origin.conn, origin.worker, origin.role, origin.actor,
        lat, lon, radius_m, 1 if subscribe else 0,
    )
