"""The public protocol against the real engine + sidecar, from two independent clients.

`websockets` (wsclient.AppClient) and picows (picowsclient.PicowsClient), JSON text and
msgpack binary (subprotocol or ?format=msgpack): every client message type, every error
code the sidecar produces here (engine_unavailable and overloaded: test_engine_death.py),
the close codes (1000 echo, 1001 idle, 1007 text not UTF-8, 1008 abuse, 1009 too large, 4001 replaced),
resume.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import Stack, start_stack
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from picowsclient import PicowsClient
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsclient import AppClient, with_token

from sidecar.shell.server import CLOSE_WAIT_S
from sidecar.wire.codec import MAX_FRAGMENTS, MAX_MESSAGE_BYTES

PICKUP = {"lat": 38.5598, "lon": 68.7870}
DROPOFF = {"lat": 38.5750, "lon": 68.7950}
Client = AppClient | PicowsClient

# (library, format, how the format is chosen)
CLIENTS = [
    ("websockets", "json", None),
    ("websockets", "msgpack", "subprotocol"),
    ("picows", "json", None),
    ("picows", "msgpack", "query"),
]


async def connect(stack: Stack, lib: str, fmt: str, how: str | None, path: str) -> Client:
    url = f"{stack.url}{path}"
    sub = "dgdo.v1.msgpack" if how == "subprotocol" else None
    if how == "query":
        url += "?format=msgpack"
    cls = AppClient if lib == "websockets" else PicowsClient
    return await cls.open(url, subprotocol=sub)


async def send(c: Client, m: dict[str, Any]) -> None:
    r = c.send(m)
    if inspect.isawaitable(r):
        await r


async def request(c: Client, m: dict[str, Any], answer: str = "ack") -> dict[str, Any]:
    await send(c, m)
    return await c.expect(answer, id=m["id"])


async def online_driver(c: Client, lat: float = 38.5610, lon: float = 68.7800) -> None:
    await c.expect("welcome")
    await request(c, {"type": "driver_status", "status": "online", "id": "on"})
    await request(c, {"type": "driver_location", "lat": lat, "lon": lon, "id": "loc"})


@pytest.mark.parametrize(("lib", "fmt", "how"), CLIENTS, ids=[f"{a}-{b}-{c}" for a, b, c in CLIENTS])
async def test_every_client_message_type_is_answered(stack: Stack, lib: str, fmt: str, how: str | None) -> None:
    d = await connect(stack, lib, fmt, how, "/ws/driver/d1")
    p = await connect(stack, lib, fmt, how, "/ws/passenger/p1")
    admin = await connect(stack, lib, fmt, how, "/ws/admin")
    await online_driver(d)
    await p.expect("welcome")
    await admin.expect("welcome", role="admin")

    topics = ["assignments", "system_stats", "active_orders", "drivers", "log"]
    ack = await request(admin, {"type": "subscribe", "topics": topics, "id": "sub"})
    assert sorted(ack["topics"]) == sorted(topics)
    assert (await admin.expect("system_stats"))["engine_attached"] is True
    await request(p, {"type": "nearby_subscribe", "lat": 38.56, "lon": 68.78, "radius_m": 2000, "id": "near"})
    assert "driver_id" in json.dumps((await p.expect("nearby_drivers"))["drivers"])

    # ride 1: an id repeated is the same order; the driver rejects; the passenger cancels.
    first = (await request(p, {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r1"}))
    again = (await request(p, {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r1"}))
    order1 = first["order_id"]
    assert again["order_id"] == order1
    assert (await admin.expect("active_orders", order_id=order1))["status"] == "searching"
    await d.expect("new_order", order_id=order1)
    await request(d, {"type": "order_reject", "order_id": order1, "id": "rej"})
    await request(p, {"type": "order_cancel", "order_id": order1, "reason": "changed my mind", "id": "pc"})
    await p.expect("order_update", order_id=order1, status="canceled")

    # ride 2: accepted and driven to the end.
    order2 = (await request(p, {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r2"}))["order_id"]
    await d.expect("new_order", order_id=order2)
    await request(d, {"type": "order_accept", "order_id": order2, "id": "acc"})
    assignment = await admin.expect("assignment", order_id=order2)
    assert (assignment["driver_id"], assignment["passenger_id"]) == ("d1", "p1")
    await send(d, {"type": "driver_location", "lat": 38.5605, "lon": 68.7840, "heading": 80, "speed_kmh": 30})
    pos = await p.expect("driver_location", order_id=order2)
    assert (pos["driver_id"], pos["lat"], pos["lon"]) == ("d1", 38.5605, 68.7840)
    assert any(m.get("status") == "arriving" for m in p.seen if m["type"] == "order_update")
    assert (await p.expect("estimate_update", order_id=order2))["eta_s"] > 0
    for step, status in (("order_arrived", "arrived"), ("trip_start", "started"), ("trip_complete", "completed")):
        await request(d, {"type": step, "order_id": order2, "id": step})
        await p.expect("order_update", order_id=order2, status=status)
    assert (await request(d, {"type": "trip_start", "order_id": order2, "id": "again"}, "error"))["code"] == "conflict"

    # ride 3: the driver cancels after accepting; the order goes back to searching.
    order3 = (await request(p, {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r3"}))["order_id"]
    await d.expect("new_order", order_id=order3)
    await request(d, {"type": "order_accept", "order_id": order3, "id": "acc3"})
    await request(d, {"type": "order_cancel", "order_id": order3, "reason": "flat tyre", "id": "dc"})
    await p.expect("order_update", order_id=order3, status="searching")
    await request(p, {"type": "order_cancel", "order_id": order3, "id": "pc3"})

    # ride 4: the passenger cancels while the driver holds the offer: the driver is told.
    order4 = (await request(p, {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r4"}))["order_id"]
    await d.expect("new_order", order_id=order4)
    await request(p, {"type": "order_cancel", "order_id": order4, "id": "pc4"})
    assert (await d.expect("cancel_order", order_id=order4))["reason"] == "passenger_canceled"

    await request(p, {"type": "nearby_unsubscribe", "id": "far"})
    await request(d, {"type": "driver_status", "status": "offline", "id": "off"})
    await admin.expect("driver_status", driver_id="d1", status="offline")
    for _ in range(40):  # past the position bucket's burst
        await send(d, {"type": "driver_location", "lat": 38.5605, "lon": 68.7840})
    assert "slow down" in (await d.expect("error", code="rate_limited"))["message"]
    for c in (d, p, admin):
        assert (await request(c, {"type": "ping", "id": 7}, answer="pong"))["id"] == 7
    reliable = [m for m in p.seen if m["type"] == "order_update"]
    assert [m["seq"] for m in reliable] == sorted({m["seq"] for m in reliable})
    assert all(isinstance(m["ts"], int) for m in p.seen + d.seen)
    p_again = await connect(stack, lib, fmt, how, "/ws/passenger/p1")  # replaces p: admins are told
    await p_again.expect("welcome")
    assert "4001" in (await admin.expect("log"))["message"]
    for c in (d, p, p_again, admin):
        await c.close()


async def test_the_negotiated_format_decides_the_server_frames_the_client_may_send_either(stack: Stack) -> None:
    mp = await AppClient.open(f"{stack.url}/ws/driver/d1", subprotocol="dgdo.v1.msgpack")
    assert mp.ws.subprotocol == "dgdo.v1.msgpack"
    await mp.expect("welcome")
    await mp.ws.send(json.dumps({"type": "ping", "id": "text-on-msgpack"}))  # a text frame is JSON
    raw = await mp.ws.recv()
    assert isinstance(raw, bytes) and msgpack.unpackb(raw)["id"] == "text-on-msgpack"
    await mp.close()

    js = await PicowsClient.open(f"{stack.url}/ws/passenger/p1")
    await js.expect("welcome")
    js.send({"type": "ping", "id": "binary-on-json"}, binary=True)  # a binary frame is msgpack
    assert (await js.expect("pong"))["id"] == "binary-on-json"  # recv() checks it came back as text
    await js.close()

    q = await PicowsClient.open(f"{stack.url}/ws/passenger/p2?format=msgpack")
    assert (await q.expect("welcome"))["role"] == "passenger"  # recv() checks it came as binary
    await q.close()


async def test_an_unknown_format_is_refused_with_400_not_served_as_json(shared_stack: Stack) -> None:
    with pytest.raises(InvalidStatus) as e:
        await AppClient.open(f"{shared_stack.url}/ws/driver/d1?format=msgpak")
    assert e.value.response.status_code == 400 and b"format" in e.value.response.body


ERROR_CASES: list[tuple[str, Any, str, str]] = [
    # (role, what is sent: a map, or raw bytes/str for a frame, code, a word the message names)
    ("driver", "not json {", "bad_frame", "JSON"),
    ("driver", b"\xc1\xff", "bad_frame", "msgpack"),
    ("driver", "[1, 2]", "bad_frame", "map"),
    ("driver", {"type": "driver_location", "lat": 91, "lon": 68.78}, "bad_message", "lat"),
    ("driver", {"type": "driver_location", "lat": 38.5}, "bad_message", "lon"),
    ("driver", {"type": "driver_status", "status": "asleep"}, "bad_message", "status"),
    ("driver", {"type": "order_accept", "order_id": "1001"}, "bad_message", "order_id"),
    ("driver", {"type": "order_cancel", "order_id": 1, "reason": "x" * 100}, "bad_message", "reason"),
    ("passenger", {"type": "ride_request", "pickup": {"lat": 38.5}, "dropoff": DROPOFF}, "bad_message", "pickup.lon"),
    ("passenger", {"type": "nearby_subscribe", "lat": 38.5, "lon": 68.7, "radius_m": 9000}, "bad_message", "radius_m"),
    ("admin", {"type": "subscribe", "topics": ["gossip"]}, "bad_message", "topics"),
    ("driver", {"type": "ping", "id": 1.5}, "bad_message", "id"),
    ("driver", {"type": "teleport"}, "unknown_type", "teleport"),
    ("driver", {"lat": 1}, "bad_message", "type"),
    ("passenger", {"type": "driver_location", "lat": 38.5, "lon": 68.7}, "forbidden", "passenger"),
    ("driver", {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF}, "forbidden", "driver"),
    ("driver", {"type": "driver_location", "lat": 38.5, "lon": 68.7, "driver_id": "d2"}, "forbidden", "driver_id"),
    ("driver", {"type": "driver_location", "lat": 38.5, "lon": 68.7, "driver_id": 7}, "bad_message", "driver_id"),
    ("admin", {"type": "order_accept", "order_id": 1}, "forbidden", "admin"),  # an admin may only cancel
    ("admin", {"type": "order_cancel", "order_id": 999_999}, "not_found", "order_id"),
    ("driver", {"type": "trip_start", "order_id": 999_999}, "not_found", "order_id"),
]


@pytest.fixture(scope="module")
def shared_stack(engine_bin: Path) -> Iterator[Stack]:
    s = start_stack()
    yield s
    assert s.stop() == 0


@pytest.mark.parametrize(("role", "sent", "code", "word"), ERROR_CASES, ids=[f"{c[2]}-{i}" for i, c in
                                                                          enumerate(ERROR_CASES)])
@pytest.mark.parametrize(("lib", "fmt", "how"), CLIENTS, ids=[f"{a}-{b}-{c}" for a, b, c in CLIENTS])
async def test_a_bad_message_gets_its_error_code_and_the_connection_stays(
        shared_stack: Stack, lib: str, fmt: str, how: str | None, role: str, sent: Any, code: str,
        word: str) -> None:
    path = "/ws/admin" if role == "admin" else f"/ws/{role}/{role[0]}-{lib}-{fmt}"
    c = await connect(shared_stack, lib, fmt, how, path)
    await c.expect("welcome")
    if isinstance(sent, dict):  # a map goes out in the connection's format (msgpack: a binary frame)
        await send(c, {**sent, "id": "e"} if "id" not in sent else sent)
    elif isinstance(c, AppClient):
        await c.ws.send(sent)
    else:
        c.send_frame(WSMsgType.BINARY if isinstance(sent, bytes) else WSMsgType.TEXT,
                     sent if isinstance(sent, bytes) else sent.encode())
    err = await c.expect("error")  # recv() decodes it in the negotiated format
    assert err["code"] == code, err
    assert word in err["message"], err
    if isinstance(sent, dict):
        if "id" not in sent:  # a valid id was sent: the error names it, whatever the code
            assert err["id"] == "e", err
        else:  # the id itself was the fault
            assert "id" not in err, err
    else:
        assert "id" not in err, err
    assert (await request(c, {"type": "ping", "id": "alive"}, answer="pong"))["id"] == "alive"
    await c.close()


async def test_an_invalid_transition_is_conflict(stack: Stack) -> None:
    d = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await online_driver(d)
    p = await PicowsClient.open(f"{stack.url}/ws/passenger/p1", subprotocol="dgdo.v1.msgpack")
    await p.expect("welcome")
    order = (await request(p, {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r"}))["order_id"]
    await d.expect("new_order", order_id=order)
    await send(d, {"type": "trip_complete", "order_id": order, "id": "too-soon"})  # offered, not started
    err = await d.expect("error", id="too-soon")
    assert err["code"] == "conflict"
    await request(d, {"type": "order_accept", "order_id": order, "id": "ok"})  # the state did not change
    await d.close()
    await p.close()


async def test_another_drivers_order_is_forbidden(stack: Stack) -> None:
    d1 = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await online_driver(d1)
    d2 = await AppClient.open(f"{stack.url}/ws/driver/d2")
    await online_driver(d2, 38.70, 68.95)  # far away: not offered
    p = await AppClient.open(f"{stack.url}/ws/passenger/p1")
    order = (await request(p, {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r"}))["order_id"]
    await d1.expect("new_order", order_id=order)
    await request(d1, {"type": "order_accept", "order_id": order, "id": "a"})
    await send(d2, {"type": "trip_start", "order_id": order, "id": "steal"})
    assert (await d2.expect("error", id="steal"))["code"] == "forbidden"
    for c in (d1, d2, p):
        await c.close()


async def test_a_second_connection_with_the_same_role_and_id_replaces_the_first_4001(stack: Stack) -> None:
    first = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await first.expect("welcome")
    second = await PicowsClient.open(f"{stack.url}/ws/driver/d1")
    await second.expect("welcome")
    with pytest.raises(ConnectionClosed) as e:
        await first.recv()
    assert e.value.rcvd is not None and e.value.rcvd.code == 4001
    third = await AppClient.open(f"{stack.url}/ws/driver/d1")
    assert await second.wait_closed() == 4001
    assert (await request(third, {"type": "ping", "id": 1}, answer="pong"))["id"] == 1
    await third.close()


async def test_the_close_handshake_is_answered_with_the_clients_code(stack: Stack) -> None:
    c = await PicowsClient.open(f"{stack.url}/ws/passenger/p1")
    await c.expect("welcome")
    c.transport.send_close(WSCloseCode.GOING_AWAY, b"app in background")
    assert await c.wait_closed() == 1001
    w = await AppClient.open(f"{stack.url}/ws/passenger/p2")
    await w.expect("welcome")
    await w.ws.close(1000)
    rcvd = w.ws.protocol.close_rcvd
    assert w.ws.close_code == 1000 and rcvd is not None and rcvd.code == 1000


# (the client's CLOSE payload, the code the server must answer with). RFC 6455 §7.4: 1005, 1006 and
# 1015 are never sent in a CLOSE frame, nor codes below 1000 or over 4999, so a CLOSE carrying one
# is a protocol error (1002), not something to echo onto the wire; a reason that is not UTF-8 is 1007.
CLOSE_PAYLOADS = [
    (b"", 1000), (struct.pack("!H", 1000), 1000), (struct.pack("!H", 3000), 3000), (struct.pack("!H", 4999), 4999),
    (struct.pack("!H", 0), 1002), (struct.pack("!H", 999), 1002), (struct.pack("!H", 1005), 1002),
    (struct.pack("!H", 1006), 1002), (struct.pack("!H", 1015), 1002), (struct.pack("!H", 5000), 1002),
    (struct.pack("!H", 65535), 1002), (b"\x03", 1002), (struct.pack("!H", 1000) + b"\xff", 1007),
]


@pytest.mark.parametrize(("payload", "answer"), CLOSE_PAYLOADS, ids=[p.hex() or "empty" for p, _ in CLOSE_PAYLOADS])
async def test_a_close_is_echoed_only_with_a_code_a_close_frame_may_carry(
        shared_stack: Stack, payload: bytes, answer: int) -> None:
    c = await PicowsClient.open(f"{shared_stack.url}/ws/passenger/close-{payload.hex() or 'empty'}")
    await c.expect("welcome")
    c.send_frame(WSMsgType.CLOSE, payload)  # raw: picows' send_close would pack the code itself
    assert await c.wait_closed() == answer
    if answer == 1002:  # docs/protocol.md: a 1002's reason says what the frame did wrong
        assert c.listener.close_reason, "a 1002 without a reason"


@pytest.mark.parametrize("rsv", ["rsv1", "rsv2", "rsv3"])
async def test_a_frame_with_a_reserved_bit_set_is_a_protocol_error_1002(shared_stack: Stack, rsv: str) -> None:
    """No extension is negotiated, so RFC 6455 §5.2 requires failing the connection on any RSV bit:
    a client that compresses (permessage-deflate's RSV1) without asking must not be read as plain JSON."""
    c = await PicowsClient.open(f"{shared_stack.url}/ws/passenger/rsv-{rsv}")
    await c.expect("welcome")
    c.transport.send(WSMsgType.TEXT, json.dumps({"type": "ping", "id": rsv}).encode(), **{rsv: True})
    assert await c.wait_closed() == 1002
    assert not [m for m in c.seen if m["type"] == "pong"]


@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "fragmented"])
async def test_a_text_message_that_is_not_utf8_fails_the_connection_with_1007(
        shared_stack: Stack, fragmented: bool) -> None:
    """RFC 6455 §8.1: an endpoint that finds a text message's bytes are not UTF-8 fails the connection
    (close 1007), rather than answering it as a message it could not decode. A binary (msgpack) frame
    is not text: a bad string in it stays a `bad_frame` error. Other connections go on."""
    other = await PicowsClient.open(f"{shared_stack.url}/ws/passenger/utf8-other-{fragmented}")
    await other.expect("welcome")
    c = await PicowsClient.open(f"{shared_stack.url}/ws/passenger/utf8-{fragmented}")
    await c.expect("welcome")
    c.send_frame(WSMsgType.BINARY, b"\x82\xa4type\xa4ping\xa2id\xa2\xc3(")  # msgpack, id: b"\xc3(" as a str
    assert (await c.expect("error"))["code"] == "bad_frame"
    bad = b'{"type":"ping","id":"\xc3("}'
    if fragmented:
        c.send_frame(WSMsgType.TEXT, bad[:10], fin=False)
        c.send_frame(WSMsgType.CONTINUATION, bad[10:], fin=True)
    else:
        c.send_frame(WSMsgType.TEXT, bad)
    assert await c.wait_closed() == 1007
    assert c.listener.frames.empty(), "answered with a message rather than only closed"
    assert (await request(other, {"type": "ping", "id": "still-here"}, answer="pong"))["id"] == "still-here"
    await other.close()


