"""Client -> server messages of the public protocol (DESIGN §4), as values.

Each message is a frozen, slotted dataclass built only by `from_map()`, which
validates every field and raises `BadMessage` naming the field. The server
-> client direction is plain maps built in `bridge.py`; their shapes are
documented in docs/protocol.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,36}")
MAX_REQUEST_ID_LEN = 64
MAX_REASON_BYTES = 64
MAX_NEARBY_RADIUS_M = 5000.0
INT64_MAX = 2**63 - 1


class ErrorCode(StrEnum):
    """Wire error codes (DESIGN §4)."""

    BAD_FRAME = "bad_frame"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    OVERLOADED = "overloaded"


class ClientError(Exception):
    """A message the client got wrong; it is answered with an `error` and the connection stays."""

    code: ClassVar[ErrorCode] = ErrorCode.BAD_MESSAGE

    def __init__(self, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class BadFrame(ClientError):
    code = ErrorCode.BAD_FRAME


class BadMessage(ClientError):
    code = ErrorCode.BAD_MESSAGE


class UnknownType(ClientError):
    code = ErrorCode.UNKNOWN_TYPE


class Forbidden(ClientError):
    code = ErrorCode.FORBIDDEN


class TooLarge(ClientError):
    code = ErrorCode.TOO_LARGE


class Role(StrEnum):
    DRIVER = "driver"
    PASSENGER = "passenger"
    ADMIN = "admin"


DRIVER, PASSENGER, ADMIN = Role.DRIVER, Role.PASSENGER, Role.ADMIN


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


# ---- field readers: each raises BadMessage naming the field ----------------


_ABSENT = object()


def _number(m: dict[str, Any], field: str, lo: float, hi: float, *, required: bool = True) -> float:
    # The common case first, in one comparison: a float in range (NaN and ±inf fail it).
    # Positions arrive 100k a second; this is the hot path of ingest.
    v = m.get(field, _ABSENT)
    if type(v) is float and lo <= v <= hi:
        return v
    if v is _ABSENT:
        if required:
            raise BadMessage(f"{field}: required")
        return math.nan
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise BadMessage(f"{field}: must be a number")
    f = float(v) if not isinstance(v, int) or abs(v) < 2**53 else math.inf
    if not math.isfinite(f):
        raise BadMessage(f"{field}: must be finite")
    if not lo <= f <= hi:
        raise BadMessage(f"{field}: must be between {lo:g} and {hi:g}")
    return f


def _point(m: dict[str, Any], field: str) -> tuple[float, float]:
    p = m.get(field)
    if not isinstance(p, dict):
        raise BadMessage(f"{field}: must be an object with lat and lon")
    try:
        return _number(p, "lat", -90.0, 90.0), _number(p, "lon", -180.0, 180.0)
    except BadMessage as e:
        raise BadMessage(f"{field}.{e.message}") from None


def _order_id(m: dict[str, Any]) -> int:
    v = m.get("order_id")
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadMessage("order_id: must be an integer" if "order_id" in m else "order_id: required")
    if not 1 <= v <= INT64_MAX:
        raise BadMessage("order_id: out of range")
    return v


def _reason(m: dict[str, Any]) -> str:
    v = m.get("reason", "")
    if not isinstance(v, str):
        raise BadMessage("reason: must be a string")
    if len(v.encode("utf-8")) > MAX_REASON_BYTES:
        raise BadMessage(f"reason: at most {MAX_REASON_BYTES} bytes")
    return v


# ---- messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverLocation:
    type: ClassVar[str] = "driver_location"
    roles: ClassVar[frozenset[Role]] = frozenset({DRIVER})
    lat: float
    lon: float
    heading: float = math.nan
    speed_kmh: float = math.nan
    accuracy_m: float = math.nan

    @classmethod
    def from_map(cls, m: dict[str, Any], conn_id: str) -> DriverLocation:
        did = m.get("driver_id", _ABSENT)
        if did is not _ABSENT and did != conn_id:  # one lookup on the hot path; conn_id is a str
            if not isinstance(did, str):
                raise BadMessage("driver_id: must be a string (your own id)")
            raise Forbidden("driver_id: does not match this connection")
        return cls(
            lat=_number(m, "lat", -90.0, 90.0),
            lon=_number(m, "lon", -180.0, 180.0),
            heading=_number(m, "heading", 0.0, 360.0, required=False),
            speed_kmh=_number(m, "speed_kmh", 0.0, 400.0, required=False),
            accuracy_m=_number(m, "accuracy_m", 0.0, 100_000.0, required=False),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverStatus:
    type: ClassVar[str] = "driver_status"
    roles: ClassVar[frozenset[Role]] = frozenset({DRIVER})
    online: bool

    @classmethod
    def from_map(cls, m: dict[str, Any], conn_id: str) -> DriverStatus:
        status = m.get("status")
        if status not in ("online", "offline"):
            raise BadMessage("status: must be 'online' or 'offline'")
        return cls(online=status == "online")


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderAction:
    """order_accept, order_reject, order_arrived, trip_start, trip_complete, order_cancel."""

    TYPES: ClassVar[dict[str, frozenset[Role]]] = {
        "order_accept": frozenset({DRIVER}),
        "order_reject": frozenset({DRIVER}),
        "order_arrived": frozenset({DRIVER}),
        "trip_start": frozenset({DRIVER}),
        "trip_complete": frozenset({DRIVER}),
        "order_cancel": frozenset({DRIVER, PASSENGER}),
    }
    action: str
    order_id: int
    reason: str = ""

    @classmethod
    def from_map(cls, m: dict[str, Any], conn_id: str) -> OrderAction:
        action = m["type"]
        reason = _reason(m) if action == "order_cancel" else ""
        return cls(action=action, order_id=_order_id(m), reason=reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class RideRequest:
    type: ClassVar[str] = "ride_request"
    roles: ClassVar[frozenset[Role]] = frozenset({PASSENGER})
    pickup: tuple[float, float]
    dropoff: tuple[float, float]

    @classmethod
    def from_map(cls, m: dict[str, Any], conn_id: str) -> RideRequest:
        return cls(pickup=_point(m, "pickup"), dropoff=_point(m, "dropoff"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Nearby:
    """nearby_subscribe / nearby_unsubscribe."""

    TYPES: ClassVar[dict[str, frozenset[Role]]] = {
        "nearby_subscribe": frozenset({PASSENGER}),
        "nearby_unsubscribe": frozenset({PASSENGER}),
    }
    subscribe: bool
    lat: float
    lon: float
    radius_m: float

    @classmethod
    def from_map(cls, m: dict[str, Any], conn_id: str) -> Nearby:
        subscribe = m["type"] == "nearby_subscribe"
        radius = _number(m, "radius_m", 1.0, MAX_NEARBY_RADIUS_M, required=False)
        return cls(
            subscribe=subscribe,
            lat=_number(m, "lat", -90.0, 90.0, required=subscribe),
            lon=_number(m, "lon", -180.0, 180.0, required=subscribe),
            radius_m=1000.0 if math.isnan(radius) else radius,
        )


ADMIN_TOPICS = frozenset({"system_stats", "active_orders", "drivers", "assignments", "log", "fleet"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSubscribe:
    type: ClassVar[str] = "subscribe"
    roles: ClassVar[frozenset[Role]] = frozenset({ADMIN})
    topics: frozenset[str]

    @classmethod
    def from_map(cls, m: dict[str, Any], conn_id: str) -> AdminSubscribe:
        topics = m.get("topics")
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise BadMessage("topics: must be a list of strings")
        unknown = sorted(set(topics) - ADMIN_TOPICS)
        if unknown:
            raise BadMessage(f"topics: unknown topic {unknown[0]!r}")
        return cls(topics=frozenset(topics))


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    type: ClassVar[str] = "ping"
    roles: ClassVar[frozenset[Role]] = frozenset({DRIVER, PASSENGER, ADMIN})

    @classmethod
    def from_map(cls, m: dict[str, Any], conn_id: str) -> Ping:
        return cls()


ClientMessage = DriverLocation | DriverStatus | OrderAction | RideRequest | Nearby | AdminSubscribe | Ping

# type name -> (message class, roles allowed to send it)
SCHEMAS: dict[str, tuple[type, frozenset[Role]]] = {
    **{c.type: (c, c.roles) for c in (DriverLocation, DriverStatus, RideRequest, AdminSubscribe, Ping)},
    **{name: (OrderAction, roles) for name, roles in OrderAction.TYPES.items()},
    **{name: (Nearby, roles) for name, roles in Nearby.TYPES.items()},
}
