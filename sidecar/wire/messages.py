"""Client -> server messages of the public protocol (DESIGN §4), as types.

Each message type is a frozen `msgspec.Struct` in one union tagged on `"type"`
(`CLIENT_MESSAGE`). Its constraints live in its annotations: ranges, lengths and
enums as `msgspec.Meta`, each with the rule an error quotes as its `description`
(`lat: must be a number between -90 and 90`). So `codec.py` decodes and validates
in one pass of msgspec's decoder, and the error texts come from the same place as
the checks. What a type cannot say — the connection's role, a `driver_id` equal to
the connection's own, a reason's length in UTF-8 bytes — `codec.py` checks after
decoding.

The server -> client direction: the messages made from engine records are typed in
`pushes.py`, the rest are plain maps built where the events happen; the shapes of
all of them are in `schema.py` and docs/protocol.md.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,36}")
MAX_REQUEST_ID_LEN = 64
MAX_REASON_BYTES = 64
MAX_NEARBY_RADIUS_M = 5000.0
DEFAULT_NEARBY_RADIUS_M = 1000.0
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Role(StrEnum):
    DRIVER = "driver"
    PASSENGER = "passenger"
    ADMIN = "admin"


DRIVER, PASSENGER, ADMIN = Role.DRIVER, Role.PASSENGER, Role.ADMIN
# A role with its article, for messages: "a driver", "an admin".
A_ROLE = {role: ("an " if role.value[0] in "aeiou" else "a ") + role.value for role in Role}


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


# ---- field types: the constraint and the rule an error quotes, side by side ----------------


def _between(lo: float, hi: float) -> Any:
    """A finite number in [lo, hi]; NaN and ±inf fail the bounds (msgspec compares, NaN never passes)."""
    return Annotated[float, Meta(ge=lo, le=hi, description=f"must be a number between {lo:g} and {hi:g}")]


Lat = _between(-90.0, 90.0)
Lon = _between(-180.0, 180.0)
Heading = _between(0.0, 360.0)
SpeedKmh = _between(0.0, 400.0)
AccuracyM = _between(0.0, 100_000.0)
RadiusM = _between(1.0, MAX_NEARBY_RADIUS_M)
OrderId = Annotated[int, Meta(ge=1, le=INT64_MAX, description="must be a positive 64-bit integer")]
# Characters here (all msgspec can count); codec.py then checks the UTF-8 bytes, which the
# engine's record holds. 64 characters are at least 64 bytes, so this bound never refuses early.
Reason = Annotated[str, Meta(max_length=MAX_REASON_BYTES,
                             description=f"must be a string of at most {MAX_REASON_BYTES} bytes of UTF-8")]
DriverId = Annotated[str, Meta(description="must be a string (your own id)")]
Status = Annotated[Literal["online", "offline"], Meta(description="must be 'online' or 'offline'")]
ADMIN_TOPICS = frozenset({"system_stats", "active_orders", "drivers", "assignments", "log", "fleet"})
Topic = Literal["system_stats", "active_orders", "drivers", "assignments", "log", "fleet"]
assert set(Topic.__args__) == ADMIN_TOPICS  # type: ignore[attr-defined]
# A frozenset: duplicates collapse as they are read, so however long the array, at most five
# strings are kept (the 64 KiB message cap bounds the reading).
Topics = Annotated[frozenset[Topic],
                   Meta(description=f"must be a list of topics from {', '.join(sorted(ADMIN_TOPICS))}")]
REQUEST_ID_RULE = f"must be a string of 1 to {MAX_REQUEST_ID_LEN} characters or a signed 64-bit integer"
RequestId = Annotated[
    Annotated[str, Meta(min_length=1, max_length=MAX_REQUEST_ID_LEN)] | Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
    | None,
    Meta(description=REQUEST_ID_RULE),
]


class Point(Struct, frozen=True, gc=False):
    """A WGS 84 position, `{"lat": ..., "lon": ...}` on the wire."""

    lat: Lat
    lon: Lon


PointField = Annotated[Point, Meta(description="must be an object with lat and lon")]


# ---- messages ------------------------------------------------------------------------------


class ClientMessage(Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """The envelope every client message shares: `type` (the tag) and an optional request `id`.

    `roles` says who may send the message; `gc=False` because a message holds only scalars,
    strings and Points, never a cycle (and a position arrives 100k times a second).
    """

    id: RequestId = None
    roles: ClassVar[frozenset[Role]]


class DriverLocation(ClientMessage, tag="driver_location"):
    roles = frozenset({DRIVER})
    lat: Lat
    lon: Lon
    heading: Heading = math.nan
    speed_kmh: SpeedKmh = math.nan
    accuracy_m: AccuracyM = math.nan
    driver_id: DriverId | UnsetType = UNSET  # present: must equal the connection's id (codec.py)


class DriverStatus(ClientMessage, tag="driver_status"):
    roles = frozenset({DRIVER})
    status: Status

    @property
    def online(self) -> bool:
        return self.status == "online"


class OrderAction(ClientMessage):
    """A driver's (or, to cancel, a passenger's or an admin's) command on one order; one subclass per `type`."""

    roles = frozenset({DRIVER})
    order_id: OrderId


