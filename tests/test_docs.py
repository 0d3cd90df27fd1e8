"""docs/protocol.md and docs/asyncapi.yaml agree with the code, so that they cannot drift.

Three layers of truth, each checked against the next:
* the code: `events.SCHEMAS` + the validators (client -> server), the maps built in sidecar/*.py
  (server -> client, found by reading the source), and a live session with the real stack;
* `sidecar.wire.schema`: the wire fields of every message, probed against the validators;
* the two documents: every message, field, enum value, error code, close code and limit.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib
import json
import math
import re
from typing import Any

import msgpack
import msgspec
import pytest
from connect import ws_url
from docschema import (
    ROOT,
    api,
    api_message,
    deref,
    markdown,
    md_examples,
    operation_messages,
    payload_schema,
    violations,
)
from rides import DROPOFF, NEAR, PICKUP, accept, online_driver, passenger, request_ride
from wsclient import AppClient

from sidecar.engine import records as R
from sidecar.session import limits
from sidecar.session.core import REASON_NAME, STATUS_NAME
from sidecar.shell import server
from sidecar.wire import auth, router, schema
from sidecar.wire import codec as protocol
from sidecar.wire import messages as events
from sidecar.wire.errors import ClientError, ErrorCode
from sidecar.wire.messages import SCHEMAS, Role

CONN_ID = {Role.DRIVER: "d1", Role.PASSENGER: "p1", Role.ADMIN: "admin"}
CHANNEL = {Role.DRIVER: "driver", Role.PASSENGER: "passenger", Role.ADMIN: "admin"}


# ---- what the code sends -------------------------------------------------------------


def engine_config(field: str) -> str:
    """A default of the engine's Config, read from its source (the engine is C++)."""
    src = (ROOT / "engine" / "src" / "core" / "config.hpp").read_text()
    m = re.search(rf"\b{field} = ([0-9.]+);", src)
    assert m, f"no default for {field} in config.hpp"
    return m.group(1)


def code_sent_types() -> dict[str, str]:
    """Server message type -> the file that builds it: every `{"type": "<literal>", ...}` in sidecar/,
    and every typed server message (`class ...(Push, tag="<literal>")` in wire/pushes.py).

    The demo is a client (its maps are client messages) and is left out.
    """
    found: dict[str, str] = {}
    for path in sorted((ROOT / "sidecar").rglob("*.py")):
        if path.name in ("demo.py", "schema.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and path.name == "pushes.py":
                for kw in node.keywords:
                    if kw.arg == "tag" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                        found.setdefault(kw.value.value, path.name)
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values, strict=True):
                    if (isinstance(k, ast.Constant) and k.value == "type"
                            and isinstance(v, ast.Constant) and isinstance(v.value, str)):
                        found.setdefault(v.value, path.name)
    return found


def parse_as(message: dict[str, Any], role: Role, binary: bool = False) -> protocol.Request:
    data = msgpack.packb(message) if binary else json.dumps(message).encode()
    return protocol.decode(data, binary, role, CONN_ID[role])


def example(type_: str) -> dict[str, Any]:
    return copy.deepcopy(api_message(type_, "client")["examples"][0]["payload"])


# ---- both documents name every message ----------------------------------------------------


def test_the_schema_tables_list_exactly_the_client_messages_the_code_accepts() -> None:
    assert set(schema.CLIENT_MESSAGES) == set(SCHEMAS)
    for t, (_cls, roles) in SCHEMAS.items():
        assert schema.CLIENT_MESSAGES[t].roles == roles, t


def test_every_server_message_the_code_builds_is_in_the_schema_table() -> None:
    sent = code_sent_types()
    assert {"welcome", "ack", "error", "pong", "order_update", "new_order"} <= set(sent), sent
    missing = {t: f for t, f in sent.items() if t not in schema.SERVER_MESSAGES}
    assert not missing, f"sent by the code but not in sidecar/schema.py SERVER_MESSAGES: {missing}"


@pytest.mark.parametrize("type_", sorted(SCHEMAS))
def test_client_message_is_in_protocol_md_and_asyncapi_for_its_roles(type_: str) -> None:
    assert re.search(rf"^#{{3,4}} .*`{type_}`", markdown(), re.M), f"no section for {type_} in protocol.md"
    assert any(d == "client" and m["type"] == type_ for d, m in md_examples()), f"no example of {type_}"
    msg = api_message(type_, "client")
    assert msg["name"] == type_
    assert payload_schema(type_, "client")["properties"]["type"] == {"const": type_}
    receives = operation_messages("receive")
    on = {ch for ch, names in receives.items() if type_ in names}
    assert on == {CHANNEL[r] for r in SCHEMAS[type_][1]}, f"{type_} received on {on}"


@pytest.mark.parametrize("type_", sorted(schema.SERVER_MESSAGES))
def test_server_message_is_in_protocol_md_and_asyncapi_for_its_recipients(type_: str) -> None:
    assert re.search(rf"^#{{3,4}} .*`{type_}`", markdown(), re.M), f"no section for {type_} in protocol.md"
    assert any(d == "server" and m["type"] == type_ for d, m in md_examples()), f"no example of {type_}"
    assert api_message(type_, "server")["name"] == type_
    assert payload_schema(type_, "server")["properties"]["type"] == {"const": type_}
    sends = operation_messages("send")
    on = {ch for ch, names in sends.items() if type_ in names}
    assert on == {CHANNEL[r] for r in schema.SERVER_MESSAGES[type_].roles}, f"{type_} sent on {on}"


