"""Sans-I/O protocol: frames in, typed messages or typed errors out.

Nothing here touches a socket or awaits. The server feeds each WebSocket
data frame to a per-connection `Decoder` and sends what `encode()` returns;
tests drive the same calls with bytes only.

Flow for one inbound frame::

    decoder.feed(binary, fin, payload) -> Request | None (fragment held)
                                        raises ClientError (answer `error`)
                                        raises MessageTooBig (close 1009)
                                        raises InvalidText (close 1007)

A whole message is read by msgspec in one pass, straight into the typed
message of `messages.py` (text frames as JSON, binary frames as msgpack), and
validated as it is read. Only a refused message is looked at again, to
answer it the way a client reads an answer (`refusal`). Server messages go
out through msgspec's encoders: `encode()` to bytes, or `ENCODE_INTO` into a
reused buffer (the push path: typed messages of `pushes.py`, framed by the
session core straight into each client's write buffer, `frames.py`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from enum import Enum
from typing import Any

import msgspec
from msgspec import UNSET, Raw, Struct

from sidecar.wire.errors import BadFrame, BadMessage, ClientError, Forbidden, UnknownType
from sidecar.wire.messages import (
    A_ROLE,
    CLIENT_MESSAGE,
    FIELD_RULES,
    MAX_REASON_BYTES,
    MESSAGE_TYPES,
    REQUEST_ID_RULE,
    SCHEMAS,
    ClientMessage,
    DriverLocation,
    OrderCancel,
    RequestId,
    Role,
    type_name,
)
from sidecar.wire.messages import (
    MAX_REQUEST_ID_LEN as MAX_REQUEST_ID_LEN,  # the limits docs/protocol.md states live here
)

MAX_MESSAGE_BYTES = 64 * 1024  # a ride_request is ~150 bytes; 64 KiB leaves room for admin tools
# Frames one message may span. Empty CONTINUATION frames add no bytes, so the byte cap alone
# would let a client grow the fragment list (and the work per message) without bound.
MAX_FRAGMENTS = 256
NOT_A_MAP = "a message must be a map with a 'type'"
NESTING_TOO_DEEP = "nesting too deep"
TYPE_REQUIRED = "type: required, a string"


class Format(Enum):
    JSON = "dgdo.v1.json"
    MSGPACK = "dgdo.v1.msgpack"


JSON, MSGPACK = Format.JSON, Format.MSGPACK


class MessageTooBig(Exception):
    """A message (all its fragments together) over the byte or fragment cap: close with 1009.

    `str(e)` is the text of the `too_large` error sent just before the close.
    """


class InvalidText(Exception):
    """A text message whose bytes are not UTF-8: the connection fails with 1007 (RFC 6455 §8.1).

    Not a ClientError: no `error` answers it, and a binary (msgpack) message is not text (a bad
    string in one is a `bad_frame`). `str(e)` says where; it is the CLOSE's reason.
    """


class Request(Struct, frozen=True, gc=False):
    """A validated client message and the request id to answer, if any.

    A Struct rather than a dataclass: built once per inbound message, it costs ~50 ns instead
    of ~500 ns.
    """

    message: ClientMessage
    request_id: str | int | None


# ---- decoding: one typed pass, and a second look only when it refuses --------------------------

# One decoder per format, shared by every connection: msgspec parses and validates against the
# tagged union in one pass, allocating only the fields it knows (unknown fields are parsed for
# syntax and dropped, whatever their size). NaN and ±inf fail every number's bounds; JSON's NaN/Infinity
# tokens are not JSON at all. Nesting deeper than the interpreter's recursion limit is a
# RecursionError, caught below. A map or array header that claims more items than the
# remaining bytes could hold is refused before anything is allocated.
_decode_json = msgspec.json.Decoder(CLIENT_MESSAGE).decode
_decode_msgpack = msgspec.msgpack.Decoder(CLIENT_MESSAGE).decode


class _Envelope(Struct, gc=False):
    """What the error path reads of a refused message: its `type` and `id`, still encoded."""

    type: Raw = Raw()
    id: Raw = Raw()


_envelope_json = msgspec.json.Decoder(_Envelope).decode
_envelope_msgpack = msgspec.msgpack.Decoder(_Envelope).decode
_id_json = msgspec.json.Decoder(RequestId).decode
_id_msgpack = msgspec.msgpack.Decoder(RequestId).decode
_str_json = msgspec.json.Decoder(str).decode
_str_msgpack = msgspec.msgpack.Decoder(str).decode


def _check_driver_id(m: DriverLocation, conn_id: str) -> None:
    if m.driver_id is not UNSET and m.driver_id != conn_id:
        raise Forbidden("driver_id: does not match this connection", m.id)


def _check_reason(m: OrderCancel, conn_id: str) -> None:
    if len(m.reason.encode("utf-8")) > MAX_REASON_BYTES:
        raise BadMessage(f"reason: {FIELD_RULES[OrderCancel]['reason'][0]}", m.id)


# What the types cannot say, checked after decoding: role -> message class -> extra check (or None:
# nothing to check). A class missing from a role's table is forbidden to that role. One dict
# lookup per message decides both.
_CHECKS: dict[type, Callable[[Any, str], None]] = {DriverLocation: _check_driver_id, OrderCancel: _check_reason}

ALLOWED: dict[Role, dict[type, Callable[[Any, str], None] | None]] = {
    role: {cls: _CHECKS.get(cls) for cls in MESSAGE_TYPES if role in cls.roles} for role in Role
}
_FORBIDDEN: Any = object()  # what a role's table gives for a class it does not hold


def decode(payload: bytes, binary: bool, role: Role, conn_id: str) -> Request:
    """Decodes and validates one whole message as a connection of `role` and `conn_id` would
    (`Decoder.feed` with a decoder of its own: the size cap applies too). For tools and tests;
    the server keeps one Decoder per connection."""
    request = Decoder(role, conn_id).feed(binary, True, payload)
    assert request is not None  # a whole message is never held
    return request


def _check_utf8(payload: bytes) -> None:
    """A text message is UTF-8 throughout (RFC 6455 §5.6). msgspec checks the strings it keeps, not
    those it skips unread in unknown fields, so a non-ASCII payload is checked whole first: the whole
    message, since a fragment may end inside a character the next one completes."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidText(f"invalid UTF-8 in a text message (byte {e.start})") from None


