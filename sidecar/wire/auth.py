"""Who may open which WebSocket: JWT HS256 checked on the upgrade request, before any frame.

Pure functions over the token, the route and the secret (no I/O), so every
case is testable without a socket. The server turns each `AuthError` into
the HTTP status in `HTTP_STATUS` — the one place where that mapping lives:

    AuthError
     ├── Unauthenticated        401  who you are is unknown (retry with a good token)
     │    ├── MissingToken            no ?token= and no Authorization: Bearer
     │    ├── BadToken                undecodable, bad signature, bad or missing claims
     │    └── ExpiredToken            exp in the past
     └── NotAllowed             403  you are known, but this path is not yours
          ├── WrongRole               role claim differs from the path's role
          ├── WrongSubject            sub differs from the path's id
          └── ForeignOrigin           auth off: a browser page of another site (below)

A browser script never sees the status of a refused upgrade (only close 1006, as for a server
that is down), so an upgrade that carries `Origin` (browsers always send it; native apps and
servers usually do not) is refused the WebSocket way instead (`ws_refusal`): accepted, one
`error` (`unauthorized` / `forbidden`), then close 4401 / 4403, the HTTP status plus 4000.

With auth off (--insecure-no-auth) there is no token to ask for, and a browser lets any page it
shows open a WebSocket to any address, the operator's own sidecar included: a page of any site
the operator visits could read the admin feed or act as any app (cross-site WebSocket hijacking).
So then a browser's upgrade (one with `Origin`) is served only when its Origin names the host it
was sent to (`Host`; any port): the dashboard, served by the sidecar itself, still connects.
With auth on no such check is needed: a page of another site has no token to send (none is kept
in a cookie), and a web app of another site with tokens of its own is a client like any other.

A token is checked once, at the upgrade; the connection it opened is closed when the token would
no longer open one (`expires_at`: its `exp` plus LEEWAY_S), with the same `unauthorized` error and
close 4401 a browser's refused upgrade gets (session/core.py, SessionCore.tick). An app refreshes
its token before then and reconnects with `?last_seq`.

Browsers cannot set headers on a WebSocket, hence `?token=`; native apps may
prefer `Authorization: Bearer`. When both are sent the header wins (query
strings end up in access logs; a header is the better-kept of the two).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from sidecar.wire.errors import EXPIRED, ErrorCode
from sidecar.wire.messages import A_ROLE, Role, is_valid_id

ALGORITHM = "HS256"
ENV_SECRET = "DGDO_JWT_SECRET"
DEFAULT_TTL_S = 24 * 3600
ROLES = frozenset(r.value for r in Role)
LEEWAY_S = 5  # tolerated clock skew between the token's issuer and this host
MAX_TOKEN_LEN = 2048  # a token with sub/role/exp is ~150 bytes; refuse to verify megabytes
# HS256's key should be at least the hash's size (RFC 7518 §3.2); shorter ones fall to an offline
# brute force from one token. The command line refuses them (sidecar/shell/jwt_secret.py).
MIN_SECRET_BYTES = 32


class AuthError(Exception):
    """The upgrade is refused; the subclass decides the HTTP status (see HTTP_STATUS)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(AuthError):
    pass


class MissingToken(Unauthenticated):
    pass


class BadToken(Unauthenticated):
    pass


class ExpiredToken(Unauthenticated):
    pass


class NotAllowed(AuthError):
    pass


class WrongRole(NotAllowed):
    pass


class WrongSubject(NotAllowed):
    pass


class ForeignOrigin(NotAllowed):
    pass


# The one mapping of handshake refusals to HTTP statuses (RFC 6750 §3.1: 401 invalid_token, 403 insufficient_scope).
HTTP_STATUS: dict[type[AuthError], int] = {
    MissingToken: 401,
    BadToken: 401,
    ExpiredToken: 401,
    WrongRole: 403,
    WrongSubject: 403,
    ForeignOrigin: 403,
}


def http_status(err: AuthError) -> int:
    return HTTP_STATUS[type(err)]


# The same refusals for a browser, which sees close codes but not HTTP statuses: close 4000 + the
# status, after an `error` with the code of the same name.
WS_ERROR_CODE: dict[int, ErrorCode] = {401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN}
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403


def ws_refusal(err: AuthError) -> tuple[ErrorCode, int]:
    """The `error` code and the close code that tell a browser what `http_status(err)` tells anyone else."""
    status = http_status(err)
    return WS_ERROR_CODE[status], 4000 + status


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    role: Role
    exp: int


def expires_at(claims: Claims) -> int:
    """The first second (since the epoch) at which verify() refuses the token: a connection it
    opened ends then. Not `exp` itself: a token the upgrade still takes (within LEEWAY_S of its
    `exp`) would otherwise open a connection only to see it closed at the next tick, and an app
    retrying with it would loop until the leeway ran out."""
    return claims.exp + LEEWAY_S


