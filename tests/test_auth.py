"""Auth: JWT HS256 checked before the upgrade — the pure checks, then every case against the real sidecar.

Two independent clients refuse or accept the same way: the `websockets` library (query token)
and picows (Authorization header).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jwt
import pytest
from conftest import JWT_SECRET, ROOT, Stack, mint
from picows import WSHandshakeError
from picowsclient import PicowsClient
from websockets.exceptions import InvalidStatus
from wsclient import AppClient

from sidecar.wire import auth
from sidecar.wire.messages import Role

# ---- pure -------------------------------------------------------------------------


def test_a_minted_token_verifies_to_its_claims() -> None:
    claims = auth.verify(auth.mint(JWT_SECRET, "driver", "d1", ttl_s=60), JWT_SECRET)
    assert (claims.sub, claims.role) == ("d1", Role.DRIVER)
    assert claims.exp > time.time()


@pytest.mark.parametrize(("token", "error"), [
    (jwt.encode({"sub": "d1", "role": "driver", "exp": 2**40}, "another-secret-of-at-least-32-bytes!!"),
     auth.BadToken),
    (jwt.encode({"sub": "d1", "role": "driver", "exp": 1}, JWT_SECRET), auth.ExpiredToken),
    (jwt.encode({"sub": "d1", "role": "driver"}, JWT_SECRET), auth.BadToken),  # exp is required
    (jwt.encode({"role": "driver", "exp": 2**40}, JWT_SECRET), auth.BadToken),
    (jwt.encode({"sub": "d1", "role": "pilot", "exp": 2**40}, JWT_SECRET), auth.BadToken),
    (jwt.encode({"sub": "not an id!", "role": "driver", "exp": 2**40}, JWT_SECRET), auth.BadToken),
    (jwt.encode({"sub": "d1", "role": "driver", "exp": 2**40}, JWT_SECRET * 2, algorithm="HS512"), auth.BadToken),
    ("not.a.jwt", auth.BadToken),
    ("x" * 5000, auth.BadToken),
])
def test_bad_tokens_are_refused_with_401(token: str, error: type[auth.AuthError]) -> None:
    with pytest.raises(error) as e:
        auth.verify(token, JWT_SECRET)
    assert auth.http_status(e.value) == 401


def test_alg_none_is_refused() -> None:
    unsigned = jwt.encode({"sub": "d1", "role": "driver", "exp": 2**40}, None, algorithm="none")
    with pytest.raises(auth.BadToken):
        auth.verify(unsigned, JWT_SECRET)


def test_a_secret_of_two_lines_signs_with_the_first_and_accepts_both() -> None:
    """Rotation (README "Secret"): every worker takes the next key as a second line, then the issuer
    switches to it, then the first line goes; no worker refuses a token another accepts meanwhile."""
    old, new = "o" * 32, "n" * 32
    both = f"{old}\n{new}"
    assert auth.verify(auth.mint(new, "driver", "d1"), both).sub == "d1"
    assert auth.verify(auth.mint(old, "driver", "d1"), both).sub == "d1"
    assert auth.verify(auth.mint(both, "driver", "d1"), old).sub == "d1"  # the first line signs
    assert auth.verify(auth.mint(old, "driver", "d1"), f"{old}\r\n{new}\r").sub == "d1"  # (CRLF lines)
    with pytest.raises(auth.BadToken):
        auth.verify(auth.mint(new, "driver", "d1"), old)
    with pytest.raises(auth.BadToken):
        auth.verify(auth.mint("x" * 32, "driver", "d1"), both)  # a key of neither line
    with pytest.raises(auth.ExpiredToken):  # an expired token of the second key is expired, not "invalid"
        auth.verify(auth.mint(new, "driver", "d1", ttl_s=-60), both)


def test_role_and_subject_must_match_the_path_else_403() -> None:
    claims = auth.Claims("d1", Role.DRIVER, 2**40)
    auth.authorize(claims, Role.DRIVER, "d1")
    for role, app_id, error in ((Role.PASSENGER, "d1", auth.WrongRole), (Role.DRIVER, "d2", auth.WrongSubject),
                                (Role.ADMIN, None, auth.WrongRole)):
        with pytest.raises(error) as e:
            auth.authorize(claims, role, app_id)
        assert auth.http_status(e.value) == 403
    auth.authorize(auth.Claims("ops-1", Role.ADMIN, 2**40), Role.ADMIN, None)  # any admin opens /ws/admin
    with pytest.raises(auth.WrongRole, match=r"^a driver token cannot open an admin path$"):
        auth.authorize(claims, Role.ADMIN, None)
    with pytest.raises(auth.WrongRole, match=r"^an admin token cannot open a passenger path$"):
        auth.authorize(auth.Claims("ops-1", Role.ADMIN, 2**40), Role.PASSENGER, "p1")


def test_every_auth_error_class_has_exactly_one_status() -> None:
    leaves = {c for c in vars(auth).values()
              if isinstance(c, type) and issubclass(c, auth.AuthError) and not c.__subclasses__()}
    assert leaves == set(auth.HTTP_STATUS)


def test_the_header_wins_over_the_query_and_missing_is_401() -> None:
    assert auth.token_from({"token": "q"}, "Bearer h") == "h"
    assert auth.token_from({"token": "q"}, None) == "q"
    assert auth.token_from({"token": "q"}, "Basic abc") == "q"
    with pytest.raises(auth.MissingToken):
        auth.token_from({}, None)
    with pytest.raises(auth.MissingToken):
        auth.token_from({"token": ""}, "Bearer ")


@pytest.mark.parametrize(("origin", "host", "same"), [
    ("http://127.0.0.1:8765", "127.0.0.1:8765", True),
    ("http://localhost:3000", "localhost:8765", True),  # a page of this host on another port
    ("https://DISPATCH.example", "dispatch.example", True),
    ("http://[::1]:8765", "[::1]:8765", True),
    ("https://evil.example", "127.0.0.1:8765", False),
    ("http://127.0.0.1.evil.example", "127.0.0.1:8765", False),
    ("null", "127.0.0.1:8765", False),  # a sandboxed frame, a file:// page
    ("http://[::1", "[::1]:8765", False),
    ("http://127.0.0.1:8765", None, False),
])
def test_same_host_compares_the_origins_host_with_the_requests(origin: str, host: str | None, same: bool) -> None:
    assert auth.same_host(origin, host) is same


def test_with_auth_off_only_a_browser_page_of_another_host_is_refused() -> None:
    off = auth.Authenticator(None)
    assert off.authenticate(Role.ADMIN, None, {}, None) is None  # an app: no Origin
    assert off.authenticate(Role.ADMIN, None, {}, None, "http://10.0.0.5:8765", "10.0.0.5:8765") is None
    with pytest.raises(auth.ForeignOrigin) as e:
        off.authenticate(Role.ADMIN, None, {}, None, "https://evil.example", "10.0.0.5:8765")
    assert auth.http_status(e.value) == 403
    # With auth on the token decides, whatever the page's site.
    on = auth.Authenticator(JWT_SECRET)
    claims = on.authenticate(Role.DRIVER, "d1", {"token": mint("driver", "d1")}, None, "https://app.example", "x")
    assert claims is not None and claims.sub == "d1"


# ---- CLI ------------------------------------------------------------------------------


def _dgdo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DGDO_JWT_SECRET"}
    return subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=30)


def test_dgdo_token_mints_with_the_env_secret_or_the_flag() -> None:
    out = _dgdo("token", "--role", "passenger", "--sub", "p9", "--ttl", "120", env={"DGDO_JWT_SECRET": JWT_SECRET})
    assert out.returncode == 0, out.stderr
    claims = auth.verify(out.stdout.strip(), JWT_SECRET)
    assert (claims.sub, claims.role) == ("p9", Role.PASSENGER) and claims.exp <= time.time() + 121
    out = _dgdo("token", "--role", "admin", "--sub", "ops", "--secret", "s" * 40)
    assert auth.verify(out.stdout.strip(), "s" * 40).role is Role.ADMIN
    assert _dgdo("token", "--role", "driver", "--sub", "d1").returncode != 0  # no secret anywhere


def test_dgdo_sidecar_refuses_to_start_without_a_secret() -> None:
    out = _dgdo("sidecar", "--control", "/nonexistent.sock", "--port", "0")
    assert out.returncode != 0
    assert "DGDO_JWT_SECRET" in out.stderr and "--insecure-no-auth" in out.stderr


# ---- live: the real sidecar -------------------------------------------------------------


async def _ws_status(url: str, **kw: object) -> int:
    with pytest.raises(InvalidStatus) as e:
        await AppClient.open(url, **kw)  # type: ignore[arg-type]
    return e.value.response.status_code


async def _picows_status(url: str, **kw: object) -> int:
    with pytest.raises(WSHandshakeError) as e:
        await PicowsClient.open(url, **kw)  # type: ignore[arg-type]
    assert e.value.response is not None
    return int(e.value.response.status)


async def test_no_token_is_401_before_the_upgrade(stack: Stack) -> None:
    assert await _ws_status(f"{stack.url}/ws/driver/d1", token=None) == 401
    assert await _picows_status(f"{stack.url}/ws/passenger/p1", token=None) == 401
    assert await _ws_status(f"{stack.url}/ws/admin", token=None) == 401


async def test_bad_signature_and_expired_tokens_are_401(stack: Stack) -> None:
    forged = auth.mint("some-other-secret-that-is-32-bytes-long", "driver", "d1")
    assert await _ws_status(f"{stack.url}/ws/driver/d1", token=forged) == 401
    assert await _picows_status(f"{stack.url}/ws/driver/d1", token=None,
                                headers={"Authorization": f"Bearer {forged}"}) == 401
    expired = mint("driver", "d1", ttl_s=-60)
    assert await _ws_status(f"{stack.url}/ws/driver/d1", token=expired) == 401
    assert await _picows_status(f"{stack.url}/ws/driver/d1", token=expired) == 401


async def test_wrong_role_or_wrong_id_is_403(stack: Stack) -> None:
    assert await _ws_status(f"{stack.url}/ws/driver/d1", token=mint("passenger", "d1")) == 403
    assert await _ws_status(f"{stack.url}/ws/driver/d1", token=mint("driver", "d2")) == 403
    assert await _picows_status(f"{stack.url}/ws/passenger/p1", token=mint("passenger", "p2")) == 403
    assert await _picows_status(f"{stack.url}/ws/admin", token=mint("driver", "admin")) == 403


async def test_a_token_in_the_header_or_the_query_opens_the_path(stack: Stack) -> None:
    tok = mint("driver", "d1")
    via_header = await PicowsClient.open(f"{stack.url}/ws/driver/d1", token=None,
                                         headers={"Authorization": f"Bearer {tok}"})
    assert (await via_header.expect("welcome"))["id"] == "d1"
    await via_header.close()
    via_query = await AppClient.open(f"{stack.url}/ws/driver/d1", token=tok)
    assert (await via_query.expect("welcome"))["id"] == "d1"
    await via_query.close()
    via_ws_header = await AppClient.open(f"{stack.url}/ws/passenger/p1", token=None,
                                         additional_headers={"Authorization": f"Bearer {mint('passenger', 'p1')}"})
    assert (await via_ws_header.expect("welcome"))["role"] == "passenger"
    await via_ws_header.close()


async def test_an_admin_token_opens_the_admin_path_and_its_sub_names_the_session(stack: Stack) -> None:
    admin = await AppClient.open(f"{stack.url}/ws/admin", token=mint("admin", "ops-1"))
    welcome = await admin.expect("welcome")
    assert (welcome["role"], welcome["id"]) == ("admin", "ops-1")
    await admin.close()


async def test_refusals_are_counted_in_metrics(stack: Stack) -> None:
    await _ws_status(f"{stack.url}/ws/driver/d1", token=None)
    status, body = stack.http_get("/metrics")
    assert status == 200
    assert any(line.startswith('dgdo_auth_refused_total{worker="1"} ') and float(line.split()[1]) >= 1
               for line in body.decode().splitlines())


async def test_a_sidecar_given_two_keys_accepts_tokens_of_either(engine_bin: object) -> None:
    """A rotation in progress: the worker holds the current key and the next, and the apps' tokens of both connect."""
    from conftest import start_stack

    old, new = "o" * 32, "n" * 32
    s = start_stack(env={auth.ENV_SECRET: f"{old}\n{new}"})
    try:
        for sub, key in (("d1", old), ("d2", new)):
            app = await AppClient.open(f"{s.url}/ws/driver/{sub}", token=auth.mint(key, "driver", sub))
            await app.expect("welcome")
            await app.close()
        assert await _ws_status(f"{s.url}/ws/driver/d3", token=auth.mint("x" * 32, "driver", "d3")) == 401
    finally:
        assert s.stop() == 0


