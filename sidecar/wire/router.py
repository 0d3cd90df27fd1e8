"""Request line -> route: which role and id a WebSocket path serves, or which HTTP page.

Pure functions over the path and headers, so every case is testable without
a socket. The server maps each `RouteError` to its HTTP status in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from sidecar.wire.codec import JSON, MSGPACK, Format
from sidecar.wire.messages import Role, is_valid_id

HTTP_PAGES = frozenset({"/healthz", "/metrics", "/admin"})
ADMIN_PAGE = "/admin"  # the dashboard and, under /admin/, its files and /admin/whoami
MAX_TARGET = 2048
QUERY_FORMATS = frozenset({"json", "msgpack"})


class RouteError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class WsRoute:
    role: Role
    app_id: str  # "admin" for the admin path
    query: dict[str, str]
    last_seq: int | None


@dataclass(frozen=True, slots=True)
class HttpRoute:
    path: str
    query: dict[str, str] = field(default_factory=dict)


def route(method: bytes, target: bytes) -> WsRoute | HttpRoute:
    """Resolves a request target.

    Raises:
        RouteError: 404 for unknown paths or malformed ids, 405 for non-GET,
            400 for a malformed query.
    """
    if method != b"GET":
        raise RouteError(405, "only GET")
    if len(target) > MAX_TARGET:
        raise RouteError(414, "request target too long")
    try:
        parts = urlsplit(target.decode("ascii"))
    except UnicodeDecodeError:
        raise RouteError(400, "request target must be ASCII") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    path = parts.path
    if path in HTTP_PAGES or path.startswith(ADMIN_PAGE + "/"):
        return HttpRoute(path, query)
    last_seq = None
    if "last_seq" in query:
        raw = query["last_seq"]
        # isascii(): isdigit() also takes '²' (which int() refuses: a 500) and other scripts' digits.
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise RouteError(400, "last_seq: must be a non-negative integer")
        last_seq = int(raw)
    if path == "/ws/admin":
        return WsRoute(Role.ADMIN, "admin", query, last_seq)
    segments = path.split("/")
    if len(segments) == 4 and segments[0] == "" and segments[1] == "ws" and segments[2] in ("driver", "passenger"):
        app_id = unquote(segments[3])
        if not is_valid_id(app_id):
            raise RouteError(404, "id: 1-36 characters of [A-Za-z0-9_.:-]")
        return WsRoute(Role(segments[2]), app_id, query, last_seq)
    raise RouteError(404, "no such path")


def choose_format(offered: str | None, query: dict[str, str]) -> tuple[Format, str | None]:
    """Picks the wire format.

    Args:
        offered: the Sec-WebSocket-Protocol header, if any.
        query: the query parameters (`format=msgpack` for clients that cannot set subprotocols).
    Returns:
        (format, subprotocol to echo in the 101 response or None).
    Raises:
        RouteError: 400 for a `format` other than json or msgpack (a typo must not
            silently fall back to JSON), even when a subprotocol decides.
    """
    asked = query.get("format")
    if asked is not None and asked not in QUERY_FORMATS:
        raise RouteError(400, "format: must be json or msgpack")
    if offered:
        for name in (p.strip() for p in offered.split(",")):
            if name == JSON.value:
                return JSON, name
            if name == MSGPACK.value:
                return MSGPACK, name
    return (MSGPACK if asked == "msgpack" else JSON), None
