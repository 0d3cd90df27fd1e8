"""The sans-I/O protocol in bytes only: decode, validate, reassemble, encode."""

from __future__ import annotations

import json
import math
import re

import msgpack
import pytest

from sidecar.wire import errors as X
from sidecar.wire import messages as E
from sidecar.wire.codec import JSON, MSGPACK, Decoder, InvalidText, MessageTooBig, encode


def feed(m: object, role: E.Role = E.DRIVER, binary: bool = False, conn_id: str = "d1"):
    data = msgpack.packb(m) if binary else json.dumps(m).encode()
    return Decoder(role, conn_id).feed(binary, True, data)


def test_driver_location_decodes_to_a_typed_message_with_its_request_id() -> None:
    req = feed({"type": "driver_location", "lat": 38.56, "lon": 68.78, "heading": 90, "id": 7})
    assert req.request_id == 7
    assert isinstance(req.message, E.DriverLocation)
    assert (req.message.lat, req.message.lon, req.message.heading) == (38.56, 68.78, 90.0)
    assert math.isnan(req.message.speed_kmh)


def test_msgpack_binary_frames_decode_the_same_as_json() -> None:
    m = {"type": "ride_request", "id": "r1", "pickup": {"lat": 1, "lon": 2}, "dropoff": {"lat": 3, "lon": 4}}
    a = feed(m, E.PASSENGER, binary=False, conn_id="p1")
    b = feed(m, E.PASSENGER, binary=True, conn_id="p1")
    assert a == b and a.message.pickup == E.Point(lat=1.0, lon=2.0)


@pytest.mark.parametrize(
    ("message", "error", "field"),
    [
        ({"type": "driver_location", "lat": 91, "lon": 0}, X.BadMessage, "lat"),
        ({"type": "driver_location", "lat": "1", "lon": 0}, X.BadMessage, "lat"),
        ({"type": "driver_location", "lat": True, "lon": 0}, X.BadMessage, "lat"),
        ({"type": "driver_location", "lat": 1}, X.BadMessage, "lon"),
        ({"type": "driver_location", "lat": 1, "lon": 2, "driver_id": "d2"}, X.Forbidden, "driver_id"),
        ({"type": "driver_status", "status": "sleeping"}, X.BadMessage, "status"),
        ({"type": "order_accept"}, X.BadMessage, "order_id"),
        ({"type": "order_accept", "order_id": -1}, X.BadMessage, "order_id"),
        ({"type": "order_accept", "order_id": 1.5}, X.BadMessage, "order_id"),
        ({"type": "ride_request", "pickup": {}, "dropoff": {}}, X.Forbidden, "type"),
        ({"type": "teleport"}, X.UnknownType, "type"),
        ({"lat": 1}, X.BadMessage, "type"),
        ({"type": "ping", "id": [1]}, X.BadMessage, "id"),
        ({"type": "ping", "id": "x" * 65}, X.BadMessage, "id"),
    ],
)
def test_invalid_fields_are_named_in_the_error(message: dict, error: type, field: str) -> None:
    with pytest.raises(error) as exc:
        feed(message)
    assert exc.value.message.startswith(field)


def test_error_keeps_the_request_id_so_the_client_can_match_it() -> None:
    with pytest.raises(X.BadMessage) as exc:
        feed({"type": "driver_location", "lat": 100, "lon": 0, "id": "abc"})
    assert exc.value.request_id == "abc"


def test_the_request_id_is_echoed_whatever_else_is_wrong() -> None:
    """The id is read first, so a client can match the error even when msgspec stopped earlier."""
    for role, m in ((E.DRIVER, {"lat": 100, "type": "driver_location", "lon": 0, "id": "q7"}),
                    (E.DRIVER, {"type": "order_accept", "order_id": "x", "id": "q7"}),
                    (E.DRIVER, {"type": "order_cancel", "order_id": 1, "reason": "é" * 33, "id": "q7"}),
                    (E.PASSENGER, {"type": "ride_request", "pickup": {"lat": 1}, "dropoff": 5, "id": "q7"}),
                    (E.PASSENGER, {"type": "nearby_subscribe", "lat": 1, "lon": 1, "radius_m": 0, "id": "q7"}),
                    (E.ADMIN, {"type": "subscribe", "topics": [1], "id": "q7"}),
                    (E.DRIVER, {"type": "teleport", "id": "q7"}),
                    (E.DRIVER, {"type": 7, "id": "q7"}),
                    (E.PASSENGER, {"type": "order_accept", "order_id": "x", "id": "q7"})):
        for binary in (False, True):
            with pytest.raises(X.ClientError) as exc:
                feed(m, role, binary, conn_id="d1" if role is E.DRIVER else "p1")
            assert exc.value.request_id == "q7", (m, exc.value.message)


