"""The front door against the real sidecar: what a load balancer, a browser and a WebSocket client
get before (or instead of) the upgrade (shell/front.py, shell/refusal.py).

Raw sockets where a library would not send the request in question (HTTP/1.0, HEAD, POST, a
WebSocket version 8 handshake); the `websockets` library for the browser-visible refusal.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from conftest import Stack, mint, start_stack
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sidecar.wire import auth

KEY = base64.b64encode(os.urandom(16)).decode()


@pytest.fixture(scope="module")
def stack(engine_bin: Path) -> Iterator[Stack]:
    s = start_stack()
    yield s
    assert s.stop() == 0


def exchange(stack: Stack, request: bytes, *, split: bool = False) -> bytes:
    """Sends `request` (byte by byte when `split`) and reads until the server closes."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as s:
        if split:
            for i in range(len(request)):
                s.sendall(request[i:i + 1])
        else:
            s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in fields.items()}, body


def upgrade(path: str, version: str = "13", extra: str = "") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n").encode()


def client_frame(text: str) -> bytes:
    """One masked text frame (RFC 6455 §5.2), as a client must send it."""
    payload, mask = text.encode(), os.urandom(4)
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# ---- load balancers' health checks ---------------------------------------------------------------


def test_healthz_answers_http_1_0_as_haproxy_sends_it(stack: Stack) -> None:
    status, fields, body = parse(exchange(stack, b"GET /healthz HTTP/1.0\r\n\r\n"))
    assert (status, body) == (200, b"ok")
    assert fields["connection"] == "close" and fields["content-length"] == "2"


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_head_healthz_gets_the_get_fields_without_a_body(stack: Stack, version: str) -> None:
    status, fields, body = parse(exchange(stack, f"HEAD /healthz HTTP/{version}\r\nHost: x\r\n\r\n".encode()))
    assert (status, fields["content-length"], body) == (200, "2", b"")


@pytest.mark.parametrize("path", ["/metrics", "/admin", "/admin/whoami"])
def test_the_other_pages_answer_head_and_http_1_0_too(stack: Stack, path: str) -> None:
    get_status, get_fields, get_body = parse(exchange(stack, f"GET {path} HTTP/1.0\r\n\r\n".encode()))
    head_status, head_fields, head_body = parse(exchange(stack, f"HEAD {path} HTTP/1.0\r\n\r\n".encode()))
    assert get_status == head_status == (401 if path.endswith("whoami") else 200)  # whoami: no token sent
    assert get_body and head_body == b""
    assert head_fields["content-type"] == get_fields["content-type"]
    if path != "/metrics":  # the metrics change between two scrapes
        assert head_fields["content-length"] == get_fields["content-length"] == str(len(get_body))


