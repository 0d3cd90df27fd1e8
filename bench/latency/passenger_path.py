"""The path passengers feel: a driver's `driver_location` sent -> its passenger's frame received.

    python bench/latency/passenger_path.py [--quick | --smoke] [--repeats R] [--pairs 50] [--variants a,b]
                                           [--out DIR] [--profile DIR] [--idle-spin-us US]

`make bench-latency` runs it after run.py. Every variant is timed by the same picows client (this
process), in the same run, with the same pairs and the same pacing:

* `bare picows relay` (relays.py): the driver's frame is written to its passenger's socket as it
  came. The floor: two WebSocket hops through one Python process.
* `fastapi relay` (relays.py): FastAPI/uvicorn, parsing the JSON and building the passenger's
  message: what a team would write with the original plan's layer, without any engine.
* `stack`: the real engine and sidecar (`dgdo run --no-demo --no-journal`). Each pair is set up
  as a real ride (driver online, ride_request, new_order, order_accept), after which every
  position the driver sends crosses decode -> ring -> engine -> ring -> encode to the passenger.
* `stack journal`: the same with the engine's journal on (a fresh state dir, default fsync).
* `stack N workers` (`--workers 1,N`): `stack` with `dgdo run --workers N`: the kernel spreads the
  drivers and the passengers over the workers (a pair is on one worker or on two: the report says
  how many of each, from the `X-Dgdo-Worker` header of each 101), reported beside `stack` with the
  ratio of the same repeat.

The drivers are connections of a child process (this script with --drivers) and the passengers
of this one, so that a burst of sends does not hold up the timestamps of the arrivals; both use
perf_counter_ns, CLOCK_MONOTONIC, one clock across processes. Two ways of sending, both measured
per sample (just before the driver's send -> the passenger's frame):

* `one at a time`: one driver sends, its passenger's frame is awaited, a short gap, the next driver.
* `burst`: all drivers send at once (the client's send loop), every 0.2 s; all frames awaited.

The pacing keeps every driver within the production rate limit (10 positions a second). Each
position carries its sample number in the last digits of `lon` (1e-6 degree steps), which every
variant passes through, so a frame is matched to its send. Variants run one after another in each
repeat, in a rotated order. Reported: p50/p90/p99/max per variant and mode (median over repeats),
and the median of per-repeat ratios to the bare relay. Goals (issue 9): the stack's p50 ≤ 2.0× and
p99 ≤ 2.5× the bare relay's, and its p50 below the FastAPI relay's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from sidecar.shell import lifetime

HERE = Path(__file__).resolve().parent
ROOT = common.ROOT
PY = sys.executable
BARE, FASTAPI, STACK, STACK_JOURNAL = "bare picows relay", "fastapi relay", "stack", "stack journal"
VARIANTS = [BARE, FASTAPI, STACK, STACK_JOURNAL]
MODES = ["one at a time", "burst"]


def stack_workers(variant: str) -> int:
    """The sidecar workers of a `stack N workers` variant; 1 for every other."""
    rest = variant.removeprefix(f"{STACK} ").removesuffix(" workers")
    return int(rest) if variant.startswith(f"{STACK} ") and variant.endswith(" workers") and rest.isdigit() else 1
LAT0, LON0 = 30.0, 68.78
PAIR_SPACING_DEG = 0.2  # ~22 km between pairs: each passenger is matched with its own driver only
TEXT = WSMsgType.TEXT


log = common.log


free_port = common.free_port


child_env = common.child_env


# ---- the client -------------------------------------------------------------------------------


class Timing:
    """What the passengers received, matched to the sends afterwards.

    A frame is timestamped and kept as bytes: nothing is decoded while a burst is arriving (a
    single-threaded client that parsed each frame would delay the timestamps of the next ones).
    """

    def __init__(self) -> None:
        self.sent: dict[tuple[int, int], int] = {}  # (pair, sample) -> send ns
        self.raw: list[tuple[int, int, bytes]] = []  # (pair, receive ns, payload)
        self.want = 0
        self.done = asyncio.Event()

    def expect(self, n: int) -> None:
        self.want = len(self.raw) + n
        self.done.clear()

    def arrived(self, pair: int, t: int, payload: bytes) -> None:
        self.raw.append((pair, t, payload))
        if len(self.raw) >= self.want:
            self.done.set()

    def take(self) -> list[int]:
        """Latencies (ns) of the received frames that match a send; empties both sides."""
        out = []
        for pair, t, payload in self.raw:
            lon = json.loads(payload)["lon"]
            sent = self.sent.pop((pair, round((lon - LON0) * 1e6)), None)
            if sent is not None:
                out.append(t - sent)
        self.raw.clear()
        self.sent.clear()
        return out


class Peer(WSListener):
    def __init__(self, timing: Timing, pair: int, passenger: bool) -> None:
        self.timing = timing
        self.pair = pair
        self.passenger = passenger
        self.msgs: list[dict] = []
        self.changed = asyncio.Event()
        self.transport: WSTransport | None = None
        self.auto_accept = False  # a driver that accepts every offer it gets
        self.worker = 0  # the sidecar worker that took the connection (X-Dgdo-Worker; 0: not a stack)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.worker = int(transport.response.headers.get("X-Dgdo-Worker", "0"))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        t = time.perf_counter_ns()
        if frame.msg_type is not TEXT:
            if frame.msg_type is WSMsgType.CLOSE:
                transport.disconnect()
            return
        data = frame.get_payload_as_bytes()
        if self.passenger and b'"driver_location"' in data:
            self.timing.arrived(self.pair, t, data)
            return
        m = json.loads(data)
        if self.auto_accept and m.get("type") == "new_order":
            self.send({"type": "order_accept", "order_id": m["order_id"], "id": f"a{m['order_id']}"})
        self.msgs.append(m)
        self.changed.set()

    def send(self, m: dict) -> None:
        assert self.transport is not None
        self.transport.send(TEXT, json.dumps(m).encode())

    async def expect(self, type_: str, timeout: float = 10, **fields: object) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for m in self.msgs[seen:]:
                if m.get("type") == type_ and all(m.get(k) == v for k, v in fields.items()):
                    self.msgs.remove(m)
                    return m
            seen = len(self.msgs)
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"pair {self.pair}: no {type_} {fields}; got {self.msgs[-5:]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    async def request(self, m: dict, answer: str = "ack") -> dict:
        self.send(m)
        return await self.expect(answer, id=m["id"])


def peer_factory(timing: Timing, pair: int, passenger: bool, auto_accept: bool = False):
    # (picows calls the factory with the request and response: no defaults to capture with)
    def make(*_: object) -> Peer:
        peer = Peer(timing, pair, passenger)
        peer.auto_accept = auto_accept
        return peer
    return make


def position(pair: int, sample: int) -> dict:
    return {"type": "driver_location", "lat": LAT0 + pair * PAIR_SPACING_DEG, "lon": LON0 + sample * 1e-6,
            "heading": 90.0, "speed_kmh": 30.0}


async def connect(port: int, role: str, prefix: str, pairs: int, timing: Timing, tokens: bool,
                  auto_accept: bool = False) -> list[Peer]:
    peers = []
    for i in range(pairs):
        app_id = f"{prefix}{i}"
        url = f"ws://127.0.0.1:{port}/ws/{role}/{app_id}"
        if tokens:
            url += f"?token={common.token(role, app_id)}"
        _tr, peer = await ws_connect(peer_factory(timing, i, role == "passenger", auto_accept), url,
                                     enable_auto_ping=False)
        peers.append(peer)
    for peer in peers:
        await peer.expect("welcome")
    return peers


# ---- the drivers' process ---------------------------------------------------------------------------
# The drivers send from their own process, so that a burst of 50 sends does not hold up the
# timestamps of the frames arriving at the passengers (one event loop would do one, then the
# other). perf_counter_ns is CLOCK_MONOTONIC: one clock for both processes.


async def drivers_main(args: argparse.Namespace) -> None:
    """`--drivers PORT`: N driver connections; commands on stdin, answers on stdout (one line each).

    Setup (stack only): every driver online at its pair's spot; it accepts any offer it gets.
    Commands: `b S` a burst (every driver sends, samples S+1...), `o I S` driver I sends sample S,
    `t` the send times since the last `t` ({"I,S": ns}), `q` quit.
    """
    loop = asyncio.get_running_loop()
    timing = Timing()
    drivers = await connect(args.drivers, "driver", "pd", args.pairs, timing, args.stack, auto_accept=args.stack)
    if args.stack:
        for i, d in enumerate(drivers):
            await d.request({"type": "driver_status", "status": "online", "id": "s"})
            await d.request({"type": "driver_location", "lat": LAT0 + i * PAIR_SPACING_DEG, "lon": LON0, "id": "l"})
    transports = [d.transport for d in drivers]
    sent: dict[str, int] = {}
    print("ready " + json.dumps([d.worker for d in drivers]), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).split():
        cmd = line[0]
        if cmd == b"b":
            s0 = int(line[1])
            payloads = [(i, s0 + i + 1, json.dumps(position(i, s0 + i + 1)).encode()) for i in range(len(drivers))]
            for i, smp, m in payloads:
                tr = transports[i]
                assert tr is not None
                sent[f"{i},{smp}"] = time.perf_counter_ns()
                tr.send(TEXT, m)
        elif cmd == b"o":
            i, smp = int(line[1]), int(line[2])
            m = json.dumps(position(i, smp)).encode()
            tr = transports[i]
            assert tr is not None
            sent[f"{i},{smp}"] = time.perf_counter_ns()
            tr.send(TEXT, m)
        elif cmd == b"t":
            print(json.dumps(sent), flush=True)
            sent = {}
        elif cmd == b"q":
            break
    for tr in transports:
        if tr is not None:
            tr.disconnect()


class Drivers:
    """The drivers' process, seen from the passengers' side."""

    def __init__(self, port: int, pairs: int, stack: bool, logf) -> None:
        cmd = [PY, str(Path(__file__).resolve()), "--drivers", str(port), "--pairs", str(pairs)]
        self.proc = subprocess.Popen([*cmd, *(["--stack"] if stack else [])], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=logf, env=child_env(), cwd=str(ROOT))

    async def line(self, timeout: float = 60) -> bytes:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), timeout)

    def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    async def ready(self) -> list[int]:
        """Waits for the drivers' process; the sidecar worker of each driver."""
        line = await self.line()
        if not line.startswith(b"ready "):
            raise RuntimeError(f"drivers did not come up: {line!r}")
        return json.loads(line[6:])

    async def times(self, into: dict[tuple[int, int], int]) -> None:
        self.command("t")
        for key, t in json.loads(await self.line(10)).items():
            i, smp = key.split(",")
            into[(int(i), int(smp))] = t

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.command("q")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def request_rides(passengers: list[Peer]) -> None:
    """Each passenger asks for a ride at its pair's spot; its driver (the only one within reach)
    gets the offer and accepts it (drivers_main): from then on its positions go to this passenger."""
    for i, p in enumerate(passengers):
        lat = LAT0 + i * PAIR_SPACING_DEG
        ack = await p.request({"type": "ride_request", "id": "r", "pickup": {"lat": lat + 0.002, "lon": LON0},
                               "dropoff": {"lat": lat + 0.02, "lon": LON0 + 0.02}})
        await p.expect("order_update", order_id=ack["order_id"], status="accepted")