def test_a_bad_id_is_named_before_any_other_field_and_not_echoed() -> None:
    for bad in ("", "x" * 65, 1.5, True, 2**63, -(2**63) - 1, [1], {"a": 1}, None):
        m = {"type": "driver_location", "lat": 100, "id": bad}
        # null is no id at all: then the field error comes, without an id
        with pytest.raises(X.BadMessage, match=r"^lat: " if bad is None else r"^id: ") as exc:
            feed(m)
        assert exc.value.request_id is None
    for good in ("x", "x" * 64, 0, -(2**63), 2**63 - 1):
        assert feed({"type": "ping", "id": good}).request_id == good


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_never_pass_any_number(bad: float) -> None:
    """msgpack can carry NaN and ±inf; every float field refuses them, naming the field."""
    cases = [(E.DRIVER, "driver_location", {"lat": 1.0, "lon": 1.0}, ["lat", "lon", "heading", "speed_kmh",
                                                                        "accuracy_m"]),
             (E.PASSENGER, "nearby_subscribe", {"lat": 1.0, "lon": 1.0}, ["lat", "lon", "radius_m"]),
             (E.PASSENGER, "nearby_unsubscribe", {}, ["lat", "lon", "radius_m"])]
    for role, type_, base, fields in cases:
        for f in fields:
            with pytest.raises(X.BadMessage, match=f"^{f}: must be a number between"):
                feed({"type": type_, **base, f: bad}, role, binary=True, conn_id="x1")
    for where in ("pickup", "dropoff"):
        for f in ("lat", "lon"):
            m = {"type": "ride_request", "pickup": {"lat": 1.0, "lon": 1.0}, "dropoff": {"lat": 1.0, "lon": 1.0}}
            m[where] = {**m[where], f: bad}
            with pytest.raises(X.BadMessage, match=rf"^{where}\.{f}: must be a number between"):
                feed(m, E.PASSENGER, binary=True, conn_id="p1")


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_json_nan_tokens_are_not_json(token: bytes) -> None:
    with pytest.raises(X.BadFrame, match=r"^undecodable JSON"):
        Decoder(E.DRIVER, "d1").feed(False, True, b'{"type":"driver_location","lat":' + token + b',"lon":1}')


def test_a_json_number_too_big_for_a_float_is_out_of_range_not_infinite() -> None:
    with pytest.raises(X.BadMessage, match=r"^lat: must be a number between -90 and 90$"):
        Decoder(E.DRIVER, "d1").feed(False, True, b'{"type":"driver_location","lat":1e999,"lon":1}')


def test_every_refusal_takes_the_form_field_colon_rule() -> None:
    form = re.compile(r"^[a-z_]+(\.[a-z_]+)*: [a-z]")
    messages = [
        ({"type": "driver_location", "lat": "x", "lon": 1}, E.DRIVER),
        ({"type": "driver_status"}, E.DRIVER),
        ({"type": "order_reject", "order_id": 0}, E.DRIVER),
        ({"type": "ride_request", "pickup": [1, 2], "dropoff": {"lat": 1, "lon": 1}}, E.PASSENGER),
        ({"type": "ride_request", "pickup": {"lat": 1, "lon": 1}, "dropoff": {"lat": 1, "lon": None}}, E.PASSENGER),
        ({"type": "subscribe", "topics": ["gossip"]}, E.ADMIN),
        ({"type": "subscribe", "topics": "log"}, E.ADMIN),
        ({"type": "ping", "id": 1.5}, E.DRIVER),
        ({"type": "teleport"}, E.DRIVER),
        ({"type": "ride_request"}, E.DRIVER),
    ]
    for m, role in messages:
        for binary in (False, True):
            with pytest.raises(X.ClientError) as exc:
                feed(m, role, binary, conn_id="x1")
            assert form.match(exc.value.message), exc.value.message


def test_reason_is_measured_in_utf8_bytes() -> None:
    def cancel(reason: str) -> object:
        return feed({"type": "order_cancel", "order_id": 5, "reason": reason})

    assert cancel("é" * 32).message.reason == "é" * 32  # 64 bytes
    assert cancel("x" * 64).message.reason == "x" * 64
    for over in ("é" * 33, "x" * 65, "😀" * 17):
        with pytest.raises(X.BadMessage, match=f"^reason: must be a string of at most {E.MAX_REASON_BYTES} bytes"):
            cancel(over)