class OrderAccept(OrderAction, tag="order_accept"):
    pass


class OrderReject(OrderAction, tag="order_reject"):
    pass


class OrderArrived(OrderAction, tag="order_arrived"):
    pass


class TripStart(OrderAction, tag="trip_start"):
    pass


class TripComplete(OrderAction, tag="trip_complete"):
    pass


class OrderCancel(OrderAction, tag="order_cancel"):
    """The engine decides what the sender may cancel: its own order (driver, passenger), any live one (admin)."""

    roles = frozenset({DRIVER, PASSENGER, ADMIN})
    reason: Reason = ""


class RideRequest(ClientMessage, tag="ride_request"):
    roles = frozenset({PASSENGER})
    pickup: PointField
    dropoff: PointField


class Nearby(ClientMessage):
    """nearby_subscribe / nearby_unsubscribe: drivers around a point, pushed while subscribed."""

    roles = frozenset({PASSENGER})
    subscribe: ClassVar[bool]


class NearbySubscribe(Nearby, tag="nearby_subscribe"):
    subscribe = True
    lat: Lat
    lon: Lon
    radius_m: RadiusM = DEFAULT_NEARBY_RADIUS_M


class NearbyUnsubscribe(Nearby, tag="nearby_unsubscribe"):
    """The fields are optional and ignored, but checked when present (a client that sends them
    back from its subscribe should hear about a bad one)."""

    subscribe = False
    lat: Lat = math.nan
    lon: Lon = math.nan
    radius_m: RadiusM = DEFAULT_NEARBY_RADIUS_M


class AdminSubscribe(ClientMessage, tag="subscribe"):
    roles = frozenset({ADMIN})
    topics: Topics


class Ping(ClientMessage, tag="ping"):
    roles = frozenset({DRIVER, PASSENGER, ADMIN})


MESSAGE_TYPES: tuple[type[ClientMessage], ...] = (
    DriverLocation, DriverStatus, OrderAccept, OrderReject, OrderArrived, TripStart, TripComplete, OrderCancel,
    RideRequest, NearbySubscribe, NearbyUnsubscribe, AdminSubscribe, Ping,
)
CLIENT_MESSAGE: Any = MESSAGE_TYPES[0]
for _cls in MESSAGE_TYPES[1:]:
    CLIENT_MESSAGE = CLIENT_MESSAGE | _cls
"""The tagged union both decoders read: every client message type."""


def type_name(cls: type[ClientMessage]) -> str:
    """The wire `type` of a message class (its msgspec tag)."""
    return cls.__struct_config__.tag  # type: ignore[return-value]


# type name -> (message class, roles allowed to send it)
SCHEMAS: dict[str, tuple[type[ClientMessage], frozenset[Role]]] = {
    type_name(c): (c, c.roles) for c in MESSAGE_TYPES
}


# ---- the rule each field's errors quote ------------------------------------------------------


def _rule(t: msgspec.inspect.Type) -> tuple[str | None, type | None]:
    """(the description a field's type carries, the Struct it holds if any), looking through unions."""
    rule = None
    sub = None
    if isinstance(t, msgspec.inspect.Metadata):
        rule = (t.extra_json_schema or {}).get("description")
        inner_rule, sub = _rule(t.type)
        rule = rule or inner_rule
    elif isinstance(t, msgspec.inspect.StructType):
        sub = t.cls
    elif isinstance(t, msgspec.inspect.UnionType):
        for member in t.types:
            r, s = _rule(member)
            rule, sub = rule or r, sub or s
    return rule, sub


FIELD_RULES: dict[type, dict[str, tuple[str | None, type | None]]] = {}
"""Struct class -> field name -> (rule, nested Struct): what codec.py quotes in a `bad_message`."""
for _cls in (*MESSAGE_TYPES, Point):
    _info = msgspec.inspect.type_info(_cls)
    assert isinstance(_info, msgspec.inspect.StructType)
    FIELD_RULES[_cls] = {f.name: _rule(f.type) for f in _info.fields}
    assert all(rule for rule, _sub in FIELD_RULES[_cls].values()), f"{_cls.__name__}: a field without a rule"
