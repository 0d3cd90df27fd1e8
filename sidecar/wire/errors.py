"""Errors of the public protocol: the wire codes (DESIGN §4) and the client mistakes that carry them.

A `ClientError` is raised by the codec for a message the client got wrong; the session core
answers it with an `error` frame (its `code`, its `message`, the request `id` when known) and
the connection stays open.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorCode(StrEnum):
    """Wire error codes (DESIGN §4)."""

    BAD_FRAME = "bad_frame"
    UNAUTHORIZED = "unauthorized"  # a browser's refused upgrade (wire/auth.py: ws_refusal); a token expired
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    OVERLOADED = "overloaded"


# The message of an expired token: the refusal of an upgrade (wire/auth.py ExpiredToken) and the
# `unauthorized` error just before an open connection is closed 4401 at its token's expiry (session/core.py).
EXPIRED = "token expired"


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
