"""Sans-I/O protocol: frames in, typed messages or typed errors out.

Nothing here touches a socket or awaits. The server feeds each WebSocket
data frame to a per-connection `Decoder` and sends what `encode()` returns;
tests drive the same calls with bytes only.

Flow for one inbound frame::

    decoder.feed(binary, fin, payload) -> Request | None (fragment held)
                                        raises ClientError (answer `error`)
                                        raises MessageTooBig (close 1009)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgpack
import orjson

from sidecar.events import (
    SCHEMAS,
    BadFrame,
    BadMessage,
    ClientError,
    ClientMessage,
    Forbidden,
    Role,
    UnknownType,
)

MAX_MESSAGE_BYTES = 64 * 1024  # a ride_request is ~150 bytes; 64 KiB leaves room for admin tools
# Frames one message may span. Empty CONTINUATION frames add no bytes, so the byte cap alone
# would let a client grow the fragment list (and the work per message) without bound.
MAX_FRAGMENTS = 256
MAX_REQUEST_ID_LEN = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Format(Enum):
    JSON = "dgdo.v1.json"
    MSGPACK = "dgdo.v1.msgpack"


JSON, MSGPACK = Format.JSON, Format.MSGPACK


class MessageTooBig(Exception):
    """A message (all its fragments together) over the byte or fragment cap: close with 1009.

    `str(e)` is the text of the `too_large` error sent just before the close.
    """


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


class Decoder:
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


def error_message(err: ClientError, ts_ms: int) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": err.code.value, "message": err.message, "ts": ts_ms}
    if err.request_id is not None:
        out["id"] = err.request_id
    return out
