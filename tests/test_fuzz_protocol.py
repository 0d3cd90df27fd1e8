"""Fuzzing the protocol: hypothesis-made frames at the sans-I/O decoder and at a live server.

Decoder: whatever the frame (garbage bytes, deep nesting, huge numbers, NaN/Infinity, wrong
types, unknown fields, truncated msgpack, mutated messages of every type, fragments in any
order), `Decoder.feed` returns a Request (or None for an unfinished fragment) or raises a
ClientError / MessageTooBig / InvalidText, quickly; the error it produces can always be sent back.

Live: ≥ 10k such hypothesis-generated frames (counted as sent, and checked against the
server's own count of frames decoded) over picows client connections (driver, passenger and
admin, JSON and msgpack), with the local Decoder as the oracle: every frame it refuses gets its `error` (or a
`rate_limited` one) from the server, in order; every reply fits its documented schema; the
server stays healthy, and a well-behaved client on the independent `websockets` library gets
every pong it asks for while the fuzz runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import queue
import sys
import threading
import time
from typing import Any

import msgpack
import pytest
import uvloop
from conftest import ROOT, start_stack
from connect import ws_url
from docschema import payload_schema, violations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from websockets.sync.client import connect as sync_connect

from sidecar.wire import messages as E
from sidecar.wire import schema
from sidecar.wire.codec import JSON, MSGPACK, Decoder, InvalidText, MessageTooBig, encode, error_message
from sidecar.wire.errors import ClientError, ErrorCode
from sidecar.wire.messages import SCHEMAS, Role

ERROR_CODES = {c.value for c in ErrorCode}
MESSAGE_CLASSES = {cls for cls, _roles in SCHEMAS.values()}
LOCAL_CODES = {"bad_frame", "bad_message", "unknown_type", "forbidden"}  # the decoder's own refusals
FUZZ_MESSAGE_CAP = 48 * 1024  # the live fuzz stays under the 64 KiB cap (over it is a close, tested elsewhere)

# ---- strategies ------------------------------------------------------------------------

big_ints = st.sampled_from([2**53, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**40)])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), big_ints,
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
)
json_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
    max_leaves=20,
)
TEMPLATES: dict[str, dict[str, Any]] = {
    "driver_location": {"lat": 38.56, "lon": 68.78, "heading": 90.0, "speed_kmh": 30.0, "accuracy_m": 5.0},
    "driver_status": {"status": "online"},
    "order_accept": {"order_id": 1001}, "order_reject": {"order_id": 1001}, "order_arrived": {"order_id": 1001},
    "trip_start": {"order_id": 1001}, "trip_complete": {"order_id": 1001},
    "order_cancel": {"order_id": 1001, "reason": "x"},
    "ride_request": {"pickup": {"lat": 38.5598, "lon": 68.787}, "dropoff": {"lat": 38.575, "lon": 68.795}},
    "nearby_subscribe": {"lat": 38.56, "lon": 68.78, "radius_m": 1000},
    "nearby_unsubscribe": {},
    "subscribe": {"topics": ["system_stats"]},
    "ping": {},
}
assert set(TEMPLATES) == set(schema.CLIENT_MESSAGES)
FIELDS = sorted({f for s in schema.CLIENT_MESSAGES.values() for f in s.fields} | {"type", "id"})
nasty = st.one_of(
    json_values, st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, 2**63, "", "x" * 100, [], {}, True]),
)


@st.composite
def mutated_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A message of some type, then a few edits: drop, retype, add unknown fields, change the type."""
    type_ = draw(st.sampled_from(sorted(TEMPLATES)))
    m: dict[str, Any] = {"type": type_, **TEMPLATES[type_]}
    if draw(st.booleans()):
        m["id"] = draw(st.one_of(st.text(max_size=70), st.integers(), big_ints, nasty))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "set", "unknown", "type"]))
        key = draw(st.sampled_from(FIELDS))
        if op == "drop":
            m.pop(key, None)
        elif op == "set":
            m[key] = draw(nasty)
        elif op == "unknown":
            m[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
        else:
            m["type"] = draw(st.one_of(st.sampled_from(sorted(TEMPLATES)), st.text(max_size=20), nasty))
    return m


def deep(depth: int, binary: bool) -> bytes:
    if binary:
        return b"\x81\xa1a" * depth + b"\xc0"  # {"a": {"a": ... nil}}
    return b'{"a":' * depth + b"1" + b"}" * depth


def dump_json(m: Any) -> bytes:
    return json.dumps(m, allow_nan=True).encode()  # NaN / Infinity tokens on purpose


def _packable(v: Any) -> Any:
    """msgpack has no integers beyond 64 bits: those travel as floats (the server sees a huge number)."""
    if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
        return float(v) if abs(v) < 10**300 else math.inf
    if isinstance(v, list):
        return [_packable(x) for x in v]
    if isinstance(v, dict):
        return {k: _packable(x) for k, x in v.items()}
    return v


def dump_msgpack(m: Any) -> bytes:
    return msgpack.packb(_packable(m), use_bin_type=True)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[bool, bytes]:
    """(binary, whole message payload)."""
    binary = draw(st.booleans())
    kind = draw(st.sampled_from(["message", "message", "message", "value", "garbage", "deep", "truncated",
                                 "hugenum", "badutf8"]))
    if kind == "message":
        m = draw(mutated_messages())
        return binary, dump_msgpack(m) if binary else dump_json(m)
    if kind == "value":
        v = draw(json_values)
        return binary, dump_msgpack(v) if binary else dump_json(v)
    if kind == "garbage":
        return binary, draw(st.binary(max_size=300))
    if kind == "deep":
        return binary, deep(draw(st.sampled_from([10, 500, 5000, 9000])), binary)
    if kind == "truncated":
        data = dump_msgpack(draw(mutated_messages()))
        return True, data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "hugenum":
        num = draw(st.sampled_from([b"1e999", b"-1e400", b"9" * 5000, b"1" * 300, b"NaN", b"-Infinity", b"1.5e308"]))
        return False, b'{"type":"driver_location","lat":' + num + b',"lon":1}'
    return False, draw(st.sampled_from([b'{"type":"\xff\xfe"}', b"\xed\xa0\x80", b'{"type":"ping","id":"\xc3"}']))


Frame = tuple[bool | None, bool, bytes]  # (binary / None = continuation, fin, payload)


@st.composite
def frame_runs(draw: st.DrawFn) -> list[Frame]:
    """One message as one frame or as fragments; now and then a stray continuation or a broken sequence."""
    binary, data = draw(payloads())
    n = draw(st.sampled_from([1, 1, 1, 1, 2, 3]))
    if n == 1 or len(data) < n:
        frames: list[Frame] = [(binary, True, data)]
    else:
        cuts = sorted(draw(st.lists(st.integers(1, len(data) - 1), min_size=n - 1, max_size=n - 1)))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        frames = [(binary, False, parts[0]), *((None, False, p) for p in parts[1:-1]), (None, True, parts[-1])]
    twist = draw(st.sampled_from(["none"] * 8 + ["stray_continuation", "cut_short"]))
    if twist == "stray_continuation":
        frames.insert(0, (None, draw(st.booleans()), b"{}"))
    elif twist == "cut_short" and len(frames) > 1:
        frames = frames[:-1]  # the next message then starts while this one is unfinished
    return frames


def not_utf8_text(run: list[Frame]) -> bool:
    """A run that is a text message whose bytes are not UTF-8 (a stray continuation before it is ASCII)."""
    first = next((binary for binary, _fin, _payload in run if binary is not None), None)
    if first is not False:
        return False
    try:
        b"".join(payload for _binary, _fin, payload in run).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# ---- the decoder ---------------------------------------------------------------------------


def feed_checked(dec: Decoder, frame: Frame) -> tuple[str, Any]:
    """Feeds one frame; ('ok', request) / ('more', None) / ('error', ClientError) / ('close', None)."""
    binary, fin, payload = frame
    try:
        req = dec.feed(binary, fin, payload)
    except (MessageTooBig, InvalidText):
        return "close", None
    except ClientError as e:
        assert e.code.value in ERROR_CODES and isinstance(e.message, str) and e.message
        for fmt in (JSON, MSGPACK):  # the answer can always be sent
            encode(error_message(e, 0), fmt)
        return "error", e
    if req is None:
        assert not fin, "a final frame must complete a message or fail"
        return "more", None
    assert type(req.message) in MESSAGE_CLASSES
    return "ok", req


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=st.lists(frame_runs(), min_size=1, max_size=6), role=st.sampled_from(list(Role)))
def test_decoder_answers_any_frames_with_a_request_or_a_client_error(runs: list[list[Frame]], role: Role) -> None:
    dec = Decoder(role, "d1" if role is Role.DRIVER else "p1")
    for run in runs:
        for frame in run:
            feed_checked(dec, frame)


