"""Assignment-to-push latency: the ring-fed sidecar against the feeds a team would reach for.

    .venv/bin/python bench/latency/run.py [--quick | --smoke] [--repeats N] [--seconds S]

What is measured (all on 127.0.0.1, one host, CLOCK_REALTIME on both ends):

* `ring`: the production sidecar process (`dgdo sidecar --control ...`),
  attached over the real control socket and shm rings to feeder.py, which
  plays the engine's side of the rings. Latency = the driver client's
  `time.time_ns()` when the frame arrives - the commit stamp the engine side
  wrote into the record (carried to the client in `order_id`, see common.py).
* `zmq ipc`, `unix socket`, `stdout pipe`, `http POST`: the same sidecar code
  (App: bridge, registry, encode, picows) fed the same record batches over
  that transport (alt_sidecar.py), by the same feeder.
* `ring spin`, `unix socket spin`: the same two feeds with the sidecar's idle
  strategy on (`--idle-spin-us`, default 2000 here: sidecar/engine/idle.py): after
  work it polls the ring (the socket) for that long before parking on the doorbell
  (epoll). The `sidecar CPU %` column says what that costs.
* `fastapi+zmq`: FastAPI/uvicorn WebSocket server with the same bridge, fed
  by ZeroMQ (fastapi_sidecar.py).
* `engine e2e`: the real engine + sidecar (`dgdo run --no-demo`): passenger
  sends ride_request -> driver holds new_order (client clock only; includes
  the inbound hop and matching). The sidecar does not expose the engine's
  commit ns to apps, so engine-commit -> driver for the real engine is taken
  from the rows above.
* `e2e journal never|interval|batch`: the same, with the engine journaling every input into a
  fresh state dir under that fsync policy (`--state-dir`, `--fsync`): what durability costs on
  the path a passenger feels, side by side with `engine e2e` (no journal) in one run.
* `engine e2e N workers` (`--workers 1,N`): `engine e2e` with `dgdo run --workers N`, the driver
  and the passenger on two different workers (the passenger reconnects until the kernel puts it
  on another worker than the driver's: the `X-Dgdo-Worker` header of its 101), so the request
  goes in through one worker's ring and the offer out through another's. Reported beside
  `engine e2e` with the ratio of the same repeat.

`--pin`: every sidecar the runner starts for a feed gets a CPU of its own (the last one the runner
may use) and everything else (the runner and its clients, the feeders) the others, as an
operator gives a spinning sidecar its core (`CPUAffinity=`; README "Idle strategy"). Unpinned on a
small machine, the clients' process is woken on the CPU of the sidecar that writes to it (a TCP
wake-up is a "sync" one: the kernel places the woken task beside its waker when that CPU has
nothing else to run, which a sidecar that never sleeps always looks like), and there preempts
it at each write of a batch. `engine e2e` rows run `dgdo run` on every CPU either way.

Phases: idle = ~1k offers/s; load = ~10k offers/s + ~10k driver positions/s
(engine batches every 1 ms). Variants run one after another in each repeat,
in a rotated order; the table gives medians over repeats and the median of
per-repeat ratios against `ring` (side by side in one run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import psutil
import uvloop
from picows import WSListener, WSMsgType, WSTransport, ws_connect

from sidecar.engine.link import socket_address

HERE = Path(__file__).resolve().parent
ROOT = common.ROOT
PY = sys.executable
RESULTS = ROOT / "bench" / "results"
VARIANTS = ["ring", "ring spin", "zmq ipc", "unix socket", "unix socket spin", "stdout pipe", "http POST",
            "fastapi+zmq"]
# The "spin" variants: the sidecar's idle strategy on (--idle-spin-us, sidecar/engine/idle.py), for the
# ring and, with the same strategy, the UNIX socket. The default budget outlasts the feeder's 1 ms
# batches: an awake consumer, which is what the ring's ~1 µs hop needs to show.
SPIN_US = 2000.0
E2E = "engine e2e"
# The same path with the engine journaling every input, per fsync policy (DESIGN §7).
E2E_JOURNAL = {"e2e journal never": "never", "e2e journal interval": "interval", "e2e journal batch": "batch"}
PCTS = (50, 90, 99, 99.9)


def e2e_name(workers: int) -> str:
    return E2E if workers == 1 else f"{E2E} {workers} workers"


def e2e_workers(variant: str) -> int | None:
    """The sidecar workers of an `engine e2e` variant (1, or N of `engine e2e N workers`); None if not one."""
    if variant == E2E:
        return 1
    rest = variant.removeprefix(f"{E2E} ").removesuffix(" workers")
    return int(rest) if variant.startswith(f"{E2E} ") and variant.endswith(" workers") and rest.isdigit() else None


log = common.log


free_port = common.free_port


# ---- processes ---------------------------------------------------------------------------------


@dataclass
class Stack:
    """The processes of one variant."""

    procs: list[subprocess.Popen] = field(default_factory=list)
    port: int = 0
    cmd_path: str = ""
    sidecar: subprocess.Popen | None = None  # the process that serves the WebSocket clients
    sidecars: list[subprocess.Popen] = field(default_factory=list)  # every worker's ("ring", workers > 1)
    metrics_ports: list[int] = field(default_factory=list)  # each worker's --metrics-port (workers > 1)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# Every socket of the bench is a Linux abstract name ("@..."), every ring a memfd, and every process
# it starts ends with it (sidecar/lifetime.py): killed by any signal, the bench leaves nothing behind.
TAG = f"@dgdo-bench-{os.getpid()}"


child_env = common.child_env


@dataclass(frozen=True)
class Pinning:
    """`--pin`: the CPU each feed's sidecar runs on alone, and the CPUs of everything else."""

    sidecar: frozenset[int]
    others: frozenset[int]
    every: frozenset[int]

    @classmethod
    def split(cls, cpus: set[int]) -> Pinning:
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        last = max(cpus)
        return cls(frozenset({last}), frozenset(cpus - {last}), frozenset(cpus))

    def sidecar_preexec(self):
        return lambda: os.sched_setaffinity(0, self.sidecar)

    def every_preexec(self):
        return lambda: os.sched_setaffinity(0, self.every)


