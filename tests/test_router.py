"""Paths to roles, and format negotiation, without a socket."""

from __future__ import annotations

import pytest

from sidecar.wire.codec import JSON, MSGPACK
from sidecar.wire.messages import Role
from sidecar.wire.router import HttpRoute, RouteError, WsRoute, choose_format, route


def test_driver_and_passenger_paths_carry_the_id() -> None:
    assert route(b"GET", b"/ws/driver/d-1") == WsRoute(Role.DRIVER, "d-1", {}, None)
    r = route(b"GET", b"/ws/passenger/p:9?last_seq=12&format=msgpack")
    assert isinstance(r, WsRoute)
    assert (r.role, r.app_id, r.last_seq, r.query["format"]) == (Role.PASSENGER, "p:9", 12, "msgpack")


def test_http_pages_are_routed() -> None:
    assert route(b"GET", b"/healthz") == HttpRoute("/healthz")


def test_the_dashboard_and_everything_under_it_are_http_pages_with_their_query() -> None:
    assert route(b"GET", b"/admin") == HttpRoute("/admin")
    assert route(b"GET", b"/admin/whoami?token=abc") == HttpRoute("/admin/whoami", {"token": "abc"})
    assert route(b"GET", b"/admin/dashboard.js") == HttpRoute("/admin/dashboard.js")
    assert isinstance(route(b"GET", b"/ws/admin?token=abc"), WsRoute)  # the socket is not a page


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        (b"GET", b"/ws/driver/", 404),
        (b"GET", b"/ws/driver/" + b"x" * 37, 404),
        (b"GET", b"/ws/driver/bad%20id", 404),
        (b"GET", b"/ws/rider/r1", 404),
        (b"POST", b"/healthz", 405),
        (b"GET", b"/ws/driver/d1?last_seq=-3", 400),
        # Percent-encoded digits that str.isdigit() takes but int() does not (superscript two) or
        # reads as a number all the same (Arabic-Indic one, two): the wire's integers are ASCII.
        (b"GET", b"/ws/driver/d1?last_seq=%C2%B2", 400),
        (b"GET", b"/ws/driver/d1?last_seq=%D9%A1%D9%A2", 400),
    ],
)
def test_bad_targets_map_to_one_status_each(method: bytes, target: bytes, status: int) -> None:
    with pytest.raises(RouteError) as exc:
        route(method, target)
    assert exc.value.status == status


def test_subprotocol_wins_over_query_and_is_echoed() -> None:
    assert choose_format("dgdo.v1.msgpack, dgdo.v1.json", {}) == (MSGPACK, "dgdo.v1.msgpack")
    assert choose_format("chat, dgdo.v1.json", {"format": "msgpack"}) == (JSON, "dgdo.v1.json")
    assert choose_format(None, {"format": "msgpack"}) == (MSGPACK, None)
    assert choose_format(None, {}) == (JSON, None)