def test_a_request_head_arriving_byte_by_byte_is_answered(stack: Stack) -> None:
    assert parse(exchange(stack, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", split=True))[0] == 200


# ---- wrong methods, versions and heads -----------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_on_a_page_get_405_with_allow(stack: Stack, method: str) -> None:
    status, fields, _ = parse(exchange(stack, f"{method} /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
    assert status == 405 and fields["allow"] == "GET, HEAD"


def test_a_post_with_a_body_still_reads_its_405(stack: Stack) -> None:
    """The body is never read: the answer must not be lost to a RST (the server half-closes first)."""
    body = b"x" * 200_000
    request = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert parse(exchange(stack, request))[0] == 405


def test_a_websocket_path_allows_only_get(stack: Stack) -> None:
    status, fields, _ = parse(exchange(stack, b"POST /ws/driver/d1 HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 405 and fields["allow"] == "GET"


@pytest.mark.parametrize("version", ["8", "7", "14", ""])
def test_a_websocket_version_other_than_13_gets_426_naming_13(stack: Stack, version: str) -> None:
    token = mint("driver", "d1")
    status, fields, _ = parse(exchange(stack, upgrade(f"/ws/driver/d1?token={token}", version)))
    assert status == 426 and fields["sec-websocket-version"] == "13"


def test_an_upgrade_with_two_keys_is_refused(stack: Stack) -> None:
    second = "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
    request = upgrade(f"/ws/driver/d1?token={mint('driver', 'd1')}", extra=second)
    status, _, body = parse(exchange(stack, request))
    assert status == 400 and b"one Sec-WebSocket-Key" in body


def test_an_upgrade_over_http_1_0_is_refused(stack: Stack) -> None:
    request = upgrade(f"/ws/driver/d1?token={mint('driver', 'd1')}").replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    assert parse(exchange(stack, request))[0] == 400


def first_answer(stack: Stack, request: bytes) -> bytes:
    """Like `exchange`, but also returns on a 101's head (the server does not close after one)."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
            if out.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in out:
                break
    return out


NO_HOST = {
    "upgrade": upgrade(f"/ws/driver/d1?token={mint('driver', 'd1')}").replace(b"Host: x\r\n", b""),
    "websocket-path": b"GET /ws/driver/d1 HTTP/1.1\r\n\r\n",
    "page": b"GET /healthz HTTP/1.1\r\n\r\n",
    "head": b"HEAD /metrics HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("request_", NO_HOST.values(), ids=NO_HOST.keys())
def test_an_http_1_1_request_without_host_gets_400(stack: Stack, request_: bytes) -> None:
    """RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host; RFC 6455 §4.1 / §4.2.1
    require it in an upgrade. (An HTTP/1.0 request needs none: a load balancer's health check sends none.)"""
    status, _, body = parse(first_answer(stack, request_))
    assert status == 400
    assert body == (b"" if request_.startswith(b"HEAD") else b"a Host header is required (RFC 9112 section 3.2)")
    with_host = request_.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nHost: 127.0.0.1\r\n", 1)
    assert parse(first_answer(stack, with_host))[0] != 400


@pytest.mark.parametrize(("request_", "status"), [
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
    (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    (b"GET /nowhere HTTP/1.0\r\n\r\n", 404),
    (b"GET /ws/driver/d1?last_seq=%C2%B2 HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # a "digit" int() refuses
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),  # RFC 9112 §3.2: one Host line
    (b"GET /healthz HTTP/1.1\nHost: x\n\n", 400),  # bare-LF lines: answered at once, not at the head timeout
])
def test_bad_heads_get_their_status(stack: Stack, request_: bytes, status: int) -> None:
    assert parse(exchange(stack, request_))[0] == status


def refusals(stack: Stack) -> dict[str, float]:
    """`dgdo_http_refusals_total` by status, and the other front-door figures, from one scrape."""
    status, body = stack.http_get("/metrics")
    assert status == 200
    got = {(s.name, s.labels.get("status", "")): s.value
           for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    assert all(labels for (name, labels) in got if name == "dgdo_http_refusals_total")
    return {status if name == "dgdo_http_refusals_total" else name: v for (name, status), v in got.items()
            if name in ("dgdo_http_refusals_total", "dgdo_sockets_dropped_total", "dgdo_max_connections")}


def test_refusals_are_counted_by_status_and_the_cap_is_exported_without_max_connections(stack: Stack) -> None:
    before = refusals(stack)
    assert {"405", "426", "503", "400", "431", "505"} <= before.keys()  # every status from 0: rates exist at once
    assert parse(exchange(stack, b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 405
    assert parse(exchange(stack, upgrade(f"/ws/driver/d1?token={mint('driver', 'd1')}", "8")))[0] == 426
    assert parse(exchange(stack, upgrade(f"/ws/driver/d1?token={mint('driver', 'd1')}", "")))[0] == 426
    assert parse(exchange(stack, b"GET /healthz HTTP/2.0\r\n\r\n"))[0] == 505
    after = refusals(stack)
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {"405": 1, "426": 2, "505": 1}
    # The stack runs without --max-connections: the cap the open-files limit affords is exported.
    (cap,) = {int(m.group(1)) for line in stack.out.all if (m := re.search(r"; max connections (\d+)", line))}
    assert after["dgdo_max_connections"] == cap > 0
    assert after["dgdo_sockets_dropped_total"] == 0


# ---- the upgrade itself, through the front door ---------------------------------------------------


def test_frames_sent_with_the_upgrade_request_reach_the_session(stack: Stack) -> None:
    """The bytes the front door read past the head (a client that does not wait for the 101) go to picows."""
    ping = client_frame(json.dumps({"type": "ping", "id": 7}))
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as s:
        s.sendall(upgrade(f"/ws/passenger/p-front?token={mint('passenger', 'p-front')}") + ping)
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        seen: list[dict] = []
        while not any(m.get("type") == "pong" for m in seen):
            while len(rest) < 2 or len(rest) < 2 + _length(rest):
                rest += s.recv(65536)
            n = _length(rest)
            start = 2 if rest[1] < 126 else 4
            seen.append(json.loads(rest[start:start + n]))
            rest = rest[start + n:]
    assert {"type": "pong", "id": 7}.items() <= next(m for m in seen if m["type"] == "pong").items()


def _length(data: bytes) -> int:
    """The payload length of the server frame at the start of `data` (unmasked, under 64 KiB)."""
    n = data[1] & 0x7F
    if n == 126:
        return struct.unpack("!H", data[2:4])[0] if len(data) >= 4 else 1 << 20
    return n


# ---- the browser-visible refusal -----------------------------------------------------------------


async def _refusal(url: str, subprotocol: str | None = None) -> tuple[object, int | None, str]:
    async with connect(url, origin="https://app.example", subprotocols=[subprotocol] if subprotocol else None) as ws:
        first = await ws.recv()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    return first, closed.value.rcvd.code, closed.value.rcvd.reason


async def test_a_browser_with_a_bad_token_reads_unauthorized_then_close_4401(stack: Stack) -> None:
    first, code, reason = await _refusal(f"{stack.url}/ws/driver/d1?token=not.a.jwt")
    assert isinstance(first, str)
    error = json.loads(first)
    assert error["type"] == "error" and error["code"] == "unauthorized" and "invalid token" in error["message"]
    assert isinstance(error["ts"], int)
    assert code == auth.CLOSE_UNAUTHORIZED == 4401 and reason.startswith("unauthorized")


async def test_a_browser_with_an_expired_token_is_told_so(stack: Stack) -> None:
    expired = auth.mint(stack.jwt_secret, "passenger", "p1", ttl_s=-60)
    first, code, _ = await _refusal(f"{stack.url}/ws/passenger/p1?token={expired}")
    assert json.loads(first)["message"] == "token expired" and code == 4401  # type: ignore[arg-type]


async def test_a_browser_with_another_roles_token_reads_forbidden_then_close_4403(stack: Stack) -> None:
    first, code, _ = await _refusal(f"{stack.url}/ws/admin?token={mint('driver', 'd1')}")
    error = json.loads(first)  # type: ignore[arg-type]
    assert error["code"] == "forbidden" and code == auth.CLOSE_FORBIDDEN == 4403


async def test_the_refusal_comes_in_the_negotiated_format(stack: Stack) -> None:
    first, code, _ = await _refusal(f"{stack.url}/ws/passenger/p2?token={mint('passenger', 'someone-else')}",
                                    subprotocol="dgdo.v1.msgpack")
    assert isinstance(first, bytes)
    assert msgpack.unpackb(first)["code"] == "forbidden" and code == 4403


@pytest.mark.parametrize(("token", "status"), [("not.a.jwt", 401), (None, 401), ("driver", 403)])
async def test_without_origin_the_refusal_stays_an_http_status(stack: Stack, token: str | None, status: int) -> None:
    query = "" if token is None else f"?token={mint('driver', 'd1') if token == 'driver' else token}"
    with pytest.raises(InvalidStatus) as e:
        async with connect(f"{stack.url}/ws/passenger/p1{query}"):
            pass
    assert e.value.response.status_code == status


async def test_a_browser_with_a_good_token_is_served_as_before(stack: Stack) -> None:
    async with connect(f"{stack.url}/ws/driver/d-ok?token={mint('driver', 'd-ok')}",
                       origin="https://app.example") as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"


# ---- with auth off: no other site's page ----------------------------------------------------------


@pytest.fixture
def open_stack(engine_bin: Path) -> Iterator[Stack]:
    s = start_stack("--insecure-no-auth")
    yield s
    assert s.stop() == 0


async def test_with_auth_off_a_page_of_another_site_cannot_open_a_websocket(open_stack: Stack) -> None:
    """A browser lets any page open a WebSocket anywhere, with its Origin as the only sign of where it
    came from. With no token to ask for, a page of any site the operator visits could read the admin
    feed (every driver's position) or act as any app; so only the sidecar's own pages may."""
    for path in ("/ws/admin", "/ws/driver/d1"):
        async with asyncio.timeout(10):  # (served, the socket would stay open: no close to wait for)
            first, code, reason = await _refusal(f"{open_stack.url}{path}")  # Origin: https://app.example
        error = json.loads(first)  # type: ignore[arg-type]
        assert error["code"] == "forbidden" and "Origin" in error["message"]
        assert code == auth.CLOSE_FORBIDDEN and reason.startswith("forbidden")
    # The dashboard, from the sidecar's own address, and apps, which send no Origin, are served.
    async with connect(f"{open_stack.url}/ws/admin", origin=f"http://127.0.0.1:{open_stack.port}") as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
    async with connect(f"{open_stack.url}/ws/driver/d1") as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"


def _auth_enabled(s: Stack) -> float:
    status, body = s.http_get("/metrics")
    assert status == 200
    return next(sample.value for family in text_string_to_metric_families(body.decode())
                for sample in family.samples if sample.name == "dgdo_auth_enabled")


def test_a_worker_without_auth_says_so_in_its_metrics(open_stack: Stack, stack: Stack) -> None:
    """`dgdo_auth_enabled` (README "Metrics to alert on", "auth off"): one shared config file can turn
    auth off on every worker, with a warning line each; the metric is what an alert sees."""
    assert _auth_enabled(open_stack) == 0
    assert _auth_enabled(stack) == 1


# ---- what a client can make the sidecar log -------------------------------------------------------


async def _refused_then_malformed(port: int) -> None:
    """A browser-like upgrade with no token (accepted, to be refused: shell/refusal.py), then a frame
    picows cannot parse; returns when the server has hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ws/driver/d1 HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    writer.write(b"\x81\xff" + b"\x00" * 12)  # a 64-bit length with its top bit set: a protocol error
    while await reader.read(4096):
        pass
    writer.close()


async def test_clients_without_a_token_cannot_flood_the_log(engine_bin: Path) -> None:
    """picows logs a client's malformed frame at ERROR, one line per connection: a client with no token
    could fill the journal as fast as it can connect. Each kind of line is written once per window."""
    s = start_stack(stderr=subprocess.STDOUT)
    try:
        await asyncio.gather(*(_refused_then_malformed(s.port) for _ in range(30)))
    finally:
        assert s.stop() == 0  # every line is out once the process has ended
    parser_errors = [line for line in s.out.all if "WS parser error" in line]
    assert len(parser_errors) == 1, parser_errors[:3]
    assert " WARNING picows.server " in parser_errors[0]  # the client's fault, not ours: not ERROR


def test_each_kind_of_picows_line_is_written_once_a_window_with_the_count_left_out(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from sidecar.shell import server

    now = [100.0]
    monkeypatch.setattr(server.time, "monotonic", lambda: now[0])
    quiet = server._QuietLog(logging.getLogger("picows.test"))
    with caplog.at_level(logging.DEBUG, logger="picows.test"):
        for _ in range(5):
            quiet.error("WS parser error: %s", "bad length")
        quiet.warning("another kind")
        quiet.info("New connection accepted")  # INFO: DEBUG, never held back
        quiet.info("New connection accepted")
        now[0] += server.PICOWS_LOG_EVERY_S
        quiet.error("WS parser error: %s", "bad opcode")
        quiet.error("Exception from WSListener.on_ws_disconnected: %s", "ours")
    # A client's bad frame is its fault: WARNING, so that `journalctl -p err` shows only ours.
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "WS parser error: bad length"),
        (logging.WARNING, "another kind"),
        (logging.DEBUG, "New connection accepted"),
        (logging.DEBUG, "New connection accepted"),
        (logging.WARNING, "WS parser error: bad opcode (4 more like this left out before)"),
        (logging.ERROR, "Exception from WSListener.on_ws_disconnected: ours"),
    ]