def test_every_admin_topic_brings_a_documented_admin_message() -> None:
    assert set(schema.ADMIN_TOPIC_MESSAGES) == set(events.ADMIN_TOPICS)
    for topic, type_ in schema.ADMIN_TOPIC_MESSAGES.items():
        assert schema.SERVER_MESSAGES[type_].roles == {Role.ADMIN}
        assert re.search(rf"^\| `{topic}` \| `{type_}` \|", markdown(), re.M), f"topic {topic} not in the table"
        assert f"{topic} -> {type_}" in " ".join(api()["channels"]["admin"]["description"].split())


def test_asyncapi_is_a_3_0_document_with_the_three_paths_and_resolvable_refs() -> None:
    doc = api()
    assert doc["asyncapi"].startswith("3.0")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {"/ws/driver/{driver_id}", "/ws/passenger/{passenger_id}", "/ws/admin"}
    for key, ch in doc["channels"].items():
        for name, m in ch["messages"].items():
            assert deref(m)["name"] == name, f"channel {key}: message key {name}"
    for op in doc["operations"].values():
        deref(op["channel"])
        channel_msgs = [deref(m) for m in deref(op["channel"])["messages"].values()]
        for m in op["messages"]:
            assert any(deref(m) is cm for cm in channel_msgs), f"{m} is not a message of its channel"
    names = [m["name"] for m in doc["components"]["messages"].values()]
    documented = set(names)
    assert set(SCHEMAS) | set(schema.SERVER_MESSAGES) == documented


# ---- fields: documents vs tables vs message Structs vs validators --------------------------------


@pytest.mark.parametrize("type_", sorted(SCHEMAS))
def test_asyncapi_client_fields_equal_the_schema_table(type_: str) -> None:
    sch = payload_schema(type_, "client")
    shape = schema.CLIENT_MESSAGES[type_]
    assert set(sch["required"]) - {"type"} == shape.required
    assert set(sch["properties"]) - {"type", "id"} == shape.fields
    assert "id" in sch["properties"], "every client message may carry an id"


@pytest.mark.parametrize("type_", sorted(schema.SERVER_MESSAGES))
def test_asyncapi_server_fields_equal_the_schema_table(type_: str) -> None:
    sch = payload_schema(type_, "server")
    shape = schema.SERVER_MESSAGES[type_]
    assert set(sch["required"]) - {"type"} == shape.required
    assert set(sch["properties"]) - {"type"} == shape.fields
    assert "ts" in shape.required
    if shape.reliable:  # (welcome carries the recipient's latest seq too, without being numbered)
        assert "seq" in shape.required and deref(sch["properties"]["seq"])["minimum"] == 1


def message_classes() -> dict[type, list[str]]:
    out: dict[type, list[str]] = {}
    for t, (cls, _roles) in SCHEMAS.items():
        out.setdefault(cls, []).append(t)
    return out


@pytest.mark.parametrize("cls", list(message_classes()), ids=lambda c: c.__name__)
def test_message_struct_fields_are_the_documented_wire_fields(cls: type) -> None:
    """Every Struct field is a documented wire field and back; a one-type class requires the same."""
    types = message_classes()[cls]
    documented = set().union(*(schema.CLIENT_MESSAGES[t].fields for t in types))
    fields = msgspec.structs.fields(cls)
    wire = {f.encode_name for f in fields} - {"id"}  # the envelope's `id`, which every message may carry
    assert wire == documented, f"{cls.__name__} holds {wire}, documented {documented}"
    if len(types) == 1:
        required = {f.encode_name for f in fields if f.required}
        assert required == schema.CLIENT_MESSAGES[types[0]].required, f"{cls.__name__} requires {required}"


@pytest.mark.parametrize("type_", sorted(SCHEMAS))
def test_required_fields_are_exactly_those_the_validator_demands(type_: str) -> None:
    """Each required field, left out, is refused naming it; each optional one may be left out."""
    shape = schema.CLIENT_MESSAGES[type_]
    role = min(shape.roles)
    full = example(type_)
    for f in shape.optional:  # the fullest valid message: every optional field at a valid value
        full.setdefault(f, valid_value(payload_schema(type_, "client")["properties"][f], f))
    parse_as(full, role)
    for f in shape.required:
        m = {k: v for k, v in full.items() if k != f}
        with pytest.raises(ClientError) as exc:
            parse_as(m, role)
        assert exc.value.message.startswith(f), exc.value.message
    for f in shape.optional:
        parse_as({k: v for k, v in full.items() if k != f}, role)


def valid_value(sch: dict[str, Any], field: str) -> Any:
    sch = deref(sch)
    if field == "driver_id":
        return CONN_ID[Role.DRIVER]
    if "enum" in sch:
        return sch["enum"][0]
    if sch.get("type") in ("number", "integer"):
        return sch.get("minimum", 0)
    if sch.get("type") == "string":
        return "x"
    raise AssertionError(f"no valid value for {field}: {sch}")


def numeric_bounds() -> list[tuple[str, str, float, float]]:
    out = []
    for type_ in sorted(SCHEMAS):
        for field, prop in payload_schema(type_, "client")["properties"].items():
            p = deref(prop)
            if p.get("type") == "number" and "minimum" in p and "maximum" in p:
                out.append((type_, field, p["minimum"], p["maximum"]))
    return out