@settings(max_examples=200, deadline=None)
@given(binary=st.booleans(), extra=st.integers(1, 5000), pieces=st.integers(1, 8))
def test_decoder_refuses_oversize_messages_before_buffering_them(binary: bool, extra: int, pieces: int) -> None:
    dec = Decoder(Role.DRIVER, "d1")
    total = dec.max_bytes + extra
    chunk = total // pieces + 1
    fed = 0
    first = True
    with pytest.raises(MessageTooBig):
        while True:
            n = min(chunk, total - fed)
            fed += n
            dec.feed(binary if first else None, fed >= total, b" " * n)
            first = False
    assert dec._size == 0  # nothing held after the refusal


def test_decoder_handles_the_extremes_quickly() -> None:
    dec = Decoder(Role.DRIVER, "d1")
    t0 = time.perf_counter()
    for frame in [(False, True, deep(10000, False)), (True, True, deep(20000, True)),
                  (False, True, b"[" * 60000), (True, True, b"\x91" * 60000),
                  (False, True, b'{"type":"driver_location","lat":' + b"9" * 60000 + b',"lon":1}'),
                  (True, True, b"\xdf\xff\xff\xff\xff"), (True, True, b"\xdd\xff\xff\xff\xff"),
                  (True, True, b"\xc6\xff\xff\xff\xff"), (True, True, b"\xc7\x01\x05x")]:
        kind, _ = feed_checked(dec, frame)
        assert kind == "error"
    assert time.perf_counter() - t0 < 5.0