def undecodable(binary: bool, e: msgspec.DecodeError, payload: bytes = b"") -> str:
    """`undecodable JSON: malformed: invalid character (byte 4)`: msgspec's words, without its prefix."""
    text = str(e).removeprefix("MessagePack data is ").removeprefix("JSON is ")
    if not binary and text == "Input data was truncated" and (at := _lone_high_surrogate(payload)) is not None:
        text = f"malformed: invalid utf-16 surrogate pair (byte {at})"  # (what msgspec says of a lone low one)
    return f"undecodable {'msgpack' if binary else 'JSON'}: {text[:1].lower()}{text[1:80]}"


_HIGH_SURROGATE = re.compile(rb"(\\+)u[dD][89abAB][0-9a-fA-F]{2}")
_LOW_SURROGATE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _lone_high_surrogate(payload: bytes) -> int | None:
    """Where a `\\uD800`-`\\uDBFF` escape with no low surrogate escape after it starts, if any.

    msgspec 0.23 says "Input data was truncated" of one within 6 bytes of the end (`{"id":"\\ud800"}`),
    where it looks for the low half (further in, it names the surrogate): words for a message cut
    short, not for its JSON. Only refused messages get here.
    """
    for m in _HIGH_SURROGATE.finditer(payload):
        if len(m.group(1)) % 2 and not _LOW_SURROGATE.match(payload, m.end()):  # (an even run is escaped backslashes)
            return m.end(1) - 1
    return None