async def measure(drivers: Drivers, n: int, timing: Timing, singles: int, bursts: int,
                  gap_s: float, interval_s: float) -> dict[str, list[int]]:
    loop = asyncio.get_running_loop()
    sample = 0
    out: dict[str, list[int]] = {}

    async def wait(timeout: float = 2.0) -> None:
        with contextlib.suppress(TimeoutError):  # a lost frame is simply not a sample
            await asyncio.wait_for(timing.done.wait(), timeout)

    def burst() -> None:
        nonlocal sample
        timing.expect(n)
        drivers.command(f"b {sample}")
        sample += n

    # Warm-up: every pair twice (the first position after the accept also moves the order to arriving).
    for _ in range(2):
        burst()
        await wait(5)
        await asyncio.sleep(interval_s)
    await drivers.times(timing.sent)
    timing.take()

    for k in range(singles):
        sample += 1
        timing.expect(1)
        drivers.command(f"o {k % n} {sample}")
        await wait()
        await asyncio.sleep(gap_s)
    await drivers.times(timing.sent)
    out["one at a time"] = timing.take()

    next_at = loop.time()
    for _ in range(bursts):
        next_at += interval_s
        burst()
        await wait()
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    await drivers.times(timing.sent)
    out["burst"] = timing.take()
    return out