class _Deaf(WSListener):
    """Reads what the server sends and never answers a CLOSE: no echo, no hang-up."""

    def __init__(self) -> None:
        self.close_code: int | None = None
        self.close_at = 0.0
        self.closed = asyncio.Event()
        self.closed_at = 0.0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.close_code, self.close_at = int(code), time.monotonic()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed_at = time.monotonic()
        self.closed.set()


async def deaf(stack: Stack, path: str) -> tuple[WSTransport, _Deaf]:
    transport, listener = await ws_connect(_Deaf, with_token(f"{stack.url}{path}"))
    return transport, listener  # type: ignore[return-value]


@pytest.mark.parametrize("provoke", ["too_large", "replaced", "not_utf8"])
async def test_a_client_that_never_answers_the_servers_close_is_hung_up_on(shared_stack: Stack, provoke: str) -> None:
    """RFC 6455 §7.1.1: the server closes the TCP connection once it has sent and (normally) received
    a CLOSE. A client that ignores the server's CLOSE (no echo) and keeps the socket open must not keep
    it, nor its session, for ever: the server hangs up CLOSE_WAIT_S after its CLOSE."""
    path = f"/ws/passenger/deaf-{provoke}"
    t, lst = await deaf(shared_stack, path)
    if provoke == "too_large":
        t.send(WSMsgType.TEXT, b'{"type":"ping","pad":"' + b" " * MAX_MESSAGE_BYTES + b'"}')
    elif provoke == "replaced":
        newer = await PicowsClient.open(f"{shared_stack.url}{path}")
        await newer.expect("welcome")
    else:
        t.send(WSMsgType.TEXT, b'{"type":"ping","id":"\xff"}')
    await asyncio.wait_for(lst.closed.wait(), CLOSE_WAIT_S + 10)
    assert lst.close_code == {"too_large": 1009, "replaced": 4001, "not_utf8": 1007}[provoke]
    assert lst.closed_at - lst.close_at < CLOSE_WAIT_S + 2, "the server kept the socket open past its close wait"
    if provoke == "replaced":
        await newer.close()