def refusal(payload: bytes, binary: bool, role: Role, reason: str) -> ClientError:
    """The error for a well-formed frame that the typed pass refused with `reason` (msgspec's text).

    msgspec stops at the first field it cannot accept, in wire order. A client reads an
    error the other way round: first which request it answers (`id`), then whether the
    message was one it may send at all (`type`, role), then what is wrong with it. So the
    envelope is read again, leniently, and checked in that order; only then is msgspec's
    complaint translated into the field's rule (`pickup.lat: must be a number between -90
    and 90`). This runs only for refused messages.
    """
    try:
        env = _envelope_msgpack(payload) if binary else _envelope_json(payload)
    except msgspec.ValidationError as e:  # not a map, or (msgpack) a key that is not a string
        return BadFrame("map keys must be strings" if "`key`" in str(e) else NOT_A_MAP)
    except msgspec.DecodeError as e:  # malformed past the point the typed pass stopped at
        return BadFrame(undecodable(binary, e, payload))
    except RecursionError:
        return BadFrame(NESTING_TOO_DEEP)
    rid = None
    if env.id:
        try:
            rid = _id_msgpack(env.id) if binary else _id_json(env.id)
        except msgspec.DecodeError:
            return BadMessage(f"id: {REQUEST_ID_RULE}")
    if not env.type:
        return BadMessage(TYPE_REQUIRED, rid)
    try:
        name = _str_msgpack(env.type) if binary else _str_json(env.type)
    except msgspec.DecodeError:
        return BadMessage(TYPE_REQUIRED, rid)
    schema = SCHEMAS.get(name)
    if schema is None:
        return UnknownType(f"type: unknown message type {name[:40]!r}", rid)
    cls, roles = schema
    if role not in roles:
        return Forbidden(f"type: {name} is not allowed for {A_ROLE[role]}", rid)
    what, _, where = reason.partition(" - at ")
    # msgspec quotes a refused enum value whole (`Invalid enum value 'xxx...'`): cut before the cache
    # keys on it, or a client's refused 60 KB values would be kept, 1024 of them, in every worker.
    return BadMessage(explain(cls, what[:MAX_QUOTED], where[:MAX_QUOTED]), rid)


_AT = re.compile(r"`\$([^`]*)`")
_NAME = re.compile(r"\.([^.\[\]]+)")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


MAX_QUOTED = 200  # of msgspec's complaint, each half: what is wrong, and where


@functools.lru_cache(maxsize=1024)  # a client that repeats a mistake repeats msgspec's words too
def explain(cls: type, what: str, where: str) -> str:
    """msgspec's `Expected `float` <= 90.0 - at `$.pickup.lat`` (split at ` - at `) ->
    `pickup.lat: must be a number ...`.

    The field is named by its path without `$.` and without array indices; the text is the
    rule its type carries (`events.FIELD_RULES`), or `required` for a missing field.
    """
    at = _AT.search(where)
    names = _NAME.findall(at.group(1)) if at else []
    rules = FIELD_RULES.get(cls, {})
    rule = None
    for name in names:
        rule, sub = rules.get(name, (None, None))
        rules = FIELD_RULES.get(sub, {}) if sub is not None else {}
    missing = _MISSING.match(what)
    if missing:
        names.append(missing.group(1))
        rule = "required"
    text = rule or what[:1].lower() + what[1:]
    return f"{'.'.join(names)}: {text}" if names else text