# ---- the previous codec as a second opinion ------------------------------------------------------


def _legacy() -> Any:
    """bench/protocol/legacy_codec.py: the hand-written validators this codec replaced."""
    sys.path.insert(0, str(ROOT / "bench" / "protocol"))
    import legacy_codec

    return legacy_codec


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _values(m: Any) -> tuple[Any, ...]:
    """What a decoded message carries, for the new Structs and the old dataclasses alike."""
    if hasattr(m, "__struct_fields__"):  # the new codec
        tag = type(m).__struct_config__.tag
        if isinstance(m, E.RideRequest):
            return tag, (m.pickup.lat, m.pickup.lon), (m.dropoff.lat, m.dropoff.lon)
        if isinstance(m, E.DriverStatus):
            return tag, m.online
        if isinstance(m, E.OrderAction):
            return tag, m.order_id, getattr(m, "reason", "")
        if isinstance(m, E.DriverLocation):
            return tag, m.lat, m.lon, m.heading, m.speed_kmh, m.accuracy_m
        if isinstance(m, E.Nearby):
            return tag, m.lat, m.lon, m.radius_m
        if isinstance(m, E.AdminSubscribe):
            return tag, m.topics
        return (tag,)
    name = type(m).__name__  # the legacy dataclasses
    if name == "RideRequest":
        return "ride_request", m.pickup, m.dropoff
    if name == "DriverStatus":
        return "driver_status", m.online
    if name == "OrderAction":
        return m.action, m.order_id, m.reason
    if name == "DriverLocation":
        return "driver_location", m.lat, m.lon, m.heading, m.speed_kmh, m.accuracy_m
    if name == "Nearby":
        return "nearby_subscribe" if m.subscribe else "nearby_unsubscribe", m.lat, m.lon, m.radius_m
    if name == "AdminSubscribe":
        return "subscribe", m.topics
    return ("ping",)


