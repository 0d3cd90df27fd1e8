"""Where a test client connects: the WebSocket URL for a role and id on a running stack.

One place for the connect details, so that auth (a `?token=` per connection) is a change here
and not in every test: when the stack or conftest offers a way to mint tokens, it is used.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlencode

import conftest


def token(stack: Any, role: str, sub: str) -> str | None:
    """A token for (role, sub) if this deployment checks them, else None."""
    for owner in (stack, conftest):
        mint = getattr(owner, "mint", None) or getattr(owner, "token", None)
        if callable(mint):
            return mint(role, sub)
    secret = (getattr(stack, "jwt_secret", None) or getattr(stack, "secret", None)
              or getattr(conftest, "JWT_SECRET", None) or os.environ.get("DGDO_JWT_SECRET"))
    if secret:
        import jwt

        return jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
    return None


def ws_url(stack: Any, role: str, app_id: str = "admin", **query: Any) -> str:
    """ws://…/ws/{role}/{app_id} (or /ws/admin) with a token and any extra query parameters."""
    path = "/ws/admin" if role == "admin" else f"/ws/{role}/{app_id}"
    tok = token(stack, role, app_id)
    if tok is not None:
        query = {"token": tok, **query}
    return stack.url + path + (f"?{urlencode(query)}" if query else "")