class Decoder:
    """Per-connection inbound state: reassembles fragments under the size cap.

    picows hands over frames, not messages; a fragmented message counts
    against the cap as it grows, so it is refused before it is buffered whole.
    The msgspec decoders are shared by all connections; what is kept per
    connection is these few slots (one is made for every connection).
    """

    __slots__ = ("_allowed", "_binary", "_parts", "_size", "conn_id", "frames", "last_frames", "max_bytes",
                 "max_fragments", "role")

    def __init__(self, role: Role, conn_id: str, max_bytes: int = MAX_MESSAGE_BYTES,
                 max_fragments: int = MAX_FRAGMENTS) -> None:
        self.role = role
        self.conn_id = conn_id
        self._allowed = ALLOWED[role]  # (a reference: one table per role, shared)
        self.max_bytes = max_bytes
        self.max_fragments = max_fragments
        self.frames = 0  # data frames fed so far (a count for tests and metrics)
        self.last_frames = 0  # frames the message just completed or refused spanned: what it costs
        self._parts: list[bytes] = []
        self._size = 0
        self._binary = False

    def feed(self, binary: bool | None, fin: bool, payload: bytes) -> Request | None:
        """Feeds one data frame; the message it completes is decoded and validated in one pass
        (a text message as JSON, a binary one as msgpack) and checked against the connection's
        role and id.

        Args:
            binary: True for BINARY, False for TEXT, None for CONTINUATION.
            fin: the frame's FIN bit.
            payload: the frame's payload.
        Returns:
            The request when the message is complete, None while fragments arrive.
        Raises:
            MessageTooBig: the message exceeds the byte cap or spans more than
                `max_fragments` frames (close 1009).
            InvalidText: a text message that is not UTF-8 (close 1007).
            ClientError: the message is invalid (answer with an `error`): BadFrame (not
                decodable, nesting too deep, not a map), BadMessage, UnknownType, Forbidden
                (also a type the role may not send, a driver_id not its own), with the
                request id attached when the message has a valid one.
        After a return or a raise other than for a held fragment, `last_frames` says how
        many frames the message spanned.
        """
        self.frames += 1
        if fin and binary is not None and not self._parts:  # a whole message in one frame: the usual case
            self.last_frames = 1
            if len(payload) > self.max_bytes:
                raise MessageTooBig(f"message of {len(payload)} bytes exceeds the limit of {self.max_bytes} bytes")
        else:
            whole = self._reassemble(binary, fin, payload)
            if whole is None:
                return None
            payload, binary = whole
        # Decoded here rather than in a method of its own: a call is ~0.1 µs of every message.
        try:
            if binary:
                m = _decode_msgpack(payload)
            else:
                if not payload.isascii():  # (the usual message is ASCII: one fast scan, no copy)
                    _check_utf8(payload)
                m = _decode_json(payload)
        except msgspec.ValidationError as e:
            raise refusal(payload, binary, self.role, str(e)) from None
        except msgspec.DecodeError as e:
            raise BadFrame(undecodable(binary, e, payload)) from None
        except RecursionError:
            raise BadFrame(NESTING_TOO_DEEP) from None
        # What the types cannot say: the role may send it (else Forbidden), and its own check.
        check = self._allowed.get(type(m), _FORBIDDEN)
        if check is not None:
            if check is _FORBIDDEN:
                raise Forbidden(f"type: {type_name(type(m))} is not allowed for {A_ROLE[self.role]}", m.id)
            check(m, self.conn_id)
        return Request(m, m.id)

    def _reassemble(self, binary: bool | None, fin: bool, payload: bytes) -> tuple[bytes, bool] | None:
        """A fragment: held (None), or the message it completes (payload, binary); raises as feed() does."""
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
        return payload, is_binary

    def _reset(self) -> None:
        self._parts = []
        self._size = 0


# msgspec's encoders write a typical push in ~0.2-0.4 µs (the stdlib's json takes ~5 µs). One of
# each, shared; they hold no per-call state. On the push path the message is typed
# (wire/pushes.py) and encoded into a buffer the drain reuses (`ENCODE_INTO`), not into a new
# bytes object: session/core.py `_frame`.
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_encode_json = _json_encoder.encode
_encode_msgpack = _msgpack_encoder.encode
ENCODE_INTO = (_json_encoder.encode_into, _msgpack_encoder.encode_into)
"""`ENCODE_INTO[binary](message, buffer)`: the message's JSON (False) or msgpack (True) into a
bytearray, replacing what it held; the same bytes `encode()` returns."""


def encode(message: dict[str, Any] | Struct, fmt: Format) -> bytes:
    """Encodes a server message (a map, or a typed push of wire/pushes.py) for a connection's format.

    Messages never carry NaN (unknown optional values are left out), so the JSON is
    always standard. The msgpack is what the `msgpack` package's default Packer writes
    (smallest int forms, float64, `str` for strings), so any client library reads it.
    """
    if fmt is JSON:
        return _encode_json(message)
    return _encode_msgpack(message)


def error_message(err: ClientError, ts_ms: int) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": err.code.value, "message": err.message, "ts": ts_ms}
    if err.request_id is not None:
        out["id"] = err.request_id
    return out