@pytest.mark.parametrize(("type_", "field", "lo", "hi"), numeric_bounds())
def test_documented_number_ranges_are_the_validators_ranges(type_: str, field: str, lo: float, hi: float) -> None:
    role = min(SCHEMAS[type_][1])
    base = example(type_)
    if type_ == "nearby_unsubscribe":
        base.update(lat=1.0, lon=1.0)
    for ok in (lo, hi):
        parse_as({**base, field: ok}, role)
    for bad in (lo - 0.001, hi + 0.001, math.inf):
        with pytest.raises(ClientError) as exc:
            parse_as({**base, field: bad}, role, binary=True)  # msgpack: inf is representable
        assert exc.value.message.startswith(field)


# The reasons apps can receive: every one the records name but none, and offer_rejected, which the
# engine never sends (include/dgdo/events.h: a driver's own reject is answered by its ack alone).
SENT_REASONS = set(REASON_NAME.values()) - {REASON_NAME[R.Reason.NONE], REASON_NAME[R.Reason.OFFER_REJECTED]}


def test_protocol_md_lists_exactly_the_reasons_apps_receive() -> None:
    m = re.search(r"^`reason` is one of (.+?)\.(?:\s|$)", markdown(), re.M | re.S)
    assert m, "no reason list in protocol.md (order_update)"
    assert set(re.findall(r"`([a-z_]+)`", m.group(1))) == SENT_REASONS


def test_enums_in_asyncapi_are_the_codes_enums() -> None:
    schemas = api()["components"]["schemas"]
    assert set(schemas["ErrorCode"]["enum"]) == {c.value for c in ErrorCode}
    assert set(schemas["OrderStatus"]["enum"]) == set(STATUS_NAME.values())
    assert set(schemas["Reason"]["enum"]) == SENT_REASONS
    assert set(schemas["AdminTopic"]["enum"]) == set(events.ADMIN_TOPICS)
    assert deref(payload_schema("driver_status", "client")["properties"]["status"])["enum"] == ["online", "offline"]


# ---- examples: each parses, validates and matches the schemas ---------------------------------


def test_protocol_md_has_examples_in_both_directions() -> None:
    kinds = {(d, m["type"]) for d, m in md_examples()}
    assert {("client", t) for t in SCHEMAS} <= kinds
    assert {("server", t) for t in schema.SERVER_MESSAGES} <= kinds


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_every_client_example_in_both_documents_is_accepted_by_the_decoder(binary: bool) -> None:
    examples = [m for d, m in md_examples() if d == "client"]
    examples += [e["payload"] for k, m in api()["components"]["messages"].items() if k.startswith("client.")
                 for e in m.get("examples", [])]
    for m in examples:
        for role in SCHEMAS[m["type"]][1]:
            data = msgpack.packb(m) if binary else json.dumps(m).encode()
            req = protocol.Decoder(role, CONN_ID[role]).feed(binary, True, data)
            assert req is not None and req.request_id == m.get("id"), m
        errs = violations(m, payload_schema(m["type"], "client"))
        assert not errs, (m, errs)


def test_every_server_example_matches_its_asyncapi_schema() -> None:
    examples = [m for d, m in md_examples() if d == "server"]
    examples += [e["payload"] for k, m in api()["components"]["messages"].items() if k.startswith("server.")
                 for e in m.get("examples", [])]
    for m in examples:
        assert m["type"] in schema.SERVER_MESSAGES, m
        errs = violations(m, payload_schema(m["type"], "server"), floats=True)
        assert not errs, (m, errs)
        if m["type"] == "error":
            assert m["code"] in {c.value for c in ErrorCode}


def test_error_examples_name_their_field_as_the_validator_does() -> None:
    """A documented `bad_message`/`forbidden`/`unknown_type` text is what the decoder says."""
    said = {m["message"] for d, m in md_examples() if d == "server" and m["type"] == "error"}
    produced = set()
    for m, role in (({"type": "driver_status", "status": "sleeping"}, Role.DRIVER),
                    ({"type": "teleport"}, Role.DRIVER),
                    ({"type": "order_accept", "order_id": 1}, Role.PASSENGER)):
        with pytest.raises(ClientError) as exc:
            parse_as(m, role)
        produced.add(exc.value.message)
    assert produced <= said, produced - said


def test_every_documented_error_text_is_one_the_server_sends() -> None:
    """Each `message` of an `error` example is what the decoder says for such a message, or a text the
    sidecar's code sends as it is (a literal): none is made up for the document."""
    produced = set()
    for data, role in ((b"hello", Role.DRIVER), (b'{"type": "teleport"}', Role.DRIVER),
                       (b'{"type": "driver_status", "status": "sleeping"}', Role.DRIVER),
                       (b'{"type": "order_accept", "order_id": 1}', Role.PASSENGER)):
        with pytest.raises(ClientError) as exc:
            protocol.decode(data, False, role, CONN_ID[role])
        produced.add(exc.value.message)
    with pytest.raises(protocol.MessageTooBig) as big:
        protocol.Decoder(Role.DRIVER, "d1").feed(False, True, b" " * 100_000)
    produced.add(str(big.value))
    code = "".join(p.read_text() for p in (ROOT / "sidecar").rglob("*.py"))
    for d, m in md_examples():
        if d == "server" and m["type"] == "error":
            text = m["message"]
            assert text in produced or f'"{text}"' in code or f"'{text}'" in code, f"{m['code']}: {text!r}"


