"""wire/http1.py: request heads and whole responses, bytes only (the front door's sans-I/O half)."""

from __future__ import annotations

import pytest

from sidecar.wire import http1


def test_a_head_is_complete_at_its_empty_line_and_not_before() -> None:
    raw = b"GET /healthz HTTP/1.0\r\nHost: a\r\n\r\n"
    assert http1.head_size(raw[:-1]) == 0
    assert http1.head_size(raw) == len(raw)
    assert http1.head_size(raw + b"\x81\x80....") == len(raw)  # a frame pipelined behind the head is not head


def test_a_head_that_never_ends_is_refused_at_the_limit_with_431() -> None:
    assert http1.head_size(b"GET / HTTP/1.1\r\nX: " + b"a" * (http1.MAX_HEAD_BYTES - 100)) == 0
    with pytest.raises(http1.BadRequest) as e:
        http1.head_size(b"GET / HTTP/1.1\r\nX: " + b"a" * http1.MAX_HEAD_BYTES)
    assert e.value.status == 431


@pytest.mark.parametrize("raw", [b"GET /healthz HTTP/1.1\nHost: x\n\n", b"GET /healthz HTTP/1.1\r\nHost: x\n\n",
                                 b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"])
def test_a_head_that_can_never_end_here_is_refused_at_once_with_400(raw: bytes) -> None:
    """Bare-LF lines (RFC 9112 §2.2 lets a server refuse them; picows, which reads the upgrades, does) and
    a TLS ClientHello on the plain port: answered now, not after the head timeout."""
    with pytest.raises(http1.BadRequest) as e:
        http1.head_size(raw)
    assert e.value.status == 400


def test_parse_reads_the_request_line_and_case_insensitive_fields() -> None:
    head = http1.parse_head(b"GET /ws/driver/d1?token=t HTTP/1.1\r\nHost: a\r\nUPGRADE: WebSocket\r\n"
                            b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version:13\r\n\r\n")
    assert (head.method, head.target, head.version) == (b"GET", b"/ws/driver/d1?token=t", b"HTTP/1.1")
    assert head.upgrade and head.get("sec-websocket-version") == "13" and head.get("origin") is None


def test_a_repeated_field_is_joined_and_upgrade_found_in_a_list() -> None:
    head = http1.parse_head(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nUpgrade: websocket\r\n\r\n")
    assert head.get("upgrade") == "h2c, websocket" and head.upgrade
    assert not http1.parse_head(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n").upgrade


@pytest.mark.parametrize(("raw", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\n\r\n", 400),
    (b"get / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\n\r\n", 505),
    (b"GET / SPDY/3\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),  # RFC 9112 §5.1: no space before the colon
    (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),  # obsolete line folding
    (b"GET / HTTP/1.1\r\n\xff: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * (http1.MAX_HEADERS + 1) + b"\r\n", 431),
    # RFC 9112 §3.2: more than one Host line is a 400, in any version (which host would it be?)
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nhost: a\r\nHOST: a\r\n\r\n", 400),
])
def test_malformed_heads_are_refused_with_their_status(raw: bytes, status: int) -> None:
    with pytest.raises(http1.BadRequest) as e:
        http1.parse_head(raw)
    assert e.value.status == status


def test_a_response_closes_the_connection_and_counts_its_body() -> None:
    out = http1.response(503, b"full", {"Retry-After": "5"})
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert {b"Retry-After: 5", b"Content-Length: 4", b"Connection: close"} <= set(lines[1:])
    assert body == b"full"


def test_the_answer_to_head_has_the_get_fields_and_no_body() -> None:
    get = http1.response(200, b"ok")
    head = http1.response(200, b"ok", head_only=True)
    assert head == get[: -len(b"ok")] and b"Content-Length: 2\r\n" in head