async def test_no_token_or_secret_reaches_the_log_even_at_debug(engine_bin: object) -> None:
    """Tokens ride in request targets (`?token=`) and headers: no log line may carry one, whatever was
    refused or served, at the most verbose level an operator can ask for."""
    from conftest import start_stack

    s = start_stack("--log-level", "DEBUG", stderr=subprocess.STDOUT)
    tokens = {"driver": mint("driver", "d1"), "admin": mint("admin", "ops"),
              "expired": mint("driver", "d1", ttl_s=-60), "forged": auth.mint("y" * 32, "driver", "d1")}
    try:
        app = await AppClient.open(f"{s.url}/ws/driver/d1", token=tokens["driver"])
        await app.expect("welcome")
        await app.close()
        via_header = await PicowsClient.open(f"{s.url}/ws/admin", token=None,
                                             headers={"Authorization": f"Bearer {tokens['admin']}"})
        await via_header.expect("welcome")
        await via_header.close()
        for name in ("expired", "forged", "admin"):  # refused: 401, 401, 403
            assert await _ws_status(f"{s.url}/ws/driver/d1", token=tokens[name]) in (401, 403)
            browser = await AppClient.open(f"{s.url}/ws/driver/d1", token=tokens[name], origin="https://app.example")
            await browser.expect("error")
        for path in (f"/admin?token={tokens['admin']}", f"/admin/whoami?token={tokens['admin']}",
                     f"/admin/whoami?token={tokens['expired']}", f"/nowhere?token={tokens['admin']}"):
            s.http_get(path)
    finally:
        assert s.stop() == 0  # every line is out once the process has ended
    logged = "\n".join(s.out.all)
    assert "picows.server" in logged  # DEBUG did reach picows' lines
    assert JWT_SECRET not in logged
    for name, token in tokens.items():
        assert token.rsplit(".", 1)[-1] not in logged, f"the {name} token's signature is in the log"