def test_the_bad_message_row_quotes_the_decoder_word_for_word() -> None:
    """The `field: rule` examples in the error table are what the decoder says (one form throughout)."""
    md = markdown()
    for m, role in (({"type": "driver_location", "lat": 91, "lon": 68.78}, Role.DRIVER),
                    ({"type": "ride_request", "pickup": {"lat": 38.5}, "dropoff": {"lat": 38.5, "lon": 68.7}},
                     Role.PASSENGER),
                    ({"type": "order_accept", "order_id": 0}, Role.DRIVER)):
        for binary in (False, True):
            with pytest.raises(ClientError) as exc:
                parse_as(m, role, binary)
            assert exc.value.code is ErrorCode.BAD_MESSAGE
            assert f"`{exc.value.message}`" in md, exc.value.message


# ---- error codes, close codes, limits ------------------------------------------------------


@pytest.mark.parametrize("code", [c.value for c in ErrorCode])
def test_every_error_code_has_a_row_saying_when(code: str) -> None:
    assert re.search(rf"^\| `{code}` \| \S", markdown(), re.M), f"no row for {code} in the error table"


@pytest.mark.parametrize("close", [1000, 1001, 1002, 1007, 1008, 1009, server.CLOSE_REPLACED, 4008,
                                   auth.CLOSE_UNAUTHORIZED, auth.CLOSE_FORBIDDEN])
def test_close_codes_are_documented_in_both(close: int) -> None:
    assert re.search(rf"^\| {close} \|", markdown(), re.M)
    assert str(close) in api()["info"]["description"]


def test_limits_in_protocol_md_are_the_codes_limits() -> None:
    md = markdown()
    assert f"{protocol.MAX_MESSAGE_BYTES} bytes" in md
    assert f"at most {protocol.MAX_FRAGMENTS} frames per message" in md
    assert f"more than {protocol.MAX_FRAGMENTS} fragments" in md  # the 1009 row and the too_large row
    assert f"1–{protocol.MAX_REQUEST_ID_LEN} characters" in md
    assert f"at most {events.MAX_REASON_BYTES} bytes" in md
    assert f"1…{events.MAX_NEARBY_RADIUS_M:g}" in md
    assert f"last {engine_config('history_depth')} per recipient" in md
    assert float(engine_config("retention_s")) == 3600
    assert " ".join(md.split()).count("an hour by default") >= 2  # the history, and the ended orders
    assert events.ID_RE.pattern.replace("{1,36}", "") in md
    assert f"{server.MAX_FRAME_BYTES // (1024 * 1024)} MiB" in md
    assert protocol.JSON.value in md and protocol.MSGPACK.value in md
    pos, msgs = limits.POSITIONS_RATE, limits.MESSAGES_RATE
    assert f"{pos.per_s:g} a second sustained, bursts of {pos.burst:g}" in md
    assert f"{msgs.per_s:g} a second sustained, bursts of {msgs.burst:g}" in md
    assert limits.ABUSE_WINDOW_S == 1.0 and f"{limits.ABUSE_AFTER} refusals within one second" in md
    assert f"the first {limits.ANSWERED_REFUSALS} refusals in a second are answered" in md
    assert f"({limits.PAUSE_MIN_S * 1000:g}–{limits.PAUSE_MAX_S * 1000:g} ms)" in md
    assert f"up to {limits.MAX_QUEUED}" in md and f"{limits.MAX_PAUSED_S:g} s without the buffer draining" in md
    row = re.search(r"^\| slow consumer \| (.*)$", md, re.M)
    assert row and set(re.findall(r"latest-wins messages \(([^)]*)\)", row.group(1))[0].replace("`", "").split(", ")) \
        == limits.LATEST_WINS


def test_the_400_row_states_the_last_seq_the_router_takes() -> None:
    digits = int(re.search(r"`last_seq` not a non-negative integer of at most (\d+) digits", markdown()).group(1))
    assert router.route(b"GET", b"/ws/driver/d1?last_seq=" + b"9" * digits).last_seq == 10**digits - 1
    with pytest.raises(router.RouteError) as exc:
        router.route(b"GET", b"/ws/driver/d1?last_seq=" + b"1" * (digits + 1))
    assert exc.value.status == 400
    assert api()["components"]["schemas"]["ConnectQuery"]["properties"]["last_seq"]["maximum"] == 10**digits - 1


def test_a_header_token_wins_over_the_query_as_protocol_md_says() -> None:
    assert "When both are sent, the header's token is the one checked." in " ".join(markdown().split())
    assert auth.token_from({"token": "from-query"}, "Bearer from-header") == "from-header"


# ---- a live session: what the server really sends fits the documents --------------------------


