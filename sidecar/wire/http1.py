"""HTTP/1.x request heads and whole responses: the little HTTP the sidecar speaks itself.

Sans-I/O, bytes in and bytes out, so that every case is testable without a socket. The
front door (shell/front.py) reads a request head with these, answers the plain-HTTP cases
(health checks over HTTP/1.0, HEAD, wrong methods, a wrong WebSocket version, a full
worker) and hands WebSocket upgrades to picows, which accepts only HTTP/1.1 GET.

Only what a load balancer, a browser and a WebSocket client send is handled: a request line
and header fields (RFC 9112 §2-§5), no body (a POST's body is never read: it gets 405 and the
connection closes). Every response says `Connection: close`: one request per connection, as
picows does for the responses it sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

# The whole request head, request line to the empty line: picows' own limit for an upgrade
# request (16 KiB, its `_http_max_size`); a bearer token or a cookie fits many times over.
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100  # as picows (and h11, nginx's default large_client_header_buffers count)
HEAD_END = b"\r\n\r\n"
TLS_HANDSHAKE = b"\x16"  # the first byte of a TLS record carrying a ClientHello: never the start of a method
VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
WS_VERSION = "13"  # RFC 6455 §4.1: the only version; 7 and 8 were drafts


class BadRequest(Exception):
    """A head that cannot be served; `status` is the answer (400, 431 or 505)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed request head. Header names are lower-cased; a repeated field's values are joined
    with ", " (RFC 9110 §5.3), which is how every field read here may be combined, but for Host,
    which may appear once (`parse_head` refuses a second)."""

    method: bytes
    target: bytes
    version: bytes
    headers: dict[str, str]

    @property
    def upgrade(self) -> bool:
        """Asks for a WebSocket (an `Upgrade` field naming websocket, RFC 6455 §4.1 item 5)."""
        return "websocket" in (t.strip().lower() for t in self.headers.get("upgrade", "").split(","))

    def get(self, name: str) -> str | None:
        return self.headers.get(name)


def head_size(buf: bytes) -> int:
    """Length of the complete head at the start of `buf` (with its empty line), or 0 while more is due.

    Raises:
        BadRequest: 431 when no head has ended within MAX_HEAD_BYTES; 400 for a head that will never
            end here: one with bare-LF lines (its empty line is `\n\n`; picows, which takes the
            upgrades, reads CRLF only), or a TLS handshake sent to a plain-HTTP port. Without this
            both waited out the head timeout in silence.
    """
    end = buf.find(HEAD_END, 0, MAX_HEAD_BYTES)
    if end >= 0:
        return end + len(HEAD_END)
    if buf[:1] == TLS_HANDSHAKE:
        raise BadRequest(400, "a TLS handshake on a plain-HTTP port: use ws:// and http:// here")
    if buf.find(b"\n\n", 0, MAX_HEAD_BYTES) >= 0:
        raise BadRequest(400, "header lines must end in CRLF")
    if len(buf) >= MAX_HEAD_BYTES:
        raise BadRequest(431, f"request head over {MAX_HEAD_BYTES} bytes")
    return 0


def parse_head(raw: bytes) -> Head:
    """Parses a head (as delimited by `head_size`, the empty line optional).

    Raises:
        BadRequest: 400 for a malformed request line or field or a second Host line, 505 for an
            HTTP version other than 1.0 and 1.1 (HTTP/2 and /0.9 are not spoken here).
    """
    lines = raw.rstrip(b"\r\n").split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not method.isalpha() or not method.isupper():
        raise BadRequest(400, "malformed method")
    if version not in VERSIONS:
        if version.startswith(b"HTTP/"):
            raise BadRequest(505, "HTTP/1.1 or HTTP/1.0 only")
        raise BadRequest(400, "malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, f"more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # RFC 9112 §5.1: no whitespace between the name and the colon; obsolete line folding is refused.
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise BadRequest(400, "malformed header field")
        try:
            key = name.decode("ascii").lower()
        except UnicodeDecodeError:
            raise BadRequest(400, "malformed header field") from None
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key == "host":  # RFC 9112 §3.2: a MUST, in any version; two hosts name no one resource
                raise BadRequest(400, "more than one Host header field")
            text = f"{headers[key]}, {text}"
        headers[key] = text
    return Head(method, target, version, headers)


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None,
             head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response that ends the connection (`Connection: close`).

    `head_only`: the answer to a HEAD: the same fields, Content-Length included, without the body
    (RFC 9110 §9.3.2). An HTTP/1.0 client reads an HTTP/1.1 response (RFC 9110 §2.5: same major).
    """
    fields = {"Content-Type": "text/plain; charset=utf-8", **(headers or {}),
              "Content-Length": str(len(body)), "Connection": "close"}
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    out = [f"HTTP/1.1 {status} {reason}\r\n".encode()]
    out.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in fields.items())
    out.append(b"\r\n")
    if not head_only:
        out.append(body)
    return b"".join(out)