def _beyond_64_bits(v: Any) -> bool:
    """Integers past 64 bits anywhere in a frame: some orjson releases refuse the frame (3.13, pinned, reads
    them as floats), msgspec reads them and range-checks. Either way no field takes one."""
    if isinstance(v, int) and not isinstance(v, bool):
        return not -(2**63) <= v < 2**64
    if isinstance(v, list):
        return any(_beyond_64_bits(x) for x in v)
    if isinstance(v, dict):
        return any(_beyond_64_bits(x) for x in v.values())
    return False


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=mutated_messages(), binary=st.booleans(), role=st.sampled_from(list(Role)))
def test_the_new_codec_accepts_exactly_what_the_old_one_did_with_the_same_values(
        m: dict[str, Any], binary: bool, role: Role) -> None:
    """Differential: msgspec's typed decode against the previous hand-written validators."""
    legacy = _legacy()
    conn_id = "d1" if role is Role.DRIVER else "p1"
    data = dump_msgpack(m) if binary else dump_json(m)
    # The old codec predates the admin's order_cancel: it reads that message's fields as it read a
    # passenger's, which is the rule the admin's follows too.
    old_role = Role.PASSENGER if role is Role.ADMIN and m.get("type") == "order_cancel" else role
    outcome = []
    for dec in (Decoder(role, conn_id), legacy.LegacyDecoder(old_role, conn_id)):
        try:
            outcome.append(dec.feed(binary, True, data))
        except ClientError as e:
            outcome.append(e.code)
    new, old = outcome
    if isinstance(new, ErrorCode) or isinstance(old, ErrorCode):
        if not binary and _beyond_64_bits(m) and old is ErrorCode.BAD_FRAME:
            return  # orjson's limit, not a rule of the protocol
        assert isinstance(new, ErrorCode) and isinstance(old, ErrorCode), (m, new, old)
        return
    assert new.request_id == old.request_id, m
    assert all(_same(a, b) if isinstance(a, float) else a == b
               for a, b in zip(_values(new.message), _values(old.message), strict=True)), (m, new, old)


# ---- the live server ----------------------------------------------------------------------


class FuzzListener(WSListener):
    def __init__(self, inbox: queue.Queue[Any]) -> None:
        self.inbox = inbox

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            self.inbox.put(("msg", json.loads(frame.get_payload_as_bytes())))
        elif frame.msg_type is WSMsgType.BINARY:
            self.inbox.put(("msg", msgpack.unpackb(frame.get_payload_as_bytes())))
        elif frame.msg_type is WSMsgType.CLOSE:
            self.inbox.put(("close", frame.get_close_code()))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.inbox.put(("disconnected", None))