@pytest.mark.parametrize("msgpack_side", ["passenger", "driver_and_admin"])
async def test_a_live_ride_sends_only_documented_messages_with_documented_fields(stack, msgpack_side: str) -> None:
    """Each side in each format (by subprotocol, and by `?format=msgpack` for the admin)."""
    mp = msgpack_side == "driver_and_admin"
    driver = await AppClient.open(ws_url(stack, "driver", "d1"), subprotocol="dgdo.v1.msgpack" if mp else None)
    passenger = await AppClient.open(ws_url(stack, "passenger", "p1"), subprotocol=None if mp else "dgdo.v1.msgpack")
    admin = await AppClient.open(ws_url(stack, "admin", **({"format": "msgpack"} if mp else {})))
    try:
        for c in (driver, passenger, admin):
            await c.expect("welcome")
        await admin.send({"type": "subscribe", "topics": sorted(events.ADMIN_TOPICS), "id": 1})
        await admin.expect("ack", id=1)
        await driver.send({"type": "driver_status", "status": "online", "id": "s1"})
        await driver.expect("ack", id="s1")
        await driver.send({"type": "driver_location", "lat": 38.561, "lon": 68.78, "heading": 90})
        await passenger.send({"type": "nearby_subscribe", "lat": 38.5598, "lon": 68.787, "id": "n1"})
        await passenger.send({"type": "ride_request", "id": "r1", "pickup": {"lat": 38.5598, "lon": 68.787},
                              "dropoff": {"lat": 38.575, "lon": 68.795}})
        order = (await passenger.expect("ack", id="r1"))["order_id"]
        await driver.expect("new_order", order_id=order)
        await driver.send({"type": "order_accept", "order_id": order, "id": "a1"})
        await passenger.expect("order_update", status="accepted")
        await driver.send({"type": "driver_location", "lat": 38.5605, "lon": 68.784, "speed_kmh": 20})
        await passenger.expect("driver_location")
        for action, status in (("order_arrived", "arrived"), ("trip_start", "started"),
                               ("trip_complete", "completed")):
            await driver.send({"type": action, "order_id": order})
            await passenger.expect("order_update", status=status)
        # an offer withdrawn: the passenger cancels while the driver holds it
        await passenger.send({"type": "ride_request", "id": "r2", "pickup": {"lat": 38.5598, "lon": 68.787},
                              "dropoff": {"lat": 38.575, "lon": 68.795}})
        order2 = (await passenger.expect("ack", id="r2"))["order_id"]
        await driver.expect("new_order", order_id=order2)
        await passenger.send({"type": "order_cancel", "order_id": order2, "reason": "changed my mind", "id": "c1"})
        await driver.expect("cancel_order", order_id=order2)
        # errors of each local kind, and one from the engine
        await driver.ws.send("{not json")
        await driver.expect("error", code="bad_frame")
        await driver.send({"type": "teleport", "id": 5})
        await driver.expect("error", code="unknown_type", id=5)
        await passenger.send({"type": "order_accept", "order_id": 1, "id": 6})
        await passenger.expect("error", code="forbidden", id=6)
        await driver.send({"type": "trip_start", "order_id": order, "id": 7})
        await driver.expect("error", id=7)
        await admin.expect("system_stats")
        for c in (driver, passenger, admin):
            await c.send({"type": "ping", "id": "last"})
            await c.expect("pong", id="last")
    finally:
        for c in (driver, passenger, admin):
            await c.close()
    seen = {"driver": driver.seen, "passenger": passenger.seen, "admin": admin.seen}
    kinds: set[str] = set()
    for who, messages in seen.items():
        for m in messages:
            t = m.get("type")
            kinds.add(t)
            assert t in schema.SERVER_MESSAGES, f"{who} got undocumented {t}: {m}"
            assert Role(who) in schema.SERVER_MESSAGES[t].roles, f"{who} got {t}, documented for others"
            errs = violations(m, payload_schema(t, "server"), floats=True)
            assert not errs, (who, m, errs)
    assert {"welcome", "ack", "error", "pong", "order_update", "new_order", "cancel_order",
            "driver_location", "system_stats", "active_orders", "driver_status", "assignment"} <= kinds


def engine_persist_defaults() -> tuple[list[str], str, str]:
    """(the --fsync policies the engine takes, its default policy, its default interval ms), from its source."""
    settings = (ROOT / "engine" / "src" / "loop" / "settings.cpp").read_text()
    table = re.search(r"kFsync\[\] = \{(.*?)\};", settings, re.S)
    assert table, "no kFsync table in settings.cpp"
    policies = re.findall(r'\{"(\w+)", FsyncPolicy::\w+\}', table.group(1))
    persist = (ROOT / "engine" / "src" / "loop" / "persistence.hpp").read_text()
    default = re.search(r"FsyncPolicy fsync = FsyncPolicy::(\w+);", persist)
    interval = re.search(r"fsync_interval_ms = (\d+);", persist)
    assert default and interval, "no persistence defaults in persistence.hpp"
    return policies, default.group(1).lower(), interval.group(1)


def test_protocol_md_says_what_a_seq_guarantees_under_each_fsync_policy() -> None:
    """After a power loss every policy keeps ids and seqs unique (a restart jumps them by the engine's
    kRecoveryGap, which the text names); the table must name every policy the engine takes."""
    policies, default, interval_ms = engine_persist_defaults()
    assert sorted(policies) == ["batch", "interval", "never"], policies
    md = " ".join(markdown().split())
    header = "| the engine's host… | `--fsync batch` | `--fsync interval` (the default) or `never` |"
    assert header in md, "no fsync table in protocol.md §1"
    assert default == "interval"
    assert f"under `interval` about {interval_ms} ms, `--fsync-interval-ms`" in md
    assert "handed out again, **for different messages**" not in md  # the old, unfixed behaviour
    core = (ROOT / "engine" / "src" / "core" / "core.hpp").read_text()
    gap = re.search(r"kRecoveryGap = uint64_t\{1\} << (\d+);", core)
    assert gap, "no kRecoveryGap in core.hpp"
    assert f"jumps 2^{gap.group(1)} ({2 ** int(gap.group(1))}) up" in md
    assert f"every app's `seq`s 2^{gap.group(1)} up before it sends anything" in md
    readme = " ".join((ROOT / "README.md").read_text().split())
    for p in policies:
        assert f"| `{p}`" in readme, f"README's fsync table lacks {p}"