PIN: Pinning | None = None  # set by main_async with --pin; the runner itself then runs on `others`
SIDECAR_CPUS: dict[str, list[int]] = {}  # variant -> the CPUs its sidecar may run on, as the kernel reports them


def start_stack(variant: str, logf, spin_us: float = SPIN_US, sidecar_args: tuple[str, ...] = (),
                workers: int = 1, sidecar_root: Path = ROOT) -> Stack:
    """The processes of `variant`; `sidecar_args` go to the production sidecar ("ring": bench/tls adds TLS).
    "ring" with `workers` > 1: that many sidecars (`--worker 1..N`) on the one port (SO_REUSEPORT), each
    with its own `--metrics-port`, all attached to the one feeder (bench/push). `sidecar_root`: the
    checkout whose `sidecar` package runs ("ring"; bench/push --baseline: the previous implementation)."""
    port = free_port()
    spin = ["--idle-spin-us", f"{spin_us:g}"] if variant.endswith(" spin") else []
    variant = variant.removesuffix(" spin")
    cmd_path = f"{TAG}-feeder-{port}"
    st = Stack(port=port, cmd_path=cmd_path)
    feeder = [PY, str(HERE / "feeder.py"), "--cmd", cmd_path]
    kw = {"env": child_env(), "stderr": logf, "cwd": str(ROOT)}
    # The sidecar's own CPU under --pin; the feeders inherit the runner's (the others).
    side_kw = {**kw, "preexec_fn": PIN.sidecar_preexec()} if PIN is not None else kw
    if variant == "ring":
        control = f"{TAG}-engine-{port}"
        inst = f"bench{os.getpid()}p{port}"
        st.procs.append(subprocess.Popen([*feeder, "--transport", "ring", "--control", control, "--instance", inst,
                                          "--workers", str(workers)], stdout=subprocess.DEVNULL, **kw))
        _wait_path(control)
        for w in range(1, workers + 1):
            mp = free_port()  # --metrics-port is a base: worker w serves on base + w - 1 (shell/ports.py)
            own = ["--worker", str(w), "--metrics-port", str(mp - w + 1)] if workers > 1 else []
            st.procs.append(subprocess.Popen([PY, "-m", "sidecar", "sidecar", "--control", control, "--port", str(port),
                                              "--status-interval", "0", "--log-level", "WARNING",
                                              "--idle-spin-us", spin[1] if spin else "0", *own, *sidecar_args],
                                             stdout=subprocess.DEVNULL, **{**side_kw, "cwd": str(sidecar_root)}))
            st.sidecars.append(st.procs[-1])
            if own:
                st.metrics_ports.append(mp)
        st.sidecar = st.procs[-1]
        for mp in st.metrics_ports:  # every worker attached and listening before a client connects
            _wait_healthy(mp)
    elif variant == "stdout pipe":
        f = subprocess.Popen([*feeder, "--transport", "pipe"], stdout=subprocess.PIPE, **kw)
        st.procs.append(f)
        st.procs.append(subprocess.Popen([PY, str(HERE / "alt_sidecar.py"), "--feed", "pipe", "--port", str(port)],
                                         stdin=f.stdout, stdout=subprocess.DEVNULL, **side_kw))
        st.sidecar = st.procs[-1]
        assert f.stdout is not None
        f.stdout.close()  # the sidecar holds the read end now
    else:
        if variant == "zmq ipc" or variant == "fastapi+zmq":
            transport, endpoint = "zmq", f"ipc://{TAG}-zmq-{port}"  # libzmq takes "@" as abstract too
        elif variant == "unix socket":
            transport, endpoint = "unix", f"{TAG}-feed-{port}"
        else:
            transport, endpoint = "http", f"127.0.0.1:{free_port()}"
        if variant == "fastapi+zmq":
            side = [PY, str(HERE / "fastapi_sidecar.py"), "--endpoint", endpoint, "--port", str(port)]
        else:
            side = [PY, str(HERE / "alt_sidecar.py"), "--feed", transport, "--endpoint", endpoint, "--port", str(port),
                    *spin]
        st.procs.append(subprocess.Popen(side, stdout=subprocess.DEVNULL, **side_kw))
        st.sidecar = st.procs[-1]
        _wait_port(port)
        st.procs.append(subprocess.Popen([*feeder, "--transport", transport, "--endpoint", endpoint],
                                         stdout=subprocess.DEVNULL, **kw))
    _wait_port(port)
    _wait_path(cmd_path)
    return st