def test_an_admin_may_send_order_cancel_and_nothing_else_that_moves_an_order() -> None:
    """docs/protocol.md (order_cancel): an operator ends any live order; the driver's steps and a
    ride request stay the apps' own, and the admin's `subscribe` stays the admin's."""
    for binary in (False, True):
        req = feed({"type": "order_cancel", "order_id": 1001, "reason": "driver unreachable", "id": "k1"}, E.ADMIN,
                   binary, conn_id="ops")
        assert req.request_id == "k1"
        assert isinstance(req.message, E.OrderCancel)
        assert (req.message.order_id, req.message.reason) == (1001, "driver unreachable")
        assert feed({"type": "order_cancel", "order_id": 7}, E.ADMIN, binary, conn_id="ops").message.reason == ""
    with pytest.raises(X.BadMessage, match=r"^reason: "):
        feed({"type": "order_cancel", "order_id": 7, "reason": "x" * 65}, E.ADMIN, conn_id="ops")
    with pytest.raises(X.BadMessage, match=r"^order_id: "):
        feed({"type": "order_cancel", "order_id": 0}, E.ADMIN, conn_id="ops")
    for m in ({"type": "order_accept", "order_id": 1}, {"type": "order_reject", "order_id": 1},
              {"type": "order_arrived", "order_id": 1}, {"type": "trip_start", "order_id": 1},
              {"type": "trip_complete", "order_id": 1}, {"type": "driver_status", "status": "online"},
              {"type": "ride_request", "pickup": {"lat": 1, "lon": 1}, "dropoff": {"lat": 2, "lon": 2}}):
        with pytest.raises(X.Forbidden, match=f"^type: {m['type']} is not allowed for an admin"):
            feed(m, E.ADMIN, conn_id="ops")
    # The apps' own cancels decode as before; the admin's subscribe stays forbidden to them.
    assert isinstance(feed({"type": "order_cancel", "order_id": 5}).message, E.OrderCancel)
    assert isinstance(feed({"type": "order_cancel", "order_id": 5}, E.PASSENGER, conn_id="p1").message, E.OrderCancel)
    for role, app in ((E.DRIVER, "d1"), (E.PASSENGER, "p1")):
        with pytest.raises(X.Forbidden, match=f"^type: subscribe is not allowed for a {role.value}"):
            feed({"type": "subscribe", "topics": ["log"]}, role, conn_id=app)


def test_driver_id_may_be_the_connections_own() -> None:
    req = feed({"type": "driver_location", "lat": 1, "lon": 2, "driver_id": "d1"})
    assert isinstance(req.message, E.DriverLocation) and req.message.driver_id == "d1"


def test_unknown_fields_are_skipped_whatever_they_hold() -> None:
    m = {"type": "ping", "id": 3, "extra": {"deep": [[1, 2], {"x": None}]}, "blob": b"\x00" * 100,
         "ext": msgpack.ExtType(5, b"abc"), "many": list(range(5000))}
    data = msgpack.packb(m, use_bin_type=True)
    assert Decoder(E.DRIVER, "d1").feed(True, True, data).request_id == 3


@pytest.mark.parametrize("raw", [b'{"type":"ping","x":"\xff"}', b'{"type":"ping","\xc3":1}',
                                 b'{"type":"ping","id":"\xed\xa0\x80"}', b"\xff\xfe"])
def test_a_text_frame_must_be_utf8_even_where_it_is_not_read(raw: bytes) -> None:
    # RFC 6455 §8.1: not an `error` but a failed connection (1007), which the server closes.
    with pytest.raises(InvalidText, match=r"^invalid UTF-8 in a text message \(byte \d+\)$"):
        Decoder(E.DRIVER, "d1").feed(False, True, raw)
    utf8 = '{"type":"ping","id":"é✓","x":"日本"}'.encode()
    assert Decoder(E.DRIVER, "d1").feed(False, True, utf8).request_id == "é✓"


def test_a_fragmented_text_message_is_utf8_as_a_whole_not_per_fragment() -> None:
    dec = Decoder(E.DRIVER, "d1")
    whole = '{"type":"ping","id":"é✓"}'.encode()
    cut = whole.index("é".encode()) + 1  # inside the 2-byte "é": neither fragment is UTF-8 alone
    assert dec.feed(False, False, whole[:cut]) is None
    assert dec.feed(None, True, whole[cut:]).request_id == "é✓"
    assert dec.feed(False, False, b'{"type":"ping",') is None
    with pytest.raises(InvalidText):
        dec.feed(None, True, b'"x":"\xc3"}')
    assert dec.last_frames == 2
    assert dec.feed(False, True, b'{"type":"ping","id":1}').request_id == 1  # nothing held after it