# ---- resume: what welcome.seq means for an app's bookkeeping (§1) ------------------------------


def processed_after_welcome(welcome: dict[str, Any], last_seq: int | None) -> int:
    """The last seq an app counts as processed once `welcome` arrives, as protocol.md §1 says."""
    return last_seq if welcome["resumed"] and last_seq is not None else welcome["seq"]


def test_protocol_md_says_what_welcome_seq_means_after_a_resume_and_after_a_snapshot() -> None:
    """welcome.seq is not "processed" after a resumed welcome: the replay up to it follows."""
    md = " ".join(markdown().split())
    assert "`\"resumed\": true`: keep `N` as your last processed `seq`" in md
    assert "carries `N + 1` … `welcome.seq`" in md
    assert "`\"resumed\": false`: count `welcome.seq` as processed" in md
    assert "count it as processed, so that" not in md  # the old advice, for every welcome
    seq = api()["components"]["schemas"]["Welcome"]["properties"]["seq"]["description"]
    assert "keep your last_seq as processed" in seq


async def test_welcome_seq_ends_a_resumed_replay_and_a_snapshot_is_numbered_above_it(stack) -> None:
    """The server side of §1: a resumed replay carries last_seq + 1 … welcome.seq (an app that took
    welcome.seq as processed would drop all of it); a snapshot is numbered from welcome.seq + 1."""
    d = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack, "p1")
    back = ahead_app = None
    try:
        order = await request_ride(p)
        await d.expect("new_order", order_id=order)
        n = (await accept(d, order, p))["seq"]
        await p.close()  # away while the trip goes on
        for step in ("order_arrived", "trip_start"):
            await d.send({"type": step, "order_id": order, "id": step})
            await d.expect("ack", id=step)

        back = await AppClient.open(ws_url(stack, "passenger", "p1", last_seq=n))
        welcome = await back.expect("welcome")
        assert welcome["resumed"] is True and welcome["seq"] == n + 2
        replay = [await back.expect("order_update", order_id=order) for _ in range(welcome["seq"] - n)]
        assert [m["seq"] for m in replay] == [n + 1, n + 2]
        assert [m["status"] for m in replay] == ["arrived", "started"]
        processed = processed_after_welcome(welcome, n)
        assert [m["seq"] for m in replay if m["seq"] > processed] == [n + 1, n + 2]
        await back.close()

        ahead = welcome["seq"] + 10  # a last_seq the engine never handed out: a snapshot, counted on from it
        ahead_app = await AppClient.open(ws_url(stack, "passenger", "p1", last_seq=ahead))
        welcome = await ahead_app.expect("welcome")
        assert welcome["resumed"] is False and welcome["seq"] == ahead
        live = await ahead_app.expect("order_update", order_id=order)
        assert (live["status"], live["seq"]) == ("started", ahead + 1)
        assert live["seq"] > processed_after_welcome(welcome, ahead)
    finally:
        for c in (d, p, back, ahead_app):
            if c is not None:
                await c.close()


# ---- estimate_update: to the pickup, then to the drop-off (§4) -----------------------------------


def haversine_m(a: tuple[float, float], b: dict[str, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b["lat"])
    h = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(b["lon"] - a[1]) / 2) ** 2)
    return 2 * 6_371_000.0 * math.asin(math.sqrt(h))


def test_protocol_md_says_where_an_estimate_is_to() -> None:
    md = " ".join(markdown().split())
    assert f"about one every {float(engine_config('estimate_interval_s')):g} s" in md
    assert f"the pickup overhead, {float(engine_config('pickup_overhead_s')):g} s by default" in md
    assert "once the trip has `started`, to the drop-off" in md
    summary = api()["components"]["messages"]["server.estimate_update"]["summary"]
    assert "to the drop-off once started" in summary


async def test_an_estimate_is_to_the_pickup_on_the_way_and_to_the_dropoff_once_started(stack) -> None:
    d = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack, "p1")
    try:
        order = await request_ride(p)
        await d.expect("new_order", order_id=order)
        await accept(d, order, p)
        on_the_way = (38.5605, 68.7865)
        await d.send({"type": "driver_location", "lat": on_the_way[0], "lon": on_the_way[1]})
        est = await p.expect("estimate_update", order_id=order)
        assert est["distance_m"] == pytest.approx(haversine_m(on_the_way, PICKUP), abs=1.0)
        for step in ("order_arrived", "trip_start"):
            await d.send({"type": step, "order_id": order, "id": step})
            await d.expect("ack", id=step)
        aboard = (38.5650, 68.7900)
        await d.send({"type": "driver_location", "lat": aboard[0], "lon": aboard[1]})
        est = await p.expect("estimate_update", order_id=order)
        assert est["distance_m"] == pytest.approx(haversine_m(aboard, DROPOFF), abs=1.0)
        assert abs(est["distance_m"] - haversine_m(aboard, PICKUP)) > 100
    finally:
        await d.close()
        await p.close()


