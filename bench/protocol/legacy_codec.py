"""The sidecar's codec before msgspec (the previous implementation), kept for the benchmark only.

`bench_codec.py` times it beside `sidecar.wire.codec` in the same run, so every figure of the new
codec has the old one next to it, measured on the same machine under the same load. This is
a copy of the old decode path (orjson / msgpack.unpackb into a dict, then hand-written
validators building frozen dataclasses) and the old `encode` (orjson / msgpack.Packer), with
nothing changed but the imports. Nothing in `sidecar/` or `tests/` uses it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
import orjson

from sidecar.wire.codec import JSON, MAX_FRAGMENTS, MAX_MESSAGE_BYTES, Format, MessageTooBig
from sidecar.wire.errors import BadFrame, BadMessage, ClientError, Forbidden, UnknownType
from sidecar.wire.messages import (
    ADMIN,
    ADMIN_TOPICS,
    DRIVER,
    MAX_NEARBY_RADIUS_M,
    MAX_REASON_BYTES,
    PASSENGER,
    Role,
)

MAX_REQUEST_ID_LEN = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,36}")


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


@dataclass(frozen=True, slots=True)
class Request:
    """A validated client message and the request id to answer, if any."""

    message: ClientMessage
    request_id: str | int | None


def _request_id(m: dict[str, Any]) -> str | int | None:
    rid = m.get("id")
    if rid is None:
        return None
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        raise BadMessage("id: must be a string or an integer")
    if isinstance(rid, str) and not 0 < len(rid) <= MAX_REQUEST_ID_LEN:
        raise BadMessage(f"id: 1 to {MAX_REQUEST_ID_LEN} characters")
    if isinstance(rid, int) and not INT64_MIN <= rid <= INT64_MAX:
        raise BadMessage("id: out of range")
    return rid


def parse_payload(payload: bytes, binary: bool) -> dict[str, Any]:
    """Decodes one whole message: text frames are JSON, binary frames msgpack.

    Raises:
        BadFrame: not decodable, or not a map at the top level.
    """
    try:
        if binary:
            obj = msgpack.unpackb(
                payload, raw=False, strict_map_key=True, max_str_len=MAX_MESSAGE_BYTES,
                max_bin_len=MAX_MESSAGE_BYTES, max_array_len=4096, max_map_len=256, max_ext_len=0,
            )
        else:
            obj = orjson.loads(payload)  # strict: no NaN/Infinity, valid UTF-8, nesting capped at 1024
    except RecursionError:
        raise BadFrame("nesting too deep") from None
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        kind = "msgpack" if binary else "JSON"
        raise BadFrame(f"undecodable {kind}: {str(e)[:80]}") from None
    if not isinstance(obj, dict):
        raise BadFrame("a message must be a map with a 'type'")
    return obj


def parse_message(m: dict[str, Any], role: Role, conn_id: str) -> Request:
    """Validates a decoded map for a connection of `role` with id `conn_id`.

    Raises:
        BadMessage, UnknownType, Forbidden: with the request id attached.
    """
    rid = None
    try:
        rid = _request_id(m)
        mtype = m.get("type")
        if not isinstance(mtype, str):
            raise BadMessage("type: required, a string")
        schema = SCHEMAS.get(mtype)
        if schema is None:
            raise UnknownType(f"type: unknown message type {mtype[:40]!r}")
        cls, roles = schema
        if role not in roles:
            raise Forbidden(f"type: {mtype} is not allowed for a {role.value}")
        return Request(cls.from_map(m, conn_id), rid)
    except ClientError as e:
        e.request_id = rid
        raise


class LegacyDecoder:
    """Per-connection inbound state: reassembles fragments under the size cap.

    picows hands over frames, not messages; a fragmented message counts
    against the cap as it grows, so it is refused before it is buffered whole.
    """

    def __init__(self, role: Role, conn_id: str, max_bytes: int = MAX_MESSAGE_BYTES,
                 max_fragments: int = MAX_FRAGMENTS) -> None:
        self.role = role
        self.conn_id = conn_id
        self.max_bytes = max_bytes
        self.max_fragments = max_fragments
        self.frames = 0  # data frames fed so far (a count for tests and metrics)
        self.last_frames = 0  # frames the message just completed or refused spanned: what it costs
        self._parts: list[bytes] = []
        self._size = 0
        self._binary = False

    def feed(self, binary: bool | None, fin: bool, payload: bytes) -> Request | None:
        """Feeds one data frame.

        Args:
            binary: True for BINARY, False for TEXT, None for CONTINUATION.
            fin: the frame's FIN bit.
            payload: the frame's payload.
        Returns:
            The request when the message is complete, None while fragments arrive.
        Raises:
            MessageTooBig: the message exceeds the byte cap or spans more than
                `max_fragments` frames (close 1009).
            ClientError: the message is invalid (answer with an `error`).
        After a return or a raise other than for a held fragment, `last_frames` says how
        many frames the message spanned.
        """
        self.frames += 1
        if binary is None:
            if not self._parts:
                self.last_frames = 1
                raise BadFrame("continuation frame without a message to continue")
        elif self._parts:
            self.last_frames = len(self._parts) + 1
            self._reset()
            raise BadFrame("new message started before the previous one finished")
        else:
            self._binary = binary
        size = self._size + len(payload)
        frames = len(self._parts) + 1
        if size > self.max_bytes:
            self.last_frames = frames
            self._reset()
            if frames == 1:
                raise MessageTooBig(f"message of {size} bytes exceeds the limit of {self.max_bytes} bytes")
            raise MessageTooBig(f"message of {size} bytes so far (in {frames} fragments) exceeds the limit "
                                f"of {self.max_bytes} bytes")
        if not fin:
            if frames >= self.max_fragments:  # the next frame would pass the cap: refuse now
                self.last_frames = frames
                self._reset()
                raise MessageTooBig(f"message of more than {self.max_fragments} fragments exceeds the limit "
                                    f"of {self.max_fragments} fragments")
            self._parts.append(payload)
            self._size = size
            return None
        self.last_frames = frames
        if self._parts:
            self._parts.append(payload)
            payload = b"".join(self._parts)
        is_binary = self._binary
        self._reset()
        return parse_message(parse_payload(payload, is_binary), self.role, self.conn_id)

    def _reset(self) -> None:
        self._parts = []
        self._size = 0


# orjson encodes a typical push in ~0.4 µs against ~5 µs for the stdlib encoder: on the
# push path that is most of the sidecar's own work (bench/latency profile).
_msgpack_pack = msgpack.Packer(use_bin_type=True).pack


def encode(message: dict[str, Any], fmt: Format) -> bytes:
    """Encodes a server message for a connection's negotiated format.

    Messages never carry NaN (unknown optional values are left out), so the JSON is
    always standard.
    """
    if fmt is JSON:
        return orjson.dumps(message)
    return _msgpack_pack(message)