async def test_a_clients_close_is_echoed_and_the_server_hangs_up_itself(shared_stack: Stack) -> None:
    """The other way round: the client closes first and then only waits; the server echoes and ends TCP."""
    t, lst = await deaf(shared_stack, "/ws/passenger/deaf-closer")
    t.send_close(WSCloseCode.GOING_AWAY)
    await asyncio.wait_for(lst.closed.wait(), 5)
    assert lst.close_code == 1001


async def test_fragments_reassemble_under_the_cap_and_close_1009_past_it(stack: Stack) -> None:
    c = await PicowsClient.open(f"{stack.url}/ws/driver/d1")
    await c.expect("welcome")
    body = json.dumps({"type": "ping", "id": "frag"}).encode()
    c.send_frame(WSMsgType.TEXT, body[:5], fin=False)
    c.send_frame(WSMsgType.CONTINUATION, body[5:12], fin=False)
    c.send_frame(WSMsgType.CONTINUATION, body[12:], fin=True)
    assert (await c.expect("pong"))["id"] == "frag"
    # Each fragment is small; together they pass the cap. The server must not wait for FIN.
    chunk = b" " * 16_384
    c.send_frame(WSMsgType.TEXT, b'{"type":"ping","pad":"', fin=False)
    for _ in range(MAX_MESSAGE_BYTES // len(chunk) + 1):
        c.send_frame(WSMsgType.CONTINUATION, chunk, fin=False)
    err = await c.expect("error", code="too_large")
    assert f"exceeds the limit of {MAX_MESSAGE_BYTES} bytes" in err["message"]
    assert await c.wait_closed() == 1009
    _status, metrics = stack.http_get("/metrics")
    assert 'dgdo_closed_total{reason="too_large",worker="1"} 1' in metrics.decode()


@pytest.mark.parametrize(("lib", "fmt", "how"), CLIENTS, ids=[f"{a}-{b}-{c}" for a, b, c in CLIENTS])
@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
async def test_an_oversize_message_gets_too_large_then_close_1009(
        shared_stack: Stack, lib: str, fmt: str, how: str | None, fragmented: bool) -> None:
    c = await connect(shared_stack, lib, fmt, how, f"/ws/driver/big-{lib}-{fmt}-{fragmented}")
    await c.expect("welcome")
    size = 100_000  # over the 64 KiB message cap, under picows' 1 MiB frame guard
    body = b"\x81\xa4type\xa4ping" if fmt == "msgpack" else b'{"type":"ping","pad":"'
    body = body.ljust(size, b" ")
    kind = WSMsgType.BINARY if fmt == "msgpack" else WSMsgType.TEXT
    if isinstance(c, AppClient):
        data: Any = body if fmt == "msgpack" else body.decode()
        # websockets fragments a message given as an iterable of chunks
        await c.ws.send([data[i:i + 8192] for i in range(0, size, 8192)] if fragmented else data)
    elif fragmented:
        for i in range(0, size, 8192):
            c.send_frame(kind if i == 0 else WSMsgType.CONTINUATION, body[i:i + 8192], fin=i + 8192 >= size)
    else:
        c.send_frame(kind, body)
    err = await c.expect("error")
    assert err["code"] == "too_large" and "id" not in err, err
    if fragmented:  # refused as soon as the fragments so far pass the cap, before the end arrives
        assert err["message"].startswith("message of 73728 bytes so far (in 9 fragments) exceeds the limit of "
                                         f"{MAX_MESSAGE_BYTES} bytes"), err
    else:
        assert err["message"] == f"message of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes", err
    if isinstance(c, AppClient):
        with pytest.raises(ConnectionClosed) as e:
            await c.recv()
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009
    else:
        assert await c.wait_closed() == 1009


async def test_a_flood_of_empty_continuations_is_cut_off_and_nobody_else_notices(engine_bin: Path) -> None:
    s = start_stack("--messages-per-s", "50")  # burst 2000 as in production; a slow refill for (b)
    try:
        bystander = await AppClient.open(f"{s.url}/ws/passenger/calm", subprotocol="dgdo.v1.msgpack")
        await bystander.expect("welcome")
        ping = json.dumps({"type": "ping", "id": "f"}).encode()

        # (a) One message that never ends: 100k empty fragments. Refused at the fragment cap.
        a = await PicowsClient.open(f"{s.url}/ws/driver/flood-a")
        await a.expect("welcome")
        a.send_frame(WSMsgType.TEXT, ping, fin=False)
        for _ in range(100_000):
            a.send_frame(WSMsgType.CONTINUATION, b"", fin=False)
        err = await a.expect("error", code="too_large")
        assert f"{MAX_FRAGMENTS} fragments" in err["message"], err
        assert await a.wait_closed() == 1009
        assert (await request(bystander, {"type": "ping", "id": "a"}, answer="pong"))["id"] == "a"

        # (b) Messages just under the fragment cap, back to back: each frame costs a rate token, so
        # 100k frames are ~400 messages' worth of 250 tokens against a bucket of 2000: limited, then 1008.
        b = await PicowsClient.open(f"{s.url}/ws/driver/flood-b")
        await b.expect("welcome")
        frames = 0
        while frames < 100_000:
            b.send_frame(WSMsgType.TEXT, ping, fin=False)
            for _ in range(MAX_FRAGMENTS - 7):
                b.send_frame(WSMsgType.CONTINUATION, b"", fin=False)
            b.send_frame(WSMsgType.CONTINUATION, b"", fin=True)
            frames += MAX_FRAGMENTS - 5
        assert await b.wait_closed(timeout=30) == 1008
        pongs = [m for m in b.seen if m["type"] == "pong"]
        while not b.listener.frames.empty():
            m = await b.recv()
            if m["type"] == "pong":
                pongs.append(m)
        assert len(pongs) <= 2000 // (MAX_FRAGMENTS - 5) + 2  # the burst, not 400 messages
        assert any(m.get("code") == "rate_limited" for m in b.seen)

        assert (await request(bystander, {"type": "ping", "id": "b"}, answer="pong"))["id"] == "b"
        status, _ = s.http_get("/healthz")
        assert status == 200
        await bystander.close()
    finally:
        assert s.stop() == 0


async def test_a_position_flood_gets_rate_limited_then_closed_1008(stack: Stack) -> None:
    d = await PicowsClient.open(f"{stack.url}/ws/driver/d1")
    await d.expect("welcome")
    for i in range(300):  # a buggy app in a loop; the bucket holds 20
        d.send({"type": "driver_location", "lat": 38.56, "lon": 68.78, "id": i})
    assert await d.wait_closed() == 1008
    limited = [m for m in d.seen if m.get("code") == "rate_limited"]
    while not d.listener.frames.empty():
        limited += [m for m in [await d.recv()] if m.get("code") == "rate_limited"]
    assert 1 <= len(limited) <= 100
    assert all(m["type"] == "error" and isinstance(m["id"], int) for m in limited)


async def test_a_driver_reporting_in_bursts_is_limited_but_not_closed(stack: Stack) -> None:
    d = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await d.expect("welcome")
    for i in range(30):
        await d.send({"type": "driver_location", "lat": 38.56, "lon": 68.78, "id": i})
    codes = []
    while len(codes) < 30:
        m = await d.recv()
        if m["type"] in ("ack", "error"):
            codes.append(m.get("code", "ack"))
    assert codes.count("ack") >= 20 and "rate_limited" in codes
    assert (await request(d, {"type": "ping", "id": "after"}, answer="pong"))["id"] == "after"
    await d.close()


async def test_a_client_that_ignores_pings_is_reaped_one_that_answers_stays(engine_bin: Path) -> None:
    s = start_stack("--ping-idle-s", "0.3", "--ping-reply-s", "0.3")
    try:
        deaf = await PicowsClient.open(f"{s.url}/ws/driver/d1", enable_auto_pong=False)
        polite = await PicowsClient.open(f"{s.url}/ws/driver/d2")  # picows answers pings by default
        await deaf.expect("welcome")
        await polite.expect("welcome")
        assert await deaf.wait_closed(timeout=5) == 1001
        assert (await request(polite, {"type": "ping", "id": "alive"}, answer="pong"))["id"] == "alive"
        await polite.close()
    finally:
        assert s.stop() == 0


async def test_resume_replays_missed_reliable_messages_in_order(stack: Stack) -> None:
    d = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await online_driver(d)
    p = await AppClient.open(f"{stack.url}/ws/passenger/p1")
    await p.expect("welcome")
    order = (await request(p, {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r"}))["order_id"]
    offer = await d.expect("new_order", order_id=order)
    await request(d, {"type": "order_accept", "order_id": order, "id": "a"})
    accepted = await p.expect("order_update", status="accepted")
    await p.close()  # the passenger's app goes into a tunnel
    for step in ("order_arrived", "trip_start"):
        await request(d, {"type": step, "order_id": order, "id": step})

    back = await PicowsClient.open(f"{stack.url}/ws/passenger/p1?last_seq={accepted['seq']}")
    welcome = await back.expect("welcome")
    assert welcome["resumed"] is True and welcome["seq"] == accepted["seq"] + 2
    missed = [await back.expect("order_update") for _ in range(2)]
    assert [(m["status"], m["seq"]) for m in missed] == [("arrived", accepted["seq"] + 1),
                                                         ("started", accepted["seq"] + 2)]
    await back.close()
    assert offer["seq"] >= 1
    await d.close()


async def test_resume_says_false_when_the_missed_messages_are_no_longer_held() -> None:
    s = start_stack("--history-depth", "8")  # the engine keeps 8 per recipient (256 by default)
    try:
        p = await AppClient.open(f"{s.url}/ws/passenger/p1")
        assert (await p.expect("welcome"))["seq"] == 0
        orders = []
        for i in range(5):  # searching + canceled: two reliable messages per ride, seqs 1..10
            order = (await request(p, {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF,
                                       "id": f"r{i}"}))["order_id"]
            await request(p, {"type": "order_cancel", "order_id": order, "id": f"c{i}"})
            orders.append(order)
        await p.expect("order_update", status="canceled", order_id=order)
        await p.close()
        back = await AppClient.open(f"{s.url}/ws/passenger/p1?last_seq=1")  # 2 is no longer held
        welcome = await back.expect("welcome")
        assert welcome["resumed"] is False and welcome["seq"] == 10
        # The snapshot: every order that ended after seq 1, as new messages numbered on from 10.
        ended = [await back.expect("order_update") for _ in orders]
        assert [(m["order_id"], m["status"], m["seq"]) for m in ended] == [
            (o, "canceled", 11 + i) for i, o in enumerate(orders)]
        await back.close()
    finally:
        assert s.stop() == 0


async def test_without_resume_the_app_gets_a_snapshot_of_its_live_orders(stack: Stack) -> None:
    d = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await online_driver(d)
    p = await AppClient.open(f"{stack.url}/ws/passenger/p1")
    await p.expect("welcome")
    order = (await request(p, {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r"}))["order_id"]
    await d.expect("new_order", order_id=order)
    await request(d, {"type": "order_accept", "order_id": order, "id": "a"})
    await p.expect("order_update", status="accepted")
    await p.close()
    await d.close()

    # Both apps restart with no seq to resume from: each gets where its order stands, as new messages.
    p2 = await PicowsClient.open(f"{stack.url}/ws/passenger/p1")
    welcome = await p2.expect("welcome")
    assert welcome["resumed"] is False
    snap = await p2.expect("order_update", order_id=order)
    assert (snap["status"], snap["driver_id"], snap["seq"]) == ("accepted", "d1", welcome["seq"] + 1)
    d2 = await AppClient.open(f"{stack.url}/ws/driver/d1")
    assert (await d2.expect("welcome"))["resumed"] is False
    trip = await d2.expect("order_update", order_id=order)
    assert (trip["status"], trip["passenger_id"]) == ("accepted", "p1")
    await p2.close()
    await d2.close()


async def test_a_last_seq_ahead_of_the_server_is_not_resumable_and_gets_a_snapshot(stack: Stack) -> None:
    # What an app sees after an engine that lost its state: it remembers a seq this engine never handed out.
    d = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await online_driver(d)
    p = await PicowsClient.open(f"{stack.url}/ws/passenger/p1")
    first = await p.expect("welcome")
    order = (await request(p, {"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r"}))["order_id"]
    await d.expect("new_order", order_id=order)
    await request(d, {"type": "order_accept", "order_id": order, "id": "a"})
    accepted = await p.expect("order_update", status="accepted")
    await p.close()

    ahead = accepted["seq"] + 1_000_000
    back = await AppClient.open(f"{stack.url}/ws/passenger/p1?last_seq={ahead}")
    welcome = await back.expect("welcome")
    # Not resumable; the engine counts on from the app's number, so its seqs never go backwards.
    assert welcome["resumed"] is False and welcome["seq"] == ahead
    snap = await back.expect("order_update", order_id=order)
    assert (snap["status"], snap["driver_id"], snap["seq"]) == ("accepted", "d1", ahead + 1)
    await back.close()

    # Up to date: resumed with nothing to replay; the numbering carries on from where it was.
    again = await PicowsClient.open(f"{stack.url}/ws/passenger/p1?last_seq={snap['seq']}")
    welcome = await again.expect("welcome")
    assert welcome["resumed"] is True and welcome["seq"] == snap["seq"]
    assert (await request(again, {"type": "ping", "id": "x"}, answer="pong"))["id"] == "x"
    assert not [m for m in again.seen if "seq" in m and m["type"] != "welcome"]  # nothing replayed
    assert first["seq"] == 0  # a new passenger: numbering starts at 1 with its first message