class LoopThread:
    """A uvloop on a thread, so picows clients can be driven from sync hypothesis tests."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class FuzzClient:
    """One picows connection whose frames are mirrored into a local Decoder (the oracle)."""

    def __init__(self, lt: LoopThread, stack: Any, role: Role, app_id: str, msgpack_fmt: bool) -> None:
        self.lt, self.stack, self.role, self.app_id, self.msgpack_fmt = lt, stack, role, app_id, msgpack_fmt
        self.frames = 0
        self.reconnects = 0
        self.replies: list[dict[str, Any]] = []
        self._connect()

    def _connect(self) -> None:
        self.inbox: queue.Queue[Any] = queue.Queue()
        url = ws_url(self.stack, self.role.value, self.app_id, **({"format": "msgpack"} if self.msgpack_fmt else {}))

        async def go() -> WSTransport:
            transport, _ = await ws_connect(lambda: FuzzListener(self.inbox), url)
            return transport

        self.transport = self.lt.run(go())
        self.decoder = Decoder(self.role, self.app_id)
        kind, welcome = self.inbox.get(timeout=10)
        assert kind == "msg" and welcome["type"] == "welcome", welcome

    def send_runs(self, runs: list[list[Frame]]) -> None:
        """Sends the frames, then a ping; checks every reply up to its pong against the oracle."""
        expected: list[tuple[str, str, Any]] = []  # (code, message, id) the server must answer, in order
        closing = False
        for run in runs:
            if not_utf8_text(run):
                continue  # it would close the connection (1007: test_live_protocol.py), and the fuzz goes on
            for binary, fin, payload in run:
                kind, detail = feed_checked(self.decoder, (binary, fin, payload))
                if kind == "close":
                    closing = True
                    break
                if kind == "error":
                    expected.append((detail.code.value, detail.message, detail.request_id))
                mt = WSMsgType.CONTINUATION if binary is None else WSMsgType.BINARY if binary else WSMsgType.TEXT
                self.lt.call(self.transport.send, mt, payload, fin)
                self.frames += 1
            if closing:
                break
        if not closing and self.decoder._parts:  # finish a dangling fragment the way the oracle expects
            self.lt.call(self.transport.send, WSMsgType.CONTINUATION, b"", True)
            kind, detail = feed_checked(self.decoder, (None, True, b""))
            if kind == "error":
                expected.append((detail.code.value, detail.message, detail.request_id))
        sentinel = f"fuzz-{self.frames}"
        ping = json.dumps({"type": "ping", "id": sentinel}).encode()
        self.lt.call(self.transport.send, WSMsgType.TEXT, ping, True)
        got = self._collect(sentinel)
        self.check(expected, got)

    def _collect(self, sentinel: str) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while True:
            kind, m = self.inbox.get(timeout=max(0.1, deadline - time.monotonic()))
            if kind != "msg":
                raise AssertionError(f"{self.role.value} {self.app_id}: connection ended ({kind} {m}) mid-fuzz")
            if m.get("type") == "error" and m.get("id") == sentinel and m.get("code") == "rate_limited":
                time.sleep(0.05)  # the sentinel itself was refused: ask again once the bucket refills
                ping = json.dumps({"type": "ping", "id": sentinel}).encode()
                self.lt.call(self.transport.send, WSMsgType.TEXT, ping, True)
                continue
            got.append(m)
            self.replies.append(m)
            if m.get("type") == "pong" and m.get("id") == sentinel:
                return got

    def check(self, expected: list[tuple[str, str, Any]], got: list[dict[str, Any]]) -> None:
        for m in got:
            t = m.get("type")
            assert t in schema.SERVER_MESSAGES, f"undocumented reply {m}"
            errs = violations(m, payload_schema(t, "server"))
            assert not errs, (m, errs)
            if t == "error":
                assert m["code"] in ERROR_CODES and isinstance(m["message"], str) and m["message"]
        # The decoder's refusals are answered in order (engine replies may interleave).
        i = 0
        for m in got:
            if i == len(expected):
                break
            code, message, rid = expected[i]
            # (how deep a nesting overflows depends on each process's stack: either answer is right)
            if m.get("type") == "error" and m.get("id") == rid and (
                (m["code"] == code and m["message"] == message) or m["code"] == "rate_limited"
                or m["message"] == "nesting too deep"
            ):
                i += 1
        assert i == len(expected), f"refusal {expected[i]} never answered; got {[m.get('code') for m in got]}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.lt.call(self.transport.send_close)
            self.lt.call(self.transport.disconnect)


class CalmClient(threading.Thread):
    """A well-behaved driver on the `websockets` library, pinging 5 times a second throughout."""

    def __init__(self, stack: Any) -> None:
        super().__init__(daemon=True)
        self._exits = contextlib.ExitStack()
        self.ws = self._exits.enter_context(sync_connect(ws_url(stack, "driver", "calm1"), open_timeout=10,
                                                          # its keepalive pings draw on `random` from
                                                          # this thread while hypothesis generates
                                                          ping_interval=None))
        assert json.loads(self.ws.recv(10))["type"] == "welcome"
        self.stopping = threading.Event()
        self.pongs = 0
        self.failures: list[str] = []
        self.worst_rtt = 0.0

    def run(self) -> None:
        n = 0
        while not self.stopping.wait(0.2):
            n += 1
            t0 = time.perf_counter()
            try:
                self.ws.send(json.dumps({"type": "ping", "id": n}))
                while True:
                    m = json.loads(self.ws.recv(5))
                    if m.get("type") == "pong" and m.get("id") == n:
                        break
            except Exception as e:  # recorded and asserted on by the test
                self.failures.append(f"ping {n}: {e!r}")
                return
            self.pongs += 1
            self.worst_rtt = max(self.worst_rtt, time.perf_counter() - t0)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self._exits.close()


class Fuzz:
    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.lt = LoopThread()
        self.clients = [
            FuzzClient(self.lt, stack, Role.DRIVER, "d1", False),
            FuzzClient(self.lt, stack, Role.DRIVER, "d2", True),
            FuzzClient(self.lt, stack, Role.PASSENGER, "p1", False),
            FuzzClient(self.lt, stack, Role.PASSENGER, "p2", True),
            FuzzClient(self.lt, stack, Role.ADMIN, "admin", False),  # the admin path's sub is its id
        ]
        self.turn = 0
        self.frames_in_before = 0
        self.calm = CalmClient(stack)
        self.calm.start()

    def next_client(self) -> FuzzClient:
        self.turn += 1
        return self.clients[self.turn % len(self.clients)]

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.clients)

    def close(self) -> None:
        self.calm.stop()
        for c in self.clients:
            c.close()
        self.lt.stop()


def frames_decoded(stack: Any) -> int:
    """The server's own count of data frames it fed to its decoders (dgdo_frames_in_total)."""
    _status, body = stack.http_get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith('dgdo_frames_in_total{worker="1"} '):
            return int(float(line.split()[1]))
    raise KeyError("dgdo_frames_in_total")