def _listening(path: str) -> bool:
    if not path.startswith("@"):
        return os.path.exists(path)
    with open("/proc/net/unix") as f:  # abstract names are no files: the kernel's table lists them
        return any(line.rstrip().endswith(" " + path) for line in f)


def _wait_path(path: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not _listening(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.02)


def _wait_healthy(port: int, timeout: float = 20) -> None:
    """/healthz on `port` answers 200: the worker is attached (polling: another process's endpoint)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            if r.status == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"/healthz on {port} never answered 200")
        time.sleep(0.05)


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} not listening")
        time.sleep(0.02)


# ---- clients -----------------------------------------------------------------------------------


class Sink(WSListener):
    """Keeps (receive ns, payload) and decodes nothing until the phase is over."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.welcomed = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        t = time.time_ns()
        if frame.msg_type is WSMsgType.TEXT or frame.msg_type is WSMsgType.BINARY:
            self.frames.append((t, frame.get_payload_as_bytes()))
            if not self.welcomed.done():
                self.welcomed.set_result(None)


async def connect(port: int, role: str, app_id: str, listener_factory) -> tuple[WSTransport, WSListener]:
    url = f"ws://127.0.0.1:{port}/ws/{role}/{app_id}?token={common.token(role, app_id)}"
    return await ws_connect(listener_factory, url)


class Feeder:
    def __init__(self, path: str) -> None:
        self.path = path

    async def open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(socket_address(self.path))  # uvloop cannot connect to abstract names itself; local: instant
        self.reader, self.writer = await asyncio.open_unix_connection(sock=sock)

    async def call(self, spec: dict) -> dict:
        self.writer.write((json.dumps(spec) + "\n").encode())
        await self.writer.drain()
        return json.loads(await self.reader.readline())

    async def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not (await self.call({"cmd": "ready?"}))["ready"]:
            if time.monotonic() > deadline:
                raise TimeoutError("engine side never attached")
            await asyncio.sleep(0.05)

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b'{"cmd": "quit"}\n')
            await self.writer.drain()
            self.writer.close()


def harvest(sinks: list[Sink]) -> tuple[list[int], list[int]]:
    """Offer and position latencies (ns) from what the clients hold; empties the sinks."""
    offers: list[int] = []
    positions: list[int] = []
    for s in sinks:
        frames, s.frames = s.frames, []
        for t, payload in frames:
            m = json.loads(payload)
            ty = m.get("type")
            if ty == "new_order":
                offers.append(t - m["order_id"])
            elif ty == "driver_location":
                positions.append(t - m["order_id"])
    return offers, positions