# ---- requests without an id (§2) ---------------------------------------------------------------


async def test_without_an_id_no_ack_comes_but_the_engines_refusals_do(stack) -> None:
    md = " ".join(markdown().split())
    assert "Without an `id` there is no `ack`, but errors are still reported, without `id`" in md
    assert "the engine's refusal (`conflict`, `forbidden`, `not_found`) of a `ride_request`" in md
    d = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack, "p1")
    try:
        await p.send({"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF})
        order = (await p.expect("order_update", status="searching"))["order_id"]
        await d.expect("new_order", order_id=order)
        await d.send({"type": "trip_start", "order_id": order})  # an offer, not a trip yet
        err = await d.expect("error", code="conflict")
        assert "id" not in err and err["order_id"] == order
        await d.send({"type": "order_accept", "order_id": 424242})
        assert "id" not in await d.expect("error", code="not_found")
        for c in (p, d):
            await c.send({"type": "ping", "id": "last"})
            await c.expect("pong", id="last")  # everything before it has arrived
        assert [m for m in p.seen + d.seen if m["type"] == "ack" and m["id"] not in ("l0", "s0")] == []
    finally:
        await d.close()
        await p.close()


# ---- error texts the apps see without the decoder: engine_unavailable and overloaded (§5) ----------


def code_texts_for(code: ErrorCode) -> set[str]:
    """Every message text the sidecar's code sends with `code`, read from the source: the string
    literals of an `error(..., ErrorCode.X, <text>)` call, of a `{"code": ErrorCode.X.value, "message":
    <text>}` map, and of the exceptions the server turns into `code` (server.py: EngineUnavailable ->
    engine_unavailable, Overloaded -> overloaded)."""
    raised = {ErrorCode.ENGINE_UNAVAILABLE: "EngineUnavailable", ErrorCode.OVERLOADED: "Overloaded"}[code]

    def names(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == code.name

    def literals(node: ast.AST) -> set[str]:
        return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}

    found: set[str] = set()
    for path in sorted((ROOT / "sidecar").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if func == raised:
                    found |= {a.value for a in node.args if isinstance(a, ast.Constant)}
                elif func == "error":
                    for i, a in enumerate(node.args):
                        if names(a) and i + 1 < len(node.args):
                            found |= literals(node.args[i + 1])
            if isinstance(node, ast.Dict):
                fields = {
                    k.value: v for k, v in zip(node.keys, node.values, strict=True) if isinstance(k, ast.Constant)
                }
                code_v = fields.get("code")
                if isinstance(code_v, ast.Attribute) and code_v.attr == "value" and names(code_v.value):
                    found |= literals(fields["message"])
    return found


@pytest.mark.parametrize("code", [ErrorCode.ENGINE_UNAVAILABLE, ErrorCode.OVERLOADED], ids=lambda c: c.value)
def test_the_error_row_quotes_every_text_the_server_sends_with_the_code(code: ErrorCode) -> None:
    texts = code_texts_for(code)
    assert texts, f"no text found for {code.value}: the source scan no longer matches the code"
    row = re.search(rf"^\| `{code.value}` \| (.*)$", markdown(), re.M)
    assert row, code.value
    assert set(re.findall(r"`([^`]*(?:engine|retry)[^`]*)`", row.group(1))) == texts


def test_active_orders_active_is_the_engines_latest_report_as_documented() -> None:
    """`active` is the engine's count from its stats record (once a second), not recounted per change."""
    md = " ".join(markdown().split())
    assert "`active`, the engine's count of active orders as of its latest report" in md
    assert "about once a second): it may not count this change yet" in md
    assert float(engine_config("stats_interval_s")) == 1.0
    src = (ROOT / "sidecar" / "session" / "core.py").read_text()
    assert '"active": self.stats.engine.active_orders' in src
    assert '"active_orders": e.active_orders' in src  # system_stats: the same record's count


# ---- numbers and null from an app (§1 "Formats", §2) ------------------------------------------


def test_protocol_md_says_how_numbers_and_null_are_taken_and_sent() -> None:
    md = " ".join(markdown().split())
    assert "comes as a float (in msgpack a float 64), even when it is whole: `15.0`, never `15`" in md
    assert 'never a float where an integer is: `"order_id": 1001.0` (or JSON `1e3`) is `bad_message`' in md
    assert "`null` is refused (`bad_message` naming the field), except in `id`, where `null` counts as no `id`" in md


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_a_float_is_refused_where_an_integer_is_asked_and_an_integer_taken_where_a_number_is(binary: bool) -> None:
    for whole in (1001.0, 1e3):
        with pytest.raises(ClientError) as exc:
            parse_as({"type": "order_accept", "order_id": whole}, Role.DRIVER, binary)
        assert exc.value.code is ErrorCode.BAD_MESSAGE and exc.value.message.startswith("order_id: ")
    with pytest.raises(ClientError):
        protocol.decode(b'{"type": "order_accept", "order_id": 1e3}', False, Role.DRIVER, "d1")
    whole = {"type": "driver_location", "lat": 38, "lon": 68, "heading": 90, "speed_kmh": 0}
    req = parse_as(whole, Role.DRIVER, binary)
    assert (req.message.lat, req.message.heading) == (38, 90)


@pytest.mark.parametrize("type_", sorted(t for t, s in schema.CLIENT_MESSAGES.items() if s.optional))
def test_null_in_an_optional_field_is_refused_naming_it_and_a_null_id_is_no_id(type_: str) -> None:
    shape = schema.CLIENT_MESSAGES[type_]
    role = min(shape.roles)
    base = {k: v for k, v in example(type_).items() if k not in shape.optional}
    base.pop("id", None)
    for f in sorted(shape.optional):
        for binary in (False, True):
            with pytest.raises(ClientError) as exc:
                parse_as({**base, f: None}, role, binary)
            assert exc.value.code is ErrorCode.BAD_MESSAGE and exc.value.message.startswith(f"{f}: "), f
    assert parse_as({**base, "id": None}, role).request_id is None


# ---- nearby_drivers: which drivers, how many, how often (§4) --------------------------------------


def test_protocol_md_says_how_many_nearby_drivers_come_and_how_often() -> None:
    md = " ".join(markdown().split())
    cap = re.search(r"#define DGDO_NEARBY_MAX (\d+)", (ROOT / "include" / "dgdo" / "events.h").read_text())
    assert cap and f"the nearest first, at most {cap.group(1)} of them" in md
    assert float(engine_config("nearby_interval_s")) == 1.0 and "then one every second, whether or not" in md


async def test_nearby_drivers_are_the_available_ones_nearest_first_at_once_then_every_second(stack) -> None:
    where = {"n1": (38.5600, 68.7871), "n3": (38.5680, 68.7870), "n2": (38.5630, 68.7870)}  # ~10, ~900, ~350 m
    drivers = [await online_driver(stack, d, at) for d, at in where.items()]
    off = await AppClient.open(ws_url(stack, "driver", "n0"))  # a position, never online: not available
    p = await passenger(stack, "p1")
    try:
        await off.expect("welcome")
        await off.send({"type": "driver_location", "lat": 38.5599, "lon": 68.7870, "id": "l"})
        await off.expect("ack", id="l")
        await p.send(
            {"type": "nearby_subscribe", "lat": PICKUP["lat"], "lon": PICKUP["lon"], "radius_m": 2000, "id": "n"}
        )
        assert (await p.recv())["type"] == "ack"
        first = await p.recv()
        assert first["type"] == "nearby_drivers"
        assert [d["driver_id"] for d in first["drivers"]] == ["n1", "n2", "n3"]
        again = await p.expect("nearby_drivers", timeout=5)  # nothing changed, and it comes anyway
        assert again["drivers"] == first["drivers"] and again["ts"] > first["ts"]
    finally:
        for c in (*drivers, off, p):
            await c.close()


# ---- close reasons (§6) ---------------------------------------------------------------------------


def code_close_reasons() -> set[str]:
    """The reason of every close the sidecar makes with a fixed text, read from its source: the
    argument after the code of a `close(...)` / `close_for(...)` call, a literal, a module constant
    (its value) or an f-string (its literal prefix)."""
    found: set[str] = set()
    for path in sorted((ROOT / "sidecar").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("close", "close_for")):
                continue
            if len(node.args) == 3:
                reason = node.args[2]
                if isinstance(reason, ast.Constant) and isinstance(reason.value, str):
                    found.add(reason.value)
                elif isinstance(reason, ast.JoinedStr) and isinstance(reason.values[0], ast.Constant):
                    found.add(reason.values[0].value)
                elif isinstance(reason, ast.Name) and reason.id.isupper():
                    value = getattr(importlib.import_module(module), reason.id)
                    assert isinstance(value, str), (module, reason.id)
                    found.add(value)
    return found


def test_protocol_md_lists_every_close_reason_the_server_gives() -> None:
    md = " ".join(markdown().split())
    para = re.search(r"Act on the code; the close reason is a short text for your logs(.*?)\n\n", markdown(), re.S)
    assert para, "no close-reason paragraph in protocol.md §6"
    listed = " ".join(para.group(1).split())
    reasons = code_close_reasons()
    assert {"server shutting down", "message too big", "replaced by a newer connection"} <= reasons, reasons
    for reason in reasons:
        assert f"`{reason}" in listed, f"close reason {reason!r} is not in protocol.md §6"
    reply_s = {f.name: f.default for f in dataclasses.fields(server.Settings)}["ping_reply_s"]
    assert f"no answer to a ping within {reply_s:g} s" in md
    with pytest.raises(protocol.InvalidText) as exc:
        protocol.Decoder(Role.DRIVER, "d1").feed(False, True, b"\xff")
    assert str(exc.value) == "invalid UTF-8 in a text message (byte 0)"


def test_the_format_choice_among_several_or_unknown_subprotocols_is_as_protocol_md_says() -> None:
    md = " ".join(markdown().split())
    assert "Of several offered, the first it knows, in your order, is chosen" in md
    assert "offering only names it does not know (a future `dgdo.v2.json`) is as offering none" in md
    mp, js = protocol.MSGPACK, protocol.JSON
    assert router.choose_format("dgdo.v1.msgpack, dgdo.v1.json", {}) == (mp, mp.value)
    assert router.choose_format("dgdo.v2.json, dgdo.v1.json, dgdo.v1.msgpack", {}) == (js, js.value)
    assert router.choose_format("dgdo.v2.json", {"format": "msgpack"}) == (mp, None)
    assert router.choose_format("dgdo.v2.msgpack", {}) == (js, None)