@pytest.fixture(scope="module")
def fuzz(engine_bin) -> Any:
    stack = start_stack()
    f = Fuzz(stack)
    f.frames_in_before = frames_decoded(stack)
    yield f
    f.close()
    assert stack.stop() == 0


LIVE_EXAMPLES = 200  # ~70 frames per example (40-80 runs of 1-3 frames): ~14k frames, over 10k
RUNS_PER_EXAMPLE = (40, 80)


@settings(max_examples=LIVE_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(runs=st.lists(frame_runs(), min_size=RUNS_PER_EXAMPLE[0], max_size=RUNS_PER_EXAMPLE[1]))
def test_live_server_answers_fuzzed_frames_with_well_formed_errors(fuzz: Fuzz, runs: list[list[Frame]]) -> None:
    size = sum(len(p) for run in runs for _b, _f, p in run)
    if size > FUZZ_MESSAGE_CAP * 4:
        runs = runs[: len(runs) // 2]
    fuzz.next_client().send_runs(runs)


def test_live_fuzz_covered_10k_frames_and_left_the_server_healthy(fuzz: Fuzz) -> None:
    sent = fuzz.frames  # hypothesis-made frames only: nothing else has been sent through the fuzz clients yet
    decoded = frames_decoded(fuzz.stack) - fuzz.frames_in_before
    print(f"live fuzz: {sent} hypothesis frames sent over {len(fuzz.clients)} connections; "
          f"the server decoded {decoded} data frames (theirs, the sentinel pings, the calm client's)")
    assert sent >= 10_000, f"only {sent} hypothesis frames reached the server"
    assert decoded >= sent, "the server decoded fewer frames than were sent: some were lost"
    assert fuzz.stack.http_get("/healthz")[0] == 200
    assert fuzz.calm.failures == [], fuzz.calm.failures[:3]
    assert fuzz.calm.pongs >= 5, "the well-behaved client got no pongs"
    for c in fuzz.clients:  # each fuzzed connection still works
        c.send_runs([[(False, True, b'{"type":"ping","id":"last"}')]])
    errors = [m for c in fuzz.clients for m in c.replies if m["type"] == "error"]
    assert {m["code"] for m in errors} >= {"bad_frame", "bad_message", "unknown_type", "forbidden"}
    admin = fuzz.clients[-1]
    assert admin.role is Role.ADMIN and admin.frames > 0
    assert any(m["type"] == "error" and m["code"] == "forbidden" for m in admin.replies)
    assert fuzz.stack.proc.poll() is None