def start_profile(variant: str, st: Stack, phase: str, seconds: float, out: Path | None) -> subprocess.Popen | None:
    """py-spy on the sidecar process of the `ring` variant during one phase (--profile DIR)."""
    pyspy = Path(PY).with_name("py-spy")
    if out is None or not variant.startswith("ring") or not pyspy.exists():
        return None
    sidecar = st.procs[-1].pid
    dest = out / f"pyspy-{variant.replace(' ', '-')}-{phase}-{sidecar}.txt"
    return subprocess.Popen([str(pyspy), "record", "-p", str(sidecar), "-d", str(max(1, int(seconds))), "-r", "1000",
                             "--format", "raw", "-o", str(dest), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run_variant(variant: str, phases: list[dict], logf, n_clients: int,
                      profile: Path | None = None, spin_us: float = SPIN_US) -> dict[str, dict]:
    st = start_stack(variant, logf, spin_us)
    out: dict[str, dict] = {}
    transports: list[WSTransport] = []
    try:
        sinks: list[Sink] = []
        for i in range(n_clients):
            for role, app_id in (("driver", common.driver_id(i)), ("passenger", common.passenger_id(i))):
                tr, li = await connect(st.port, role, app_id, Sink)
                transports.append(tr)
                sinks.append(li)
        await asyncio.wait_for(asyncio.gather(*(s.welcomed for s in sinks)), 20)
        feeder = Feeder(st.cmd_path)
        await feeder.open()
        await feeder.wait_ready()
        await asyncio.sleep(0.3)  # session opens and attach settle
        harvest(sinks)
        for ph in phases:
            spec = {**ph, "drivers": n_clients, "passengers": n_clients}
            prof = start_profile(variant, st, ph["name"], ph["seconds"], profile)
            side_proc = psutil.Process(st.sidecar.pid) if st.sidecar is not None else None
            if side_proc is not None:
                SIDECAR_CPUS[variant] = sorted(side_proc.cpu_affinity())
            cpu0 = sum(side_proc.cpu_times()[:2]) if side_proc is not None else 0.0
            # Preemptions (the kernel's involuntary context switches of its main thread): a sidecar that
            # another process takes the CPU from in the middle of a batch, what --pin is about.
            pre0 = side_proc.num_ctx_switches().involuntary if side_proc is not None else 0
            sent = await feeder.call(spec)
            took = float(sent.get("seconds") or spec["seconds"])
            cpu_pct = 100 * (sum(side_proc.cpu_times()[:2]) - cpu0) / took if side_proc is not None else None
            preempted = (side_proc.num_ctx_switches().involuntary - pre0) / took if side_proc is not None else None
            if prof is not None:
                await asyncio.get_running_loop().run_in_executor(None, prof.wait)
            await asyncio.sleep(0.25)  # stragglers
            offers, positions = harvest(sinks)
            out[ph["name"]] = {"offers": offers, "positions": positions, "sent": sent, "sidecar_cpu_pct": cpu_pct,
                               "sidecar_preempted_per_s": preempted,
                               "sidecar_push": scrape_push(st.port) if variant != "fastapi+zmq" else {}}
        await feeder.quit()
    finally:
        for tr in transports:
            with contextlib.suppress(Exception):
                tr.disconnect()
        st.stop()
    return out


_push_seen: dict[int, dict[float, float]] = {}  # port -> the push histogram's cumulative buckets at the last scrape


def scrape_push(port: int) -> dict[str, float]:
    """The sidecar's own engine-commit -> socket-write latency for the pushes since the last call on
    this port, from its /metrics histogram: p50 and p99 (µs) estimated as PromQL's histogram_quantile
    does (linear within the bucket), so only as fine as the buckets (10, 25, 50, 100, 250 µs ...)."""
    now: dict[float, float] = {}
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("dgdo_push_latency_seconds_bucket{"):
                le = line.split('le="')[1].split('"')[0]
                now[float(le)] = float(line.split()[-1])
    before = _push_seen.get(port, {})
    _push_seen[port] = now
    cumulative = sorted((le, n - before.get(le, 0.0)) for le, n in now.items())
    total = cumulative[-1][1] if cumulative else 0.0
    push: dict[str, float] = {}
    if total <= 0:
        return push
    for q in (0.5, 0.99):
        rank, lower, below = q * total, 0.0, 0.0
        for le, n in cumulative:
            if n >= rank:
                upper = le if le != math.inf else lower
                push[f"p{q * 100:g}"] = (lower + (upper - lower) * (rank - below) / max(n - below, 1e-9)) * 1e6
                break
            lower, below = le, n
    return push


# ---- the real engine, end to end ----------------------------------------------------------------


class E2EClient(WSListener):
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.waiters: dict[tuple, asyncio.Future] = {}
        self.welcomed = self.loop.create_future()
        self.closed = ""

    def expect(self, key: tuple) -> asyncio.Future:
        f = self.loop.create_future()
        self.waiters[key] = f
        return f

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        t = time.time_ns()
        if frame.msg_type is WSMsgType.CLOSE:  # (said when a step times out: a 4001 is an answer)
            self.closed = f"closed {frame.get_close_code()} {frame.get_close_message()!r}"
        if frame.msg_type is not WSMsgType.TEXT:
            return
        m = json.loads(frame.get_payload_as_bytes())
        ty = m.get("type")
        if ty == "welcome" and not self.welcomed.done():
            self.welcomed.set_result(m)
        for key in ((ty, m.get("id")), (ty, m.get("order_id")), (ty, None)):
            f = self.waiters.pop(key, None)
            if f is not None and not f.done():
                f.set_result((t, m))
                return


def _send(tr: WSTransport, m: dict) -> None:
    tr.send(WSMsgType.TEXT, json.dumps(m).encode())


def worker_of(tr: WSTransport) -> int:
    """The sidecar worker that took this connection: the X-Dgdo-Worker header of its 101."""
    return int(tr.response.headers.get("X-Dgdo-Worker", "1"))


async def _step(what: str, awaitable, timeout: float, driver: E2EClient | None = None,
                passenger: E2EClient | None = None):
    """Awaits one step of the e2e exchange; a timeout says which step it was, and whether the server
    had closed the driver's or the passenger's connection meanwhile."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        closed = "; ".join(f"{who} {c.closed}" for who, c in (("driver", driver), ("passenger", passenger))
                           if c is not None and c.closed)
        raise TimeoutError(f"{what}: timed out (waited at most {timeout:g} s){'; ' + closed if closed else ''}") \
            from None


async def run_e2e(seconds: float, max_rate: float, logf, state_dir: Path, fsync: str | None = None,
                  workers: int = 1) -> dict:
    """The real engine + sidecar; `fsync` None runs the engine without a journal, else with one
    in a fresh state dir under `state_dir` and that fsync policy (never | interval | batch).
    With `workers` > 1: `dgdo run --workers N`, the driver and the passenger on different workers."""
    port = free_port()
    journal = ["--no-journal"] if fsync is None else ["--state-dir", str(state_dir / f"e{port}"), "--fsync", fsync]
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "dgdo"), "run", "--no-demo", "--port", str(port),
                             "--instance", f"bench{os.getpid()}e{port}", "--status-interval", "0", *journal,
                             *(["--workers", str(workers)] if workers > 1 else [])],
                            env=child_env(), stdout=logf, stderr=logf, cwd=str(ROOT),
                            preexec_fn=PIN.every_preexec() if PIN is not None else None)
    samples: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise TimeoutError("engine + sidecar did not come up")
            time.sleep(0.05)
        placed: dict[str, int] = {}
        if workers > 1:  # every worker attached before a client connects
            from bench.workers import wait_workers

            wait_workers(port, common.token("admin", "bench"), workers, alive=lambda: proc.poll() is None)
        # (ws_connect's own handshake timeout, 5 s, raises a bare TimeoutError: named here too)
        dtr, d = await _step("driver connect", connect(port, "driver", "e2e-d1", E2EClient), 10)
        ptr, p = await _step("passenger connect", connect(port, "passenger", "e2e-p1", E2EClient), 10)
        for k in range(64 if workers > 1 else 0):  # the kernel picks by the source port: try another
            if worker_of(ptr) != worker_of(dtr):
                break
            ptr.disconnect()
            ptr, p = await _step(f"passenger reconnect {k + 1}", connect(port, "passenger", "e2e-p1", E2EClient), 10)
        else:
            if workers > 1:
                raise RuntimeError("the passenger never landed on another worker than the driver's")
        placed = {"driver": worker_of(dtr), "passenger": worker_of(ptr)}
        await _step("welcomes", asyncio.gather(d.welcomed, p.welcomed), 10, d, p)
        f = d.expect(("ack", "s1"))
        _send(dtr, {"type": "driver_status", "status": "online", "id": "s1"})
        await _step("driver online ack", f, 5, d, p)
        f = d.expect(("ack", "l1"))
        _send(dtr, {"type": "driver_location", "lat": 38.5610, "lon": 68.7800, "id": "l1"})
        await _step("driver location ack", f, 5, d, p)
        end = time.monotonic() + seconds
        gap = 1.0 / max_rate
        i = 0
        while time.monotonic() < end:
            i += 1
            offer = d.expect(("new_order", None))
            t0 = time.time_ns()
            _send(ptr, {"type": "ride_request", "id": f"r{i}", "pickup": {"lat": 38.5598, "lon": 68.7870},
                        "dropoff": {"lat": 38.5750, "lon": 68.7950}})
            t1, m = await _step(f"new_order for r{i}", offer, 5, d, p)
            samples.append(t1 - t0)
            withdrawn = d.expect(("cancel_order", m["order_id"]))
            _send(ptr, {"type": "order_cancel", "order_id": m["order_id"]})
            await _step(f"cancel_order for r{i}", withdrawn, 5, d, p)
            await asyncio.sleep(gap)
        push = scrape_push(port) if workers == 1 else {}  # (N workers: the public port answers for any one)
        dtr.disconnect()
        ptr.disconnect()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"samples": samples, "sidecar_push_metrics": push, "placed": placed}


# ---- report ------------------------------------------------------------------------------------


def summarize(ns: list[int]) -> dict:
    if not ns:
        return {"n": 0}
    vals = common.percentiles(ns, PCTS)
    return {"n": len(ns), "p50": vals[0] / 1e3, "p90": vals[1] / 1e3, "p99": vals[2] / 1e3, "p99.9": vals[3] / 1e3,
            "max": max(ns) / 1e3}


KEYS = ("p50", "p90", "p99", "p99.9", "max")


def median_of(runs: list[dict]) -> dict:
    runs = [r for r in runs if r.get("n")]
    if not runs:
        return {"n": 0}
    out = {k: statistics.median(r[k] for r in runs) for k in KEYS}
    out["n"] = sum(r["n"] for r in runs)
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
        f"load avg at start {m['loadavg_at_start']}",
        f"Command: `{results['command']}` — {results['repeats']} repeats, phases of {results['seconds']} s; "
        "µs, median over repeats; ratio = median of per-repeat p50 (p99) ratios vs `ring`, same run."
        + (f" Pinned (--pin): each feed's sidecar on CPU {results['pinned']['sidecar']}, the rest on "
           f"{results['pinned']['others']}." if results.get("pinned") else ""),
        "",
        "| feed → sidecar | phase | n | p50 | p90 | p99 | p99.9 | max | p50 ×ring | p99 ×ring "
        "| sidecar commit→write p50 / p99 | sidecar CPU % | sidecar preempted /s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        s = row["offers"]
        if not s.get("n"):
            lines.append(f"| {row['variant']} | {row['phase']} | 0 | – | – | – | – | – | – | – | – | – | – |")
            continue
        r50, r99 = row.get("ratio_p50"), row.get("ratio_p99")
        w = row.get("sidecar_commit_to_write")
        cw = f"{w['p50']:.0f} / {w['p99']:.0f}" if w and "p50" in w else "–"
        cpu, pre = row.get("sidecar_cpu_pct"), row.get("sidecar_preempted_per_s")
        lines.append(
            f"| {row['variant']} | {row['phase']} | {s['n']} | {s['p50']:.1f} | {s['p90']:.1f} | {s['p99']:.1f} | "
            f"{s['p99.9']:.1f} | {s['max']:.1f} | {f'{r50:.2f}' if r50 else '–'} | "
            f"{f'{r99:.2f}' if r99 else '–'} | {cw} | {'–' if cpu is None else f'{cpu:.0f}'} | "
            f"{'–' if pre is None else f'{pre:.0f}'} |"
        )
    if results.get("targets"):
        t = results["targets"]
        lines += ["", f"Targets (DESIGN §6, ring idle): p50 {t['p50']:.1f} µs vs ≤ 40 ({t['p50_ok']}), "
                      f"p99 {t['p99']:.1f} µs vs ≤ 150 ({t['p99_ok']})."]
    if results.get("e2e_push_metrics"):
        lines += ["Engine e2e: the sidecar's own commit → socket-write histogram (/metrics): "
                  + ", ".join(f"{k} {v:.1f} µs" for k, v in results["e2e_push_metrics"].items())]
    many = [r for r in results["rows"] if r.get("ratio_1w_p50") is not None]
    if many:
        lines += ["", "N sidecar workers (`dgdo run --workers N`, driver and passenger on different workers) "
                      "against 1, ride_request → new_order, same run (ratio: median of per-repeat ratios):", "",
                  "| variant | n | p50 | p99 | p50 × 1 worker | p99 × 1 worker |", "|---|---:|---:|---:|---:|---:|"]
        for r in results["rows"]:
            if e2e_workers(r["variant"]) and r["offers"].get("n"):
                s = r["offers"]
                x50, x99 = r.get("ratio_1w_p50"), r.get("ratio_1w_p99")
                lines.append(f"| {r['variant']} | {s['n']} | {s['p50']:.1f} | {s['p99']:.1f} | "
                             f"{'1.00' if x50 is None else f'{x50:.2f}'} | {'1.00' if x99 is None else f'{x99:.2f}'} |")
    if results.get("failures"):
        lines += ["", f"{len(results['failures'])} variant runs failed and are left out (see the JSON): "
                      + "; ".join(f"rep {f['repeat']} {f['variant']}" for f in results["failures"])]
    lines += ["", "Sidecar commit→write: the sidecar's own histogram (engine commit → picows send returned, the "
                  "pushes of the phase, offers and positions), from its /metrics, p50/p99 interpolated within "
                  "its buckets as histogram_quantile does; the rest of the total is socket → client. The "
                  "FastAPI server has no such histogram. Sidecar preempted: the kernel's involuntary context "
                  "switches of the sidecar's main thread a second (psutil): another process took its CPU, "
                  "mostly mid-batch (README \"Idle strategy\", --pin)."]
    return "\n".join(lines) + "\n"


def plot(pooled: dict[tuple[str, str], list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = sorted({ph for _, ph in pooled}, key=lambda p: ["idle", "load"].index(p) if p in ("idle", "load") else 9)
    fig, axes = plt.subplots(1, len(phases), figsize=(6.5 * len(phases), 4.6), squeeze=False)
    for ax, ph in zip(axes[0], phases, strict=True):
        for (variant, p), ns in pooled.items():
            if p != ph or not ns:
                continue
            s = sorted(ns)
            n = len(s)
            name = (f"{variant}: ride_request → new_order" if e2e_workers(variant) or variant in E2E_JOURNAL
                    else variant)
            ax.plot([v / 1e3 for v in s], [(i + 1) / n for i in range(n)], label=f"{name} (n={n})",
                    linewidth=2.2 if variant == "ring" else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("engine commit → driver client holds frame (µs, log)")
        ax.set_ylabel("fraction ≤ x")
        ax.set_title(f"assignment-to-push CDF, {ph}")
        ax.axvline(40, color="grey", linestyle=":", linewidth=1)
        ax.axvline(150, color="grey", linestyle="--", linewidth=1)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def main_async(args: argparse.Namespace) -> int:
    if args.smoke:
        repeats, seconds, idle_rate, load_rate, pos_rate, n_clients = 1, 0.3, 500, 2000, 2000, 4
    elif args.quick:
        repeats, seconds, idle_rate, load_rate, pos_rate, n_clients = 3, 2.0, 1000, 10_000, 10_000, 16
    else:
        repeats, seconds, idle_rate, load_rate, pos_rate, n_clients = 5, 5.0, 1000, 10_000, 10_000, 16
    repeats = args.repeats or repeats
    seconds = args.seconds or seconds
    variants = args.variants.split(",") if args.variants else [*VARIANTS, E2E, *E2E_JOURNAL]
    workers = [int(w) for w in args.workers.split(",")]
    if E2E in variants:  # N workers beside one, for the ratio
        variants[variants.index(E2E) + 1:variants.index(E2E) + 1] = [e2e_name(w) for w in workers if w > 1]
    phases = [
        {"name": "idle", "offers_per_s": idle_rate, "positions_per_s": 0, "seconds": seconds},
        {"name": "load", "offers_per_s": load_rate, "positions_per_s": pos_rate, "seconds": seconds},
    ]
    out_dir = Path(args.out) if args.out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out_dir / f"latency-{stamp}{'-smoke' if args.smoke else ''}"
    machine = common.machine()
    if args.pin:
        global PIN
        PIN = Pinning.split(os.sched_getaffinity(0))
        for tid in os.listdir("/proc/self/task"):  # every thread of the runner (its clients), and what it starts
            os.sched_setaffinity(int(tid), PIN.others)
        log(f"[bench] --pin: each feed's sidecar on CPU {sorted(PIN.sidecar)}, everything else on {sorted(PIN.others)}")
    log(f"[bench] {machine['cpu']} ×{machine['cores']}, Linux {machine['kernel']}, Python {machine['python']}")
    log(f"[bench] {len(variants)} variants × {repeats} repeats, phases {seconds} s "
        f"(idle {idle_rate}/s; load {load_rate}/s offers + {pos_rate}/s positions); logs in {base}.log")

    per: dict[tuple[str, str], list[dict]] = {}
    pooled: dict[tuple[str, str], list[int]] = {}
    pooled_pos: dict[tuple[str, str], list[int]] = {}
    sent_total: dict[tuple[str, str], int] = {}
    e2e_push: dict = {}
    placements: dict[str, list[dict[str, int]]] = {}  # `engine e2e N workers`: the driver's and passenger's worker
    side: dict[tuple[str, str], list[dict]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}  # sidecar CPU % per phase
    preempted: dict[tuple[str, str], list[float]] = {}  # its preemptions a second, per phase
    per_rep: dict[tuple[str, str], dict[int, dict]] = {}  # ratios pair runs of the same repeat only
    failures: list[dict] = []
    total = repeats * len(variants)
    step = 0
    t_start = time.monotonic()
    # The e2e engine's journal (if the build keeps one) goes next to the results, removed at the end
    # (and on SIGTERM: main_async runs as a task that SIGTERM cancels); a kill -9 leaves it there,
    # with the results, not in /tmp.
    state = out_dir / f".state-{stamp}"
    with contextlib.ExitStack() as cleanup, open(f"{base}.log", "wb") as logf:
        cleanup.callback(shutil.rmtree, state, True)
        for rep in range(repeats):
            order = variants[rep % len(variants):] + variants[: rep % len(variants)]
            for variant in order:
                step += 1
                t0 = time.monotonic()
                try:
                    if e2e_workers(variant) or variant in E2E_JOURNAL:
                        res = await run_e2e(seconds, max_rate=500 if not args.smoke else 200, logf=logf,
                                            state_dir=state, fsync=E2E_JOURNAL.get(variant),
                                            workers=e2e_workers(variant) or 1)
                        if variant == E2E:
                            e2e_push = res["sidecar_push_metrics"]
                        if res["placed"]:
                            placements.setdefault(variant, []).append(res["placed"])
                        n = len(res["samples"])
                        got = {"idle": {"offers": res["samples"], "positions": [], "sent": {"offers": n}}}
                    else:
                        got = await run_variant(variant, phases, logf, n_clients,
                                                Path(args.profile) if args.profile else None, args.spin_us)
                except Exception as e:  # one broken variant must not lose the others
                    log(f"[{step}/{total}] {variant}: FAILED ({type(e).__name__}: {e})")
                    failures.append({"repeat": rep + 1, "variant": variant, "error": f"{type(e).__name__}: {e}"})
                    continue
                for ph, r in got.items():
                    s = summarize(r["offers"])
                    per.setdefault((variant, ph), []).append(s)
                    per_rep.setdefault((variant, ph), {})[rep] = s
                    pooled.setdefault((variant, ph), []).extend(r["offers"])
                    pooled_pos.setdefault((variant, ph), []).extend(r["positions"])
                    sent_total[(variant, ph)] = sent_total.get((variant, ph), 0) + int(r["sent"].get("offers", 0))
                    if r.get("sidecar_push"):
                        side.setdefault((variant, ph), []).append(r["sidecar_push"])
                    if r.get("sidecar_cpu_pct") is not None:
                        cpu.setdefault((variant, ph), []).append(r["sidecar_cpu_pct"])
                        preempted.setdefault((variant, ph), []).append(r["sidecar_preempted_per_s"])
                    if s.get("n"):
                        log(f"[{step}/{total}] rep {rep + 1} {variant:16s} {ph:5s} n={s['n']:6d} "
                            f"p50={s['p50']:8.1f} p99={s['p99']:9.1f} max={s['max']:9.1f} µs "
                            f"({time.monotonic() - t0:.1f} s; {time.monotonic() - t_start:.0f} s total)")
                    else:
                        log(f"[{step}/{total}] rep {rep + 1} {variant:16s} {ph:5s} no samples")

    rows = []
    for variant in variants:
        for ph in ("idle", "load"):
            runs = per.get((variant, ph))
            if runs is None:
                continue
            row = {"variant": variant, "phase": ph, "offers": median_of(runs), "repeats": runs,
                   "sent_offers": sent_total.get((variant, ph), 0),
                   "received_offers": len(pooled.get((variant, ph), [])),
                   "positions": summarize(pooled_pos.get((variant, ph), []))}
            if cpu.get((variant, ph)):
                row["sidecar_cpu_pct"] = statistics.median(cpu[(variant, ph)])
                row["sidecar_preempted_per_s"] = statistics.median(preempted[(variant, ph)])
            sp = side.get((variant, ph))
            if sp:
                row["sidecar_commit_to_write"] = {k: statistics.median(d[k] for d in sp) for k in sp[0]}
            ring_runs = per_rep.get(("ring", ph), {})
            one = per_rep.get((E2E, ph), {})
            if (e2e_workers(variant) or 1) > 1 and one:
                mine = per_rep[(variant, ph)]
                pairs = [(mine[k], one[k]) for k in mine if k in one and mine[k].get("n") and one[k].get("n")]
                row["ratio_1w_p50"] = statistics.median(a["p50"] / b["p50"] for a, b in pairs) if pairs else None
                row["ratio_1w_p99"] = statistics.median(a["p99"] / b["p99"] for a, b in pairs) if pairs else None
            if variant not in ("ring", *E2E_JOURNAL) and not e2e_workers(variant) and ring_runs:
                mine = per_rep[(variant, ph)]
                pairs = [(mine[k], ring_runs[k]) for k in mine if k in ring_runs]
                pairs = [(a, b) for a, b in pairs if a.get("n") and b.get("n")]
                r50 = [a["p50"] / b["p50"] for a, b in pairs]
                r99 = [a["p99"] / b["p99"] for a, b in pairs]
                row["ratio_pairs"] = len(pairs)
                row["ratio_p50"] = statistics.median(r50) if r50 else None
                row["ratio_p99"] = statistics.median(r99) if r99 else None
            rows.append(row)
    targets = None
    ring_idle = next((r["offers"] for r in rows if r["variant"] == "ring" and r["phase"] == "idle"), None)
    if ring_idle and ring_idle.get("n"):
        targets = {"p50": ring_idle["p50"], "p99": ring_idle["p99"],
                   "p50_ok": "met" if ring_idle["p50"] <= 40 else f"missed by {ring_idle['p50'] - 40:.1f} µs",
                   "p99_ok": "met" if ring_idle["p99"] <= 150 else f"missed by {ring_idle['p99'] - 150:.1f} µs"}
    flags = [f for f in ("--quick" if args.quick else "", "--smoke" if args.smoke else "",
                         f"--workers {args.workers}" if workers != [1] else "", "--pin" if args.pin else "") if f]
    cmd = "make bench-latency" + (f" ARGS='{' '.join(flags)}'" if len(flags) > 1 else
                                  "".join(f" ARGS={f}" for f in flags))
    results = {"command": cmd, "argv": sys.argv[1:], "machine": machine,
               "pinned": None if PIN is None else {"sidecar": sorted(PIN.sidecar), "others": sorted(PIN.others),
                                                   "runner": sorted(os.sched_getaffinity(0))},
               "sidecar_cpus": SIDECAR_CPUS,
               "repeats": repeats, "seconds": seconds,
               "rates": {"idle_offers_per_s": idle_rate, "load_offers_per_s": load_rate,
                         "load_positions_per_s": pos_rate, "clients_per_role": n_clients},
               "rows": rows, "targets": targets, "e2e_push_metrics": e2e_push, "failures": failures,
               "workers": workers, "e2e_placement": placements,
               "note": "µs; 'engine e2e' is ride_request sent -> new_order received (includes the inbound hop)"}
    md = markdown(results)
    Path(f"{base}.json").write_text(json.dumps(results, indent=1))
    Path(f"{base}.md").write_text(md)
    with contextlib.suppress(Exception):
        plot({k: v for k, v in pooled.items() if v}, Path(f"{base}.png"))
    print(md)
    log(f"[bench] wrote {base}.md, {base}.json, {base}.png")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 repeats of 2 s phases")
    ap.add_argument("--smoke", action="store_true", help="tiny run for tests: 1 repeat, 0.3 s phases, low rates")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--variants", default="", help=f"comma list of: {', '.join([*VARIANTS, E2E, *E2E_JOURNAL])}")
    ap.add_argument("--out", default="", help="output directory (default bench/results)")
    ap.add_argument("--workers", default="1", help="1,N adds `engine e2e N workers` (dgdo run --workers N) beside "
                                                  "`engine e2e`, with the ratio (default 1: none)")
    ap.add_argument("--spin-us", type=float, default=SPIN_US,
                    help=f"idle-spin budget of the '... spin' variants (default {SPIN_US:g})")
    ap.add_argument("--profile", default="", help="directory for py-spy profiles of the ring sidecar (needs py-spy)")
    ap.add_argument("--pin", action="store_true", help="each feed's sidecar on a CPU of its own, everything else on "
                                                        "the others (module doc)")
    return uvloop.run(_cancel_on_sigterm(main_async(ap.parse_args())))


async def _cancel_on_sigterm(work) -> int:
    """Runs `work` as a task that SIGTERM cancels: its `finally` blocks stop every stack it started."""
    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        log("[bench] stopped by SIGTERM")
        return 143


if __name__ == "__main__":
    sys.exit(main())