def test_a_binary_message_is_not_text_its_bad_strings_stay_a_bad_frame() -> None:
    with pytest.raises(X.BadFrame):
        Decoder(E.DRIVER, "d1").feed(True, True, b"\x81\xa4type\xa4p\xffng")


def test_duplicate_topics_collapse_into_a_set() -> None:
    req = feed({"type": "subscribe", "topics": ["log"] * 1000 + ["drivers"]}, E.ADMIN, conn_id="admin")
    assert req.message.topics == frozenset({"log", "drivers"})


def test_each_type_decodes_to_its_own_struct_and_a_nearby_to_a_nearby() -> None:
    assert isinstance(feed({"type": "nearby_subscribe", "lat": 1, "lon": 2}, E.PASSENGER).message, E.Nearby)
    un = feed({"type": "nearby_unsubscribe"}, E.PASSENGER).message
    assert isinstance(un, E.NearbyUnsubscribe) and not un.subscribe and un.radius_m == E.DEFAULT_NEARBY_RADIUS_M
    assert isinstance(feed({"type": "trip_start", "order_id": 9}).message, E.TripStart)
    assert feed({"type": "driver_status", "status": "offline"}).message.online is False


@pytest.mark.parametrize("raw", [b"{", b"[1,2]", b"NaN", b'{"type": NaN}', b'"str"'])
def test_undecodable_json_is_a_bad_frame(raw: bytes) -> None:
    with pytest.raises(X.BadFrame):
        Decoder(E.DRIVER, "d1").feed(False, True, raw)


@pytest.mark.parametrize("raw", [b"\xc1", b"\x93\x01", msgpack.packb([1, 2]), b"\x81\xa1"])
def test_undecodable_msgpack_is_a_bad_frame(raw: bytes) -> None:
    with pytest.raises(X.BadFrame):
        Decoder(E.DRIVER, "d1").feed(True, True, raw)


def test_deep_nesting_is_a_bad_frame_not_a_crash() -> None:
    raw = b'{"type":"ping","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises((X.BadFrame, MessageTooBig)):
        Decoder(E.DRIVER, "d1", max_bytes=1 << 20).feed(False, True, raw)


def test_fragments_reassemble_into_one_message() -> None:
    d = Decoder(E.DRIVER, "d1")
    raw = json.dumps({"type": "ping", "id": "frag"}).encode()
    assert d.feed(False, False, raw[:5]) is None
    assert d.feed(None, False, raw[5:9]) is None
    req = d.feed(None, True, raw[9:])
    assert req is not None and req.request_id == "frag"


def test_fragments_count_against_the_size_cap() -> None:
    d = Decoder(E.DRIVER, "d1", max_bytes=100)
    assert d.feed(False, False, b"x" * 60) is None
    with pytest.raises(MessageTooBig):
        d.feed(None, False, b"x" * 60)


def test_a_single_frame_over_the_cap_says_its_size_and_the_limit() -> None:
    d = Decoder(E.DRIVER, "d1")
    with pytest.raises(MessageTooBig, match=r"^message of 70000 bytes exceeds the limit of 65536 bytes$"):
        d.feed(True, True, b"\x00" * 70_000)
    assert d.last_frames == 1


def test_empty_continuations_cannot_grow_a_message_past_the_fragment_cap() -> None:
    d = Decoder(E.DRIVER, "d1", max_fragments=8)
    raw = json.dumps({"type": "ping", "id": "f"}).encode()
    assert d.feed(False, False, raw) is None
    for _ in range(6):
        assert d.feed(None, False, b"") is None
    assert d.feed(None, True, b"").request_id == "f"  # exactly 8 frames: fine
    assert d.last_frames == 8
    assert d.feed(False, False, raw) is None
    for _ in range(6):
        d.feed(None, False, b"")
    with pytest.raises(MessageTooBig, match="8 fragments"):
        d.feed(None, False, b"")  # the 8th frame without FIN: a 9th would be needed
    assert d.last_frames == 8 and d.frames == 16
    with pytest.raises(X.BadFrame):  # the refused message is forgotten whole
        d.feed(None, True, b"")


def test_continuation_without_a_start_is_a_bad_frame() -> None:
    with pytest.raises(X.BadFrame):
        Decoder(E.DRIVER, "d1").feed(None, True, b"{}")


def test_encode_matches_the_format() -> None:
    m = {"type": "pong", "ts": 1}
    assert encode(m, JSON) == b'{"type":"pong","ts":1}'
    assert msgpack.unpackb(encode(m, MSGPACK)) == m