# ---- the servers ----------------------------------------------------------------------------------


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {port}")
        time.sleep(0.02)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            if r.status == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise TimeoutError("engine + sidecar did not come up")
        time.sleep(0.05)


def pinned(cpus: str):
    """A preexec_fn that pins the child to CPUS ("1" or "0,1"), as `taskset -c` does; None for no pinning."""
    if not cpus:
        return None
    pin = {int(c) for c in cpus.split(",")}
    return lambda: os.sched_setaffinity(0, pin)


AFFINITY: dict[str, list[int]] = {}  # variant -> the CPUs its server's processes may run on (the report's)


def affinity(pid: int) -> list[int]:
    """The CPUs the server and its children (a stack's engine) may run on, as the kernel has them."""
    import psutil

    server = psutil.Process(pid)
    cpus = set(server.cpu_affinity())
    for child in server.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # a child that ended meanwhile (a snapshot's fork)
            cpus.update(child.cpu_affinity())
    return sorted(cpus)


def start_server(variant: str, port: int, logf, state: Path, extra: list[str],
                 env: dict[str, str] | None = None, server_cpus: str = "") -> subprocess.Popen:
    if variant in (BARE, FASTAPI):
        kind = "picows" if variant == BARE else "fastapi"
        proc = subprocess.Popen([PY, str(HERE / "relays.py"), "--kind", kind, "--port", str(port)],
                                env=child_env(), stdout=logf, stderr=logf, cwd=str(ROOT),
                                preexec_fn=pinned(server_cpus))
        wait_port(port, proc)
        return proc
    journal = ["--no-journal"] if variant != STACK_JOURNAL else ["--state-dir", str(state / f"j{port}")]
    workers = stack_workers(variant)
    dgdo = (env or {}).pop("DGDO_BENCH_DGDO", "") or str(Path(PY).with_name("dgdo"))
    cpus = (env or {}).pop("DGDO_BENCH_CPUS", "") or server_cpus
    proc = subprocess.Popen([dgdo, "run", "--no-demo", "--port", str(port),
                             "--instance", f"pp{os.getpid()}x{port}", "--status-interval", "0",
                             "--log-level", "WARNING", *journal, *extra,
                             *(["--workers", str(workers)] if workers > 1 else [])],
                            env={**child_env(), **(env or {})}, stdout=logf, stderr=logf, cwd=str(ROOT),
                            preexec_fn=pinned(cpus))
    wait_healthy(port, proc)
    if workers > 1:  # every worker attached before a client connects
        from bench.workers import wait_workers

        wait_workers(port, common.token("admin", "bench"), workers, alive=lambda: proc.poll() is None)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def run_variant(variant: str, args: argparse.Namespace, logf, state: Path,
                      rep: int) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Latencies (ns) per mode, and the pairs' placement over workers (`stack N workers`)."""
    port = free_port()
    config = args.configs.get(variant)
    stack = variant in (STACK, STACK_JOURNAL) or stack_workers(variant) > 1 or config is not None
    extra = ["--idle-spin-us", str(args.idle_spin_us)] if stack and args.idle_spin_us is not None else []
    extra += args.stack_args.split() if stack else []
    env = {}
    if config is not None:  # `stack NAME` (--configs): KEY=VALUE words set the environment, the rest are options
        words = config.split()
        env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
        extra += [w for w in words if "=" not in w or w.startswith("-")]
        if "cpus" in env:  # as `taskset -c` / systemd's CPUAffinity=: the engine and the sidecar on these CPUs
            env["DGDO_BENCH_CPUS"] = env.pop("cpus")
        if "dgdo" in env:  # another build's `dgdo` (e.g. the main checkout's venv): old and new in one run
            env["DGDO_BENCH_DGDO"] = env.pop("dgdo")
    proc = start_server(STACK if config is not None else variant, port, logf, state, extra, env, args.server_cpus)
    AFFINITY[variant] = affinity(proc.pid)
    timing = Timing()
    prof = drivers = None
    passengers: list[Peer] = []
    try:
        drivers = Drivers(port, args.pairs, stack, logf)
        driver_workers = await drivers.ready()
        passengers = await connect(port, "passenger", "pp", args.pairs, timing, tokens=stack)
        placement = {}
        if stack_workers(variant) > 1:
            cross = sum(d != p.worker for d, p in zip(driver_workers, passengers, strict=True))
            placement = {"pairs_on_two_workers": cross, "pairs_on_one_worker": args.pairs - cross}
        if stack:
            await request_rides(passengers)
        if args.profile and stack:
            pyspy = Path(PY).with_name("py-spy")
            if pyspy.exists():
                dest = Path(args.profile) / f"pyspy-passenger-path-{variant.replace(' ', '-')}-r{rep}.txt"
                prof = subprocess.Popen([str(pyspy), "record", "-p", str(proc.pid), "-d", "60", "-r", "1000",
                                         "--format", "raw", "-o", str(dest), "--nonblocking"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = scrape_link(port) if stack else {}
        got = await measure(drivers, args.pairs, timing, args.singles, args.bursts, args.gap_s, args.interval_s)
        if stack:
            after = scrape_link(port)
            placement = {**placement, **{k: after[k] - (0 if k.endswith("_seconds") else before.get(k, 0))
                                         for k in after}}
        return got, placement
    finally:
        for p in passengers:
            if p.transport is not None:
                p.transport.disconnect()
        if drivers is not None:
            drivers.stop()
        if prof is not None:
            prof.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                prof.wait(10)
        stop(proc)


def scrape_link(port: int) -> dict[str, float]:
    """The sidecar's wake-up and spin counters (its /metrics): how the one-at-a-time path was served."""
    want = ("dgdo_doorbell_wakeups", "dgdo_reply_spins", "dgdo_reply_spin_hits", "dgdo_reply_spin_budget_seconds")
    out: dict[str, float] = {}
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            name = line.split("{")[0].split(" ")[0]
            if name.removesuffix("_total") in want:
                out[name.removesuffix("_total")] = out.get(name.removesuffix("_total"), 0) + float(line.split()[-1])
    return out


# ---- report ---------------------------------------------------------------------------------------


def pct(ns: list[int]) -> dict:
    if not ns:
        return {"n": 0}
    v = common.percentiles(ns, (50, 90, 99))
    return {"n": len(ns), "p50": v[0] / 1e3, "p90": v[1] / 1e3, "p99": v[2] / 1e3, "max": max(ns) / 1e3}


def analyse(per_rep: dict[tuple[str, str, int], dict], variants: list[str], repeats: int) -> list[dict]:
    rows = []
    for mode in MODES:
        for v in variants:
            runs = [per_rep[(v, mode, r)] for r in range(repeats) if per_rep.get((v, mode, r), {}).get("n")]
            if not runs:
                continue
            row = {"variant": v, "mode": mode, "n": sum(r["n"] for r in runs), "repeats": runs}
            for k in ("p50", "p90", "p99", "max"):
                row[k] = statistics.median(r[k] for r in runs)
            for base, tag in ((BARE, "bare"), (FASTAPI, "fastapi"), (STACK, "stack")):
                pairs = [(per_rep[(v, mode, r)], per_rep[(base, mode, r)]) for r in range(repeats)
                         if per_rep.get((v, mode, r), {}).get("n") and per_rep.get((base, mode, r), {}).get("n")]
                for k in ("p50", "p99"):
                    ratios = [a[k] / b[k] for a, b in pairs]
                    row[f"{k}_x_{tag}_per_repeat"] = ratios
                    row[f"{k}_x_{tag}"] = statistics.median(ratios) if ratios else None
            rows.append(row)
    return rows


def goals(rows: list[dict]) -> list[str]:
    out = []
    for mode in MODES:
        st = next((r for r in rows if r["variant"] == STACK and r["mode"] == mode), None)
        if st is None or st.get("p50_x_bare") is None:
            continue
        g50, g99 = st["p50_x_bare"] <= 2.0, st["p99_x_bare"] <= 2.5
        fa = st.get("p50_x_fastapi")
        vs_fastapi = ("FastAPI relay not run" if fa is None else
                      f"p50 {fa:.2f}× FastAPI's (goal < 1: {'met' if fa < 1.0 else 'MISSED'})")
        out.append(f"{mode}: stack p50 {st['p50_x_bare']:.2f}× bare (goal ≤ 2.0: {'met' if g50 else 'MISSED'}), "
                   f"p99 {st['p99_x_bare']:.2f}× (goal ≤ 2.5: {'met' if g99 else 'MISSED'}), {vs_fastapi}")
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "## The path passengers feel: driver_location sent → passenger's frame received",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
        f"load avg at start {m['loadavg_at_start']}",
        f"{res['pairs']} driver/passenger pairs; {res['repeats']} repeats; per repeat and variant {res['singles']} "
        f"sends one at a time ({res['gap_s'] * 1e3:g} ms apart) and {res['bursts']} bursts of {res['pairs']} "
        f"(every {res['interval_s']:g} s). µs, median over repeats; ×bare / ×FastAPI = median of per-repeat ratios.",
        *([f"Every server pinned to CPU {res['server_cpus']} (the relays; the stacks' engine and sidecar), "
           "the clients not."] if res.get("server_cpus") else []),
        "",
        "| variant | mode | n | p50 | p90 | p99 | max | p50 ×bare | p99 ×bare | p50 ×FastAPI | p50 ×bare per repeat |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    for r in res["rows"]:
        per = ", ".join(f"{x:.2f}" for x in r.get("p50_x_bare_per_repeat", []))
        lines.append(f"| {r['variant']} | {r['mode']} | {r['n']} | {r['p50']:.0f} | {r['p90']:.0f} | {r['p99']:.0f} | "
                     f"{r['max']:.0f} | {f(r.get('p50_x_bare'))} | {f(r.get('p99_x_bare'))} | "
                     f"{f(r.get('p50_x_fastapi'))} | {per} |")
    if res["goals"]:
        lines += ["", *[f"- {g}" for g in res["goals"]]]
    many = [r for r in res["rows"] if stack_workers(r["variant"]) > 1]
    if many:
        lines += ["", "N sidecar workers (`dgdo run --workers N`) against 1 (`stack`), same run; ratios: median of "
                      "per-repeat ratios. Pairs with the driver and the passenger on two workers / on one (the "
                      "kernel's choice), per repeat: "
                      + "; ".join(f"{p['pairs_on_two_workers']} / {p['pairs_on_one_worker']}"
                                  for p in res.get("placement", [])), "",
                  "| variant | mode | p50 | p99 | p50 × 1 worker | p99 × 1 worker |", "|---|---|---:|---:|---:|---:|"]
        for r in many:
            lines.append(f"| {r['variant']} | {r['mode']} | {r['p50']:.0f} | {r['p99']:.0f} | "
                         f"{f(r.get('p50_x_stack'))} | {f(r.get('p99_x_stack'))} |")
    if res["failures"]:
        lines += ["", "Failed runs (left out): " + "; ".join(f"rep {f['repeat']} {f['variant']}: {f['error']}"
                                                         for f in res["failures"])]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    if args.smoke:
        d = {"repeats": 1, "pairs": 4, "singles": 12, "bursts": 3}
    elif args.quick:
        d = {"repeats": 3, "pairs": 50, "singles": 200, "bursts": 10}
    else:
        d = {"repeats": 5, "pairs": 50, "singles": 400, "bursts": 20}
    for k, v in d.items():
        if not getattr(args, k):
            setattr(args, k, v)
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    args.configs = {}
    for spec in filter(None, (x.strip() for x in args.stack_configs.split(";"))):
        name, _, opts = spec.partition("=")
        args.configs[f"{STACK} {name.strip()}"] = opts
        variants.append(f"{STACK} {name.strip()}")
    if STACK in variants:  # N workers beside one, for the ratio
        at = variants.index(STACK) + 1
        variants[at:at] = [f"{STACK} {w} workers" for w in (int(x) for x in args.workers.split(",")) if w > 1]
    out_dir = Path(args.out) if args.out else ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out_dir / f"passenger-path-{stamp}{'-smoke' if args.smoke else ''}"
    machine = common.machine()
    log(f"[path] {len(variants)} variants × {args.repeats} repeats, {args.pairs} pairs; logs in {base}.log")
    per_rep: dict[tuple[str, str, int], dict] = {}
    failures = []
    placement: list[dict[str, int]] = []
    link_counters: list[dict] = []  # the stack sidecar's wake-ups and reply spins over each measurement
    state = out_dir / f".state-path-{stamp}"
    with contextlib.ExitStack() as cleanup, open(f"{base}.log", "wb") as logf:
        cleanup.callback(shutil.rmtree, state, True)
        for rep in range(args.repeats):
            order = variants[rep % len(variants):] + variants[: rep % len(variants)]
            for v in order:
                t0 = time.monotonic()
                try:
                    got, placed = await run_variant(v, args, logf, state, rep)
                except Exception as e:  # one broken variant must not lose the others
                    log(f"[path] rep {rep + 1} {v}: FAILED ({type(e).__name__}: {e})")
                    failures.append({"repeat": rep + 1, "variant": v, "error": f"{type(e).__name__}: {e}"})
                    continue
                counters = {k: placed.pop(k) for k in list(placed) if k.startswith("dgdo_")}
                if placed:
                    placement.append(placed)
                if counters:
                    link_counters.append({"variant": v, "repeat": rep + 1, **counters})
                    log(f"[path] rep {rep + 1} {v}: " + ", ".join(f"{k.removeprefix('dgdo_')} {n:g}"
                                                                  for k, n in counters.items()))
                for mode, ns in got.items():
                    per_rep[(v, mode, rep)] = s = pct(ns)
                    if s.get("n"):
                        log(f"[path] rep {rep + 1} {v:18s} {mode:13s} n={s['n']:5d} p50={s['p50']:7.0f} "
                            f"p99={s['p99']:7.0f} max={s['max']:7.0f} µs ({time.monotonic() - t0:.1f} s)")
    rows = analyse(per_rep, variants, args.repeats)
    res = {"machine": machine, "argv": sys.argv[1:], "repeats": args.repeats, "pairs": args.pairs,
           "singles": args.singles, "bursts": args.bursts, "gap_s": args.gap_s, "interval_s": args.interval_s,
           "idle_spin_us": args.idle_spin_us, "server_cpus": args.server_cpus, "server_affinity": AFFINITY,
           "rows": rows, "goals": goals(rows), "failures": failures,
           "workers": args.workers, "placement": placement, "link_counters": link_counters}
    md = markdown(res)
    Path(f"{base}.json").write_text(json.dumps(res, indent=1))
    Path(f"{base}.md").write_text(md)
    print(md)
    log(f"[path] wrote {base}.md, {base}.json")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 repeats, 200 single sends and 10 bursts each")
    ap.add_argument("--smoke", action="store_true", help="1 repeat, 4 pairs: for tests")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=0)
    ap.add_argument("--singles", type=int, default=0, help="one-at-a-time sends per variant and repeat")
    ap.add_argument("--bursts", type=int, default=0, help="bursts per variant and repeat")
    ap.add_argument("--gap-s", type=float, default=0.002, help="pause between one-at-a-time sends")
    ap.add_argument("--interval-s", type=float, default=0.2, help="between bursts (a driver's positions: 5/s)")
    ap.add_argument("--variants", default="", help=f"comma list of: {', '.join(VARIANTS)}")
    ap.add_argument("--out", default="", help="output directory (default bench/results)")
    ap.add_argument("--profile", default="", help="directory for py-spy profiles of the stack's sidecar")
    ap.add_argument("--idle-spin-us", type=float, default=None, help="passed to the stack's sidecar")
    ap.add_argument("--stack-configs", default="",
                    help="more stack variants, `NAME=OPTIONS;...`: `stack NAME` runs `dgdo run` with OPTIONS; "
                         "KEY=VALUE words go to its environment, but for cpus=LIST (the engine and the sidecar "
                         "pinned there, as taskset -c) and dgdo=PATH (another build's dgdo, e.g. "
                         "/work/main/.venv/bin/dgdo: old and new side by side); e.g. 'nospin=--reply-spin-us 0'")
    ap.add_argument("--stack-args", default="", help="more `dgdo run` options for the stack variants, e.g. "
                                                    "'--reply-spin-us 0 --spin-us 100'")
    ap.add_argument("--server-cpus", default="", metavar="LIST",
                    help="every server (the relays, the stacks' engine and sidecar) pinned to these CPUs, as "
                         "taskset -c; a stack config's own cpus=LIST wins (e.g. --server-cpus 1 "
                         "--stack-configs 'unpinned=cpus=0,1')")
    ap.add_argument("--workers", default="1", help="1,N adds `stack N workers` (dgdo run --workers N) beside `stack`, "
                                                  "with the ratio (default 1: none)")
    ap.add_argument("--drivers", type=int, default=0, help=argparse.SUPPRESS)  # the drivers' process: its port
    ap.add_argument("--stack", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drivers:
        lifetime.die_with_parent_from_env()
        return uvloop.run(drivers_main(args)) or 0
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
