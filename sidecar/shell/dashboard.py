"""The operator's dashboard over plain HTTP: its files (GET /admin, /admin/<file>) and GET /admin/whoami.

The page itself is static (sidecar/static/, shipped in the wheel, no build step); everything
live comes over /ws/admin. Pure functions over the request: the server turns the answers into
HTTP responses.

Why /admin/whoami: a WebSocket upgrade refused with 401 reaches a browser script only as
close code 1006, the same as "server down". So the page first asks /admin/whoami with the
same token, over plain HTTP where the status is visible: 200 (an admin token; its `sub` and
`exp`), 401 (missing, malformed, badly signed or expired: the body says which) or 403 (a valid
token for another role). Only then does it open the socket; a 1006 after a 200 means the
server went away, and the page reconnects with back-off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from sidecar.wire.auth import Authenticator, AuthError, http_status
from sidecar.wire.messages import Role

WHOAMI = "/admin/whoami"
JSON_TYPE = "application/json"
NO_STORE = {"Cache-Control": "no-store"}
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# The page loads only its own files and talks only to its own server; map tiles (an optional
# setting) may come from any host the operator names. The token rides in the page's URL:
# no Referer may carry it elsewhere.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: http: https:;"
                               " style-src 'self'; script-src 'self'; frame-ancestors 'none'",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: str
    content_type: str
    headers: dict[str, str] = field(default_factory=lambda: dict(PAGE_HEADERS))


@cache
def _assets() -> dict[str, Asset]:
    """The files under sidecar/static, read once (they are small and do not change while running)."""
    out = {}
    for entry in resources.files("sidecar").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            out[entry.name] = Asset(entry.read_text(encoding="utf-8"), CONTENT_TYPES[suffix])
    return out


def asset(path: str) -> Asset | None:
    """The file for `/admin` (the page) or `/admin/<name>`; None for anything else."""
    if path in ("/admin", "/admin/"):
        name = INDEX
    else:
        name = path.removeprefix("/admin/")
        if "/" in name:
            return None
    return _assets().get(name)


def whoami(auth: Authenticator, query: dict[str, str], authorization: str | None) -> tuple[int, str]:
    """Checks an admin token the way /ws/admin will. Returns (HTTP status, JSON body)."""
    try:
        claims = auth.authenticate(Role.ADMIN, None, query, authorization)
    except AuthError as e:
        return http_status(e), json.dumps({"error": e.message})
    if claims is None:  # auth is off (--insecure-no-auth)
        return 200, json.dumps({"sub": "admin", "role": "admin", "exp": None})
    return 200, json.dumps({"sub": claims.sub, "role": claims.role.value, "exp": claims.exp})