SERVER_SAMPLES = [
    {"type": "new_order", "order_id": 1001, "passenger_id": "p1", "pickup": {"lat": 38.5598, "lon": 68.787},
     "dropoff": {"lat": 38.575, "lon": 68.795}, "distance_m": 610.2, "eta_s": 165.0, "expires_in_s": 15.0,
     "seq": 1764090000000001, "ts": 1764090000000},
    {"type": "order_update", "order_id": 2**63 - 1, "status": "accepted", "driver_id": "d1", "seq": 2, "ts": 1},
    {"type": "driver_location", "order_id": 7, "driver_id": "d1", "lat": -38.5605, "lon": 1e-7, "heading": 0.0,
     "speed_kmh": 32.5, "ts": 1764090000000},
    {"type": "error", "id": -(2**63), "code": "bad_message", "message": "lat: é ✓ \u2028 \"quoted\"\n", "ts": 0},
    {"type": "ack", "id": "r1", "topics": ["drivers", "log"], "ts": 1764090000000},
    {"type": "nearby_drivers", "drivers": [{"driver_id": "d1", "lat": 1.0, "lon": 2.0}] * 3, "ts": 5},
]


@pytest.mark.parametrize("m", SERVER_SAMPLES, ids=lambda m: m["type"])
def test_encoded_server_messages_are_what_independent_codecs_write_and_read(m: dict) -> None:
    """msgspec encodes; the `msgpack` package (byte for byte) and the stdlib json check it."""
    packed = encode(m, MSGPACK)
    assert packed == msgpack.packb(m, use_bin_type=True)
    assert msgpack.unpackb(packed, raw=False) == m
    text = encode(m, JSON)
    assert json.loads(text) == m


# ---- format choice (router.choose_format) ---------------------------------------------------------


def test_the_format_query_takes_json_or_msgpack_and_refuses_anything_else() -> None:
    from sidecar.wire.router import RouteError, choose_format

    assert choose_format(None, {"format": "msgpack"}) == (MSGPACK, None)
    assert choose_format(None, {"format": "json"}) == (JSON, None)
    assert choose_format("dgdo.v1.msgpack", {}) == (MSGPACK, "dgdo.v1.msgpack")
    for bad in ("bogus", "MSGPACK", ""):
        with pytest.raises(RouteError) as e:
            choose_format(None, {"format": bad})
        assert e.value.status == 400 and "format" in e.value.message
    with pytest.raises(RouteError):
        choose_format("dgdo.v1.json", {"format": "xml"})


def test_refused_values_are_not_kept_by_the_error_texts_cache() -> None:
    """msgspec's complaint quotes a refused enum value whole (`Invalid enum value 'xxx…'`); the cache of
    error texts must not key on it, or 1024 refusals of ~60 KB values (half a second of one client
    within its rate limit) would pin ~60 MB in every worker for good."""
    import tracemalloc

    d = Decoder(E.DRIVER, "d1")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1100):
            big = json.dumps({"type": "driver_status", "status": f"{i:05d}" + "x" * 60_000, "id": i}).encode()
            with pytest.raises(X.BadMessage) as exc:
                d.feed(False, True, big)
            assert (exc.value.message, exc.value.request_id) == ("status: must be 'online' or 'offline'", i)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 4_000_000, f"{kept} bytes kept after 1100 refusals"


@pytest.mark.parametrize("raw", [rb'{"type":"ping","id":"\ud800"}', rb'{"type":"ping","id":"\uDBFF"}',
                                 rb'{"type":"ping","id":"\\\ud800"}'])
def test_a_lone_high_surrogate_is_named_as_such_not_as_truncated_input(raw: bytes) -> None:
    """msgspec 0.23 calls a lone high surrogate escape within 6 bytes of the end "Input data was truncated",
    the words for a message cut short; the error says what msgspec says of a lone low one."""
    with pytest.raises(X.BadFrame, match=r"^undecodable JSON: malformed: invalid utf-16 surrogate pair \(byte \d+\)$"):
        Decoder(E.DRIVER, "d1").feed(False, True, raw)


@pytest.mark.parametrize("raw", [b'{"type":"ping","id":"abc', rb'{"type":"ping","id":"\\ud800',
                                 rb'{"id":"\ud800\udc00'])
def test_a_message_cut_short_is_still_truncated(raw: bytes) -> None:
    with pytest.raises(X.BadFrame, match=r"^undecodable JSON: input data was truncated$"):
        Decoder(E.DRIVER, "d1").feed(False, True, raw)