def new_secret() -> str:
    """A random secret for a local run (256 bits, URL-safe so it can go in an env var)."""
    return secrets.token_urlsafe(32)


def keys(secret: str) -> list[str]:
    """The keys a secret holds: one per line. The first signs; every one verifies, so that a secret
    can be rotated without a moment when some worker refuses the tokens another accepts (README
    "Secret": the new key as a second line everywhere, then the issuer switches, then the old goes)."""
    return [line.rstrip("\r") for line in secret.split("\n")]


def mint(secret: str, role: Role | str, sub: str, ttl_s: float = DEFAULT_TTL_S, now: float | None = None) -> str:
    """Signs a token for `role`/`sub` valid for `ttl_s` seconds (with the secret's first key)."""
    issued = int(time.time() if now is None else now)
    payload = {"sub": sub, "role": str(Role(role)), "iat": issued, "exp": issued + int(ttl_s)}
    return jwt.encode(payload, keys(secret)[0], algorithm=ALGORITHM)


def token_from(query: dict[str, str], authorization: str | None) -> str:
    """The bearer token of an upgrade request.

    Raises:
        MissingToken: neither the header nor `?token=` carries one.
    """
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    token = query.get("token", "")
    if token:
        return token
    raise MissingToken("no token: send ?token= or Authorization: Bearer")


def verify(token: str, secret: str) -> Claims:
    """Checks the signature (with each of the secret's `keys` in turn) and the claims.

    Raises:
        BadToken: malformed, wrong signature or algorithm, a claim missing or invalid.
        ExpiredToken: `exp` is in the past.
    """
    if len(token) > MAX_TOKEN_LEN:
        raise BadToken("token too long")
    options: dict[str, Any] = {"require": ["exp", "sub", "role"], "verify_sub": False}
    *earlier, last = keys(secret)
    try:
        for key in earlier:  # (a rotation: tokens of the next key fail the first one's signature only)
            try:
                payload = jwt.decode(token, key, algorithms=[ALGORITHM], options=options, leeway=LEEWAY_S)
                break
            except jwt.InvalidSignatureError:
                continue
        else:
            payload = jwt.decode(token, last, algorithms=[ALGORITHM], options=options, leeway=LEEWAY_S)
    except jwt.ExpiredSignatureError:
        raise ExpiredToken(EXPIRED) from None
    except jwt.InvalidTokenError as e:
        raise BadToken(f"invalid token: {str(e)[:80]}") from None
    sub, role, exp = payload.get("sub"), payload.get("role"), payload.get("exp")
    if not is_valid_id(sub):
        raise BadToken("sub: 1-36 characters of [A-Za-z0-9_.:-]")
    if not isinstance(role, str) or role not in ROLES:
        raise BadToken("role: must be driver, passenger or admin")
    return Claims(sub, Role(role), int(exp))


def authorize(claims: Claims, role: Role, app_id: str | None) -> None:
    """Checks that the token's holder may open the path of `role` / `app_id` (None: any id, the admin path).

    Raises:
        WrongRole, WrongSubject.
    """
    if claims.role is not role:
        raise WrongRole(f"{A_ROLE[claims.role]} token cannot open {A_ROLE[role]} path")
    if app_id is not None and claims.sub != app_id:
        raise WrongSubject("the token's sub does not match the path's id")


def same_host(origin: str, host: str | None) -> bool:
    """Whether a browser's `Origin` names the host its request was sent to (`Host`), ports aside.

    "null" (a sandboxed frame, a file:// page) and anything unparsable name no host: False.
    """
    try:
        origin_host = urlsplit(origin).hostname
        request_host = urlsplit(f"//{host}").hostname if host else None
    except ValueError:  # e.g. an unclosed "[" of an IPv6 literal
        return False
    return origin_host is not None and origin_host == request_host


class Authenticator:
    """Authenticates upgrade requests with one secret; `None` turns auth off (--insecure-no-auth)."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret

    @property
    def enabled(self) -> bool:
        return self.secret is not None

    def authenticate(self, role: Role, app_id: str | None, query: dict[str, str],
                     authorization: str | None, origin: str | None = None, host: str | None = None) -> Claims | None:
        """Returns the verified claims, or None when auth is off.

        `origin` and `host`: the upgrade's headers (a browser sends `Origin`), checked when auth is off.

        Raises:
            AuthError: map with `http_status()`.
        """
        if self.secret is None:
            if origin is not None and not same_host(origin, host):
                raise ForeignOrigin("auth is off: a page of another site (Origin) may not connect")
            return None
        claims = verify(token_from(query, authorization), self.secret)
        authorize(claims, role, app_id)
        return claims
