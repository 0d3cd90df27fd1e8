"""Protocol micro-benchmark and the sidecar's driver_location ingest rate per core.

    python bench/protocol/bench_codec.py [--smoke] [--repeats R] [--seconds S] [--conns 4,16,64] [--json PATH]
                                         [--codec-only] [--instructions N] [--baseline DIR]

1. Codec: µs per message, JSON vs msgpack, for decode + validate through the sidecar's own
   `Decoder.feed` (driver_location, ride_request) and the push path's encode (new_order,
   order_update, driver_location as pushed to a passenger: the typed message of
   wire/pushes.py into the drain's reused buffer, as session/core.py does it), against the
   goals (≤ 1.5 µs decode, ≤ 0.5 µs encode) and beside the previous codec (`legacy_codec.py`;
   for encode also the previous round's map through msgspec) timed in the same run, the
   implementations taking turns. Median of R repeats of timeit loops. `--instructions N` adds callgrind's
   instruction count per decode, which a busy machine does not disturb.
2. Ingest: the real stack (`dgdo run --no-demo`: engine + sidecar, rate limits lifted with the
   sidecar's own flags) on 127.0.0.1, fed by a separate load process of N picows driver
   connections sending pre-encoded `driver_location` frames as fast as TCP lets them. Measured
   over S seconds: records the sidecar published to the engine (`dgdo_records_out_total`; frames
   decoded, `dgdo_frames_in_total`, are shown too), the sidecar process's CPU seconds (psutil,
   the engine's counted apart), and so records into the engine per sidecar CPU-second ("per
   core", the headline), against DESIGN §6's ≥ 100k/s. A run counts only if the sidecar sent
   nothing back (no errors, no rate_limited): a refused frame is not ingest. Median of R runs,
   per format. `--baseline DIR` runs another checkout's own bench (its sidecar and engine) over
   the same sweep after each repeat, and puts its records per sidecar CPU-second beside these:
   the previous implementation measured interleaved with this one.

`ingest_cost.py` beside this file takes the ingest path apart: the sidecar's Python per position
from the frame callback to the ring, without sockets, timed or counted by callgrind, for two
checkouts side by side.

Progress goes to stderr, a Markdown table to stdout. On a 2-vCPU machine the load process and
the engine share the cores with the sidecar; the per-CPU-second figure is what compares.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
import psutil  # noqa: E402

from bench import callgrind  # noqa: E402
from bench.machine import describe, host_busy, one_line  # noqa: E402
from bench.workers import WorkerPorts  # noqa: E402
from sidecar.shell import lifetime  # noqa: E402
from sidecar.wire import auth  # noqa: E402
from sidecar.wire.codec import ENCODE_INTO, JSON, MSGPACK, Decoder, encode  # noqa: E402
from sidecar.wire.messages import DRIVER, PASSENGER  # noqa: E402
from sidecar.wire.pushes import DriverPosition, NewOrder, OrderUpdate, Point  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import legacy_codec as legacy  # noqa: E402

TARGET_PER_CORE = 100_000
SECRET = "bench-protocol-secret-" + "0" * 32
NO_LIMITS = ["--positions-per-s", "1e12", "--positions-burst", "1e12",
             "--messages-per-s", "1e12", "--messages-burst", "1e12"]

DRIVER_LOCATION = {"type": "driver_location", "lat": 38.5605, "lon": 68.784, "heading": 90.0, "speed_kmh": 32.5,
                   "accuracy_m": 8.0}
RIDE_REQUEST = {"type": "ride_request", "id": "r1", "pickup": {"lat": 38.5598, "lon": 68.787},
                "dropoff": {"lat": 38.575, "lon": 68.795}}
# Server messages as the sidecar writes them (session/core.py): keys in wire order, the map the
# previous implementation built beside the typed message this one builds from the same record.
NEW_ORDER = {"type": "new_order", "order_id": 1001, "passenger_id": "p1", "pickup": {"lat": 38.5598, "lon": 68.787},
             "dropoff": {"lat": 38.575, "lon": 68.795}, "distance_m": 610.2, "eta_s": 165.0, "expires_in_s": 15.0,
             "ts": 1764090000000, "seq": 1}
ORDER_UPDATE = {"type": "order_update", "order_id": 1001, "status": "accepted", "ts": 1764090000000,
                "driver_id": "d1", "seq": 2}
POSITION_PUSH = {"type": "driver_location", "order_id": 1001, "driver_id": "d1", "lat": 38.5605, "lon": 68.784,
                 "ts": 1764090000000, "heading": 90.0, "speed_kmh": 32.5}
TYPED = {
    "new_order": NewOrder(1001, "p1", Point(38.5598, 68.787), Point(38.575, 68.795), 610.2, 165.0, 15.0,
                          1764090000000, 1),
    "order_update": OrderUpdate(1001, "accepted", 1764090000000, "d1", seq=2),
    "driver_location": DriverPosition(1001, "d1", 38.5605, 68.784, 1764090000000, 90.0, 32.5),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- 1. codec ---------------------------------------------------------------------------

DECODE_GOAL_US = 1.5  # issue 9: decode + validate of driver_location and ride_request, both formats
ENCODE_GOAL_US = 0.5  # issue 9: encode of order_update, new_order, driver_location


def codec_cases() -> list[dict[str, Any]]:
    """One entry per row: the op, the message, and per (format, implementation) a call to time."""
    cases: list[dict[str, Any]] = []
    for name, msg, role, conn_id in (("driver_location", DRIVER_LOCATION, DRIVER, "d1"),
                                     ("ride_request", RIDE_REQUEST, PASSENGER, "p1")):
        j, m = json.dumps(msg, separators=(",", ":")).encode(), msgpack.packb(msg)
        new, old = Decoder(role, conn_id), legacy.LegacyDecoder(role, conn_id)
        a, b = new.feed(False, True, j), new.feed(True, True, m)
        assert a == b and a is not None, (a, b)
        was = old.feed(False, True, j)
        assert was is not None and was.request_id == a.request_id  # the same message, read by both
        cases.append({"op": "decode+validate", "message": name, "goal_us": DECODE_GOAL_US,
                      "bytes_json": len(j), "bytes_msgpack": len(m), "calls": {
                          "json": lambda d=new, p=j: d.feed(False, True, p),
                          "msgpack": lambda d=new, p=m: d.feed(True, True, p),
                          "legacy_json": lambda d=old, p=j: d.feed(False, True, p),
                          "legacy_msgpack": lambda d=old, p=m: d.feed(True, True, p)}})
    # Encode: what the push path does per message (session/core.py `_deliver`), the typed message
    # into the one scratch buffer every message of a drain reuses; beside it the map the previous
    # round built, encoded by msgspec to a new bytes object (`map_*`), and the legacy codec's.
    scratch = bytearray()
    for name, msg in (("new_order", NEW_ORDER), ("order_update", ORDER_UPDATE), ("driver_location", POSITION_PUSH)):
        typed = TYPED[name]
        for fmt, into in ((JSON, ENCODE_INTO[0]), (MSGPACK, ENCODE_INTO[1])):  # the wire is unchanged:
            into(typed, scratch)  # every encoder writes the legacy codec's bytes
            assert bytes(scratch) == encode(typed, fmt) == encode(msg, fmt) == legacy.encode(msg, fmt), (name, fmt)
        cases.append({"op": "encode", "message": name, "goal_us": ENCODE_GOAL_US,
                      "bytes_json": len(encode(msg, JSON)), "bytes_msgpack": len(encode(msg, MSGPACK)), "calls": {
                          "json": lambda x=typed, into=ENCODE_INTO[0], b=scratch: into(x, b),
                          "msgpack": lambda x=typed, into=ENCODE_INTO[1], b=scratch: into(x, b),
                          "map_json": lambda x=msg: encode(x, JSON),
                          "map_msgpack": lambda x=msg: encode(x, MSGPACK),
                          "legacy_json": lambda x=msg: legacy.encode(x, JSON),
                          "legacy_msgpack": lambda x=msg: legacy.encode(x, MSGPACK)}})
    return cases


def codec(number: int, repeats: int) -> list[dict[str, Any]]:
    """µs per call, median of `repeats`; the new and the legacy codec take turns within each repeat
    (the order rotated every repeat), so a burst of load from elsewhere hits both alike."""
    cases = codec_cases()
    keys = [(i, k) for i, c in enumerate(cases) for k in c["calls"]]
    samples: dict[tuple[int, str], list[float]] = {key: [] for key in keys}
    for r in range(repeats):
        for i, k in keys[r % len(keys):] + keys[: r % len(keys)]:
            samples[(i, k)].append(timeit.timeit(cases[i]["calls"][k], number=number) / number * 1e6)
    rows = []
    for i, c in enumerate(cases):
        row = {k: v for k, v in c.items() if k != "calls"}
        for k in c["calls"]:
            row[f"{k}_us"] = statistics.median(samples[(i, k)])
        row["meets_goal"] = max(row["json_us"], row["msgpack_us"]) <= c["goal_us"]
        rows.append(row)
    return rows


def instructions(calls: int) -> list[dict[str, Any]]:
    """Instructions per call of every codec row, counted by callgrind: repeatable on a noisy machine.

    Each count is (a run doing `calls` calls) - (the same run doing none), over `calls`: every run
    imports and sets up the same (`codec_cases()`), so the difference is the calls alone.
    """
    def run(case: str, n: int) -> int:
        return callgrind.instructions([sys.executable, __file__, "--count-calls", case, str(n)], timeout_s=900)

    base = run("0/json", 0)
    rows = []
    for i, c in enumerate(codec_cases()):
        row: dict[str, Any] = {"op": c["op"], "message": c["message"], "calls": calls}
        for key in c["calls"]:
            row[f"{key}_instructions"] = (run(f"{i}/{key}", calls) - base) / calls
            log(f"callgrind {c['op']} {c['message']} {key}: {row[f'{key}_instructions']:,.0f} instructions per call")
        rows.append(row)
    return rows


def count_calls(case: str, n: int) -> None:
    """The body of one callgrind run: `n` calls of one codec case, `ROW/KEY` (0 calls: set-up only)."""
    row, key = case.split("/")
    fn = codec_cases()[int(row)]["calls"][key]
    for _ in range(n):
        fn()


# ---- 2. ingest --------------------------------------------------------------------------


async def load(url: str, conns: int, seconds: float, binary: bool) -> tuple[int, float, float]:
    """Load process: `conns` drivers send driver_location as fast as TCP allows.

    Returns (frames sent, seconds sending, wall-clock start of the sending).
    """
    import uvloop  # noqa: F401
    from picows import WSListener, WSMsgType, ws_connect

    frames = []
    for i in range(256):
        m = {**DRIVER_LOCATION, "lat": 38.55 + i * 1e-4, "lon": 68.77 + i * 1e-4}
        frames.append(msgpack.packb(m) if binary else json.dumps(m, separators=(",", ":")).encode())
    mtype = WSMsgType.BINARY if binary else WSMsgType.TEXT

    class Loader(WSListener):
        def __init__(self) -> None:
            self.writable = asyncio.Event()
            self.writable.set()

        def pause_writing(self) -> None:
            self.writable.clear()

        def resume_writing(self) -> None:
            self.writable.set()

    sent = 0
    stop_at = 0.0

    async def connect(i: int) -> tuple[Any, Loader]:
        nonlocal sent
        token = auth.mint(SECRET, "driver", f"bench{i}")
        transport, listener = await ws_connect(Loader, f"{url}/ws/driver/bench{i}?token={token}")
        transport.send(WSMsgType.TEXT, b'{"type":"driver_status","status":"online"}')
        sent += 1
        return transport, listener

    async def drive(transport: Any, listener: Loader) -> None:
        nonlocal sent
        k = 0
        while time.monotonic() < stop_at:
            await listener.writable.wait()
            for _ in range(64):
                transport.send(mtype, frames[k & 255])
                k += 1
            sent += 64
            await asyncio.sleep(0)
        transport.send_close()
        transport.disconnect()

    # Every client connects before any floods: the window then times frames only, and no handshake
    # waits behind floods a saturated sidecar (rate limits lifted) is still reading. When each
    # client flooded as soon as it was up, the last of 64 once waited out picows' 5 s handshake
    # timeout (one run in ~20).
    clients = await asyncio.gather(*(connect(i) for i in range(conns)))
    t0, started = time.monotonic(), time.time()
    stop_at = t0 + seconds
    await asyncio.gather(*(drive(t, lst) for t, lst in clients))
    return sent, time.monotonic() - t0, started


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{([^}]*)\})? ([-0-9.e+]+)$", line)
        if m:  # keyed without the `worker` label: a series summed over workers
            labels = ",".join(kv for kv in (m.group(2) or "").split(",") if kv and not kv.startswith("worker="))
            key = m.group(1) + (f"{{{labels}}}" if labels else "")
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def metrics(port: int, workers: WorkerPorts | None = None, n: int = 1) -> dict[str, float]:
    """The stack's counters: one worker's /metrics, or with N workers on the port the sum of each
    worker's (reached by source port: bench/workers.py)."""
    if workers is None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as r:
            return parse_metrics(r.read().decode())
    total: dict[str, float] = {}
    for w in range(1, n + 1):
        for k, v in parse_metrics(workers.get(w, "/metrics").decode()).items():
            total[k] = total.get(k, 0.0) + v
    return total


def start_stack(state_dir: str, n_workers: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    # Ends with us even after our kill -9 (sidecar/shell/lifetime.py); its engine ends with it.
    env = lifetime.child_env({**os.environ, auth.ENV_SECRET: SECRET, "PYTHONUNBUFFERED": "1"})
    cmd = [sys.executable, "-m", "sidecar", "run", "--host", "127.0.0.1", "--port", "0", "--no-demo",
           "--status-interval", "0", "--instance", f"bp{uuid.uuid4().hex[:8]}", "--log-level", "WARNING",
           "--state-dir", state_dir, "--workers", str(n_workers), *NO_LIMITS]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    listening = 0
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        m = re.search(r"sidecar listening on ws://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            listening += 1  # each worker says so (they share stdout), attached first (App.start)
            if listening == n_workers:
                break
        if not line and proc.poll() is not None:
            raise RuntimeError("the stack exited before listening")
    else:
        proc.kill()
        raise RuntimeError("the stack never said it was listening")
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        time.sleep(0.05)  # polling /healthz: there is no event to await across processes
    proc.kill()
    raise RuntimeError("engine never attached")


def settled_metrics(port: int, workers: WorkerPorts | None = None, n: int = 1) -> tuple[dict[str, float], float]:
    """/metrics once the frame counter stops moving (the sidecar has drained its sockets), and
    the wall-clock time it was last seen moving."""
    last, moved = metrics(port, workers, n), time.time()
    while True:
        time.sleep(0.05)
        now = metrics(port, workers, n)
        if now["dgdo_frames_in_total"] == last["dgdo_frames_in_total"]:
            return now, moved
        last, moved = now, time.time()


def sidecar_processes(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """`dgdo run` (worker 1) and its worker children (`--workers N`), not the engine."""
    run = psutil.Process(proc.pid)
    return [run] + [c for c in run.children() if "sidecar" in " ".join(c.cmdline())]


def cpu_s(procs: list[psutil.Process]) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def sleeps(procs: list[psutil.Process]) -> int:
    """Voluntary context switches, summed: each is a worker that found nothing to read and parked
    in epoll, so per record they say how much work one wake-up found (fewer = bigger batches)."""
    return sum(p.num_ctx_switches().voluntary for p in procs)


def ingest_once(conns: int, seconds: float, binary: bool, n_workers: int = 1) -> dict[str, float]:
    """One run: counters and CPU are read while the sidecar is idle, before and after the load.

    (A saturated worker answers /metrics late, so the window is the whole load, not a slice of it;
    the handful of handshakes it includes cost nothing next to millions of frames.)
    """
    state = tempfile.TemporaryDirectory(prefix="dgdo-bench-codec-")  # a fresh engine state per run
    proc, port = start_stack(state.name, n_workers)
    try:
        side = psutil.Process(proc.pid)
        engine = next((c for c in side.children() if "dgdo-engine" in " ".join(c.cmdline())), None)
        ports = WorkerPorts(port, auth.mint(SECRET, "admin", "bench")) if n_workers > 1 else None
        if ports is not None:  # every worker up and attached before the load starts
            for w in range(1, n_workers + 1):
                while ports.get(w, "/healthz") != b"ok":
                    time.sleep(0.05)  # another process's HTTP endpoint: nothing to await but its answer
        sides = sidecar_processes(proc)
        assert len(sides) == n_workers, f"{len(sides)} sidecar processes for {n_workers} workers"
        cmd = [sys.executable, __file__, "--load", f"ws://127.0.0.1:{port}", "--conns", str(conns),
               "--seconds", str(seconds)] + (["--binary"] if binary else [])
        m0, _ = settled_metrics(port, ports, n_workers)
        c0, v0 = cpu_s(sides), sleeps(sides)
        e0 = engine.cpu_times() if engine else None
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load process's CPU: its share of the cores
        h0 = host_busy()
        loader = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        h1 = host_busy()
        assert loader.returncode == 0, loader.stderr[-2000:]
        m1, last_frame = settled_metrics(port, ports, n_workers)
        c1, v1 = cpu_s(sides), sleeps(sides)
        e1 = engine.cpu_times() if engine else None
        sent, _sending, started = (float(x) for x in loader.stdout.split())
        elapsed = last_frame - started  # first frame sent -> last frame decoded (±50 ms)
        frames = m1["dgdo_frames_in_total"] - m0["dgdo_frames_in_total"]
        cpu = c1 - c0
        res = {"frames": frames, "wall_s": elapsed, "frames_per_s": frames / elapsed, "sidecar_cpu_s": cpu,
               "sidecar_cpu_util": cpu / elapsed, "frames_per_cpu_s": frames / cpu if cpu > 0 else 0.0,
               "loader_sent": sent,
               "loader_cpu_util": (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / elapsed,
               # cores busy on the whole host while the load ran (psutil.cpu_count() of them)
               "host_busy_cores": (h1[0] - h0[0]) / (h1[1] - h0[1]) * (psutil.cpu_count() or 1)}
        if e0 is not None and e1 is not None:
            res["engine_cpu_util"] = ((e1.user + e1.system) - (e0.user + e0.system)) / elapsed
        # Anything the sidecar sent back (errors, rate_limited) means frames were refused.
        res["replies"] = m1.get("dgdo_messages_out_total", 0) - m0.get("dgdo_messages_out_total", 0)
        res["rate_limited"] = m1.get("dgdo_rate_limited_total", 0) - m0.get("dgdo_rate_limited_total", 0)
        assert res["replies"] == 0 and res["rate_limited"] == 0, f"the sidecar answered the load: {res}"
        # Published to the engine: every admitted driver_status and driver_location is one record.
        records = m1["dgdo_records_out_total"] - m0["dgdo_records_out_total"]
        res["records"] = records
        res["records_to_engine_per_s"] = records / elapsed
        res["records_per_cpu_s"] = records / cpu if cpu > 0 else 0.0
        res["wakeups_per_krecord"] = (v1 - v0) / records * 1000 if records > 0 else 0.0
        return res
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        state.cleanup()


def baseline_ingest(root: Path, sweep: list[int], seconds: float) -> dict[str, list[dict[str, float]]]:
    """One ingest sweep by another checkout's own bench (its sidecar, its engine, its load): the runs it reports."""
    if not (root / ".venv" / "bin" / "python").exists():
        raise SystemExit(f"bench_codec: {root} has no .venv: run `make venv engine` there first")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.json"
        bench = root / "bench" / "protocol" / "bench_codec.py"
        argv = [str(root / ".venv" / "bin" / "python"), str(bench), "--repeats", "1", "--seconds", f"{seconds:g}",
                "--conns", ",".join(map(str, sweep)), "--json", str(out)]
        done = subprocess.run(argv, cwd=root, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise SystemExit(f"bench_codec: the baseline in {root} failed ({done.returncode}): {done.stderr[-2000:]}")
        runs = json.loads(out.read_text())["ingest_runs"]
    return {fmt: [r for r in runs[fmt] if r.get("workers", 1) == 1] for fmt in ("json", "msgpack")}


def commit_of(root: Path) -> str:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "not a git checkout"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny counts: checks that everything runs")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None, help="ingest window per run")
    p.add_argument("--conns", default=None, help="driver connections of the load process, a comma list (4,16,64)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--workers", default="1", help="sidecar workers sharing the port, a comma list: 1,2 runs both "
                                                  "in turn and reports the ratio (default 1)")
    p.add_argument("--codec-only", action="store_true", help="the codec table alone, no ingest runs")
    p.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                   help="another checkout (its venv and engine built: make venv engine), e.g. 2573970, before the "
                        "msgspec codec and the session core: its own bench_codec.py runs the same ingest sweep after "
                        "each repeat here, and its figures stand beside these (interleaved)")
    p.add_argument("--instructions", type=int, default=0, metavar="N",
                   help="also count instructions per decode with valgrind's callgrind (N calls per count)")
    p.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--binary", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--count-calls", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.count_calls:
        count_calls(a.count_calls[0], int(a.count_calls[1]))
        return 0
    if a.load:
        import uvloop

        sent, elapsed, started = uvloop.run(load(a.load, int(a.conns or 8), a.seconds or 5, a.binary))
        print(sent, f"{elapsed:.6f}", f"{started:.6f}", flush=True)
        return 0
    repeats = a.repeats or (1 if a.smoke else 5)
    seconds = a.seconds or (1.5 if a.smoke else 4.0)
    sweep = [int(c) for c in (a.conns or ("4" if a.smoke else "4,16,64")).split(",")]
    worker_counts = [int(w) for w in a.workers.split(",")]
    number = 2_000 if a.smoke else 50_000

    log(f"codec: {repeats} x {number} calls per message, new and legacy in turn")
    rows = codec(number, repeats)
    counted = instructions(a.instructions) if a.instructions else []
    ingest: dict[str, list[dict[str, float]]] = {"json": [], "msgpack": []}
    baseline: dict[str, list[dict[str, float]]] = {"json": [], "msgpack": []}
    # Round-robin over formats and connection counts, rotated each repeat.
    for r in range(0 if a.codec_only else repeats):
        combos = [(fmt, c, w) for w in worker_counts for c in sweep for fmt in ("json", "msgpack")]
        combos = combos[r % len(combos):] + combos[: r % len(combos)]
        for fmt, conns, n_workers in combos:
            res = ingest_once(conns, seconds, fmt == "msgpack", n_workers)
            res["conns"] = conns
            res["workers"] = n_workers
            ingest[fmt].append(res)
            log(f"ingest {fmt} x{conns} workers {n_workers} run {r + 1}/{repeats}: "
                f"{res['records_to_engine_per_s']:,.0f} records/s "
                f"into the engine, sidecar CPU {res['sidecar_cpu_util']:.2f} -> {res['records_per_cpu_s']:,.0f} "
                f"records per CPU-second ({res['frames_per_cpu_s']:,.0f} frames)")
        if a.baseline:
            for fmt, runs in baseline_ingest(a.baseline, sweep, seconds).items():
                baseline[fmt] += runs
                for res in runs:
                    log(f"ingest {fmt} x{res['conns']} baseline run {r + 1}/{repeats}: "
                        f"{res['records_per_cpu_s']:,.0f} records per CPU-second")

    def med(fmt: str, conns: int, key: str, workers: int = 1) -> float:
        vals = [r[key] for r in ingest[fmt] if r["conns"] == conns and r["workers"] == workers and key in r]
        return statistics.median(vals) if vals else float("nan")

    mode = "smoke" if a.smoke else "full"
    print(f"## Protocol benchmark ({mode})\n\nMachine: {one_line(describe())}\n")
    print(f"### Codec (median of {repeats} x {number} calls; legacy = the previous codec, same run)\n")
    print("| op | message | JSON µs | msgpack µs | goal µs | legacy JSON µs | legacy msgpack µs | "
          "speed-up JSON | speed-up msgpack | bytes JSON | bytes msgpack |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        verdict = "met" if r["meets_goal"] else "MISSED"
        print(f"| {r['op']} | {r['message']} | {r['json_us']:.2f} | {r['msgpack_us']:.2f} | "
              f"≤ {r['goal_us']:g} {verdict} | {r['legacy_json_us']:.2f} | {r['legacy_msgpack_us']:.2f} | "
              f"{r['legacy_json_us'] / r['json_us']:.1f}x | {r['legacy_msgpack_us'] / r['msgpack_us']:.1f}x | "
              f"{r['bytes_json']} | {r['bytes_msgpack']} |")
    print("\nEncoded bytes are identical to the legacy codec's (asserted), so the wire is unchanged.")
    enc = [r for r in rows if "map_json_us" in r]
    if enc:
        print("\nEncode, this round against the previous one (same run): the typed message (wire/pushes.py) "
              "encoded into the drain's reused buffer, against the map encoded to a new bytes object.\n")
        print("| message | typed JSON µs | map JSON µs | typed msgpack µs | map msgpack µs |")
        print("|---|---|---|---|---|")
        for r in enc:
            print(f"| {r['message']} | {r['json_us']:.3f} | {r['map_json_us']:.3f} | {r['msgpack_us']:.3f} | "
                  f"{r['map_msgpack_us']:.3f} |")
    if counted:
        print(f"\n### Instructions per call (callgrind, {counted[0]['calls']} calls per count)\n")
        print("| op | message | JSON | msgpack | map JSON | map msgpack | legacy JSON | legacy msgpack |")
        print("|---|---|---|---|---|---|---|---|")
        for r in counted:
            maps = (f"{r['map_json_instructions']:,.0f} | {r['map_msgpack_instructions']:,.0f}"
                    if "map_json_instructions" in r else "| ")
            print(f"| {r['op']} | {r['message']} | {r['json_instructions']:,.0f} | {r['msgpack_instructions']:,.0f} | "
                  f"{maps} | {r['legacy_json_instructions']:,.0f} | {r['legacy_msgpack_instructions']:,.0f} |")
    if a.codec_only:
        if a.json:
            a.json.write_text(json.dumps({"mode": mode, "machine": describe(), "repeats": repeats, "codec": rows,
                                          "instructions": counted}, indent=2))
        return 0
    def before(fmt: str, conns: int) -> float:
        vals = [r["records_per_cpu_s"] for r in baseline[fmt] if r["conns"] == conns]
        return statistics.median(vals) if vals else float("nan")

    print(f"\n### Ingest of driver_location (median of {repeats} runs of {seconds:g} s; one load process)\n")
    if a.baseline:
        print(f"Baseline: {a.baseline} ({commit_of(a.baseline)}), its own bench and sidecar, one run after each "
              "repeat here.\n")
    extra_cols = " baseline per sidecar CPU-second | × baseline |" if a.baseline else ""
    print("| format | connections | workers | records into the engine/s (wall) | sidecar CPU | "
          "records into the engine per sidecar CPU-second | vs 100k/s per core | "
          "frames per sidecar CPU-second | engine CPU | load process CPU |" + extra_cols)
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if a.baseline else ""))
    summary: dict[str, dict[str, float]] = {}
    for fmt in ("json", "msgpack"):
        for conns in sweep:
            for w in worker_counts:
                per_core = med(fmt, conns, "records_per_cpu_s", w)
                key = f"{fmt}/{conns}" if w == 1 else f"{fmt}/{conns}/w{w}"
                summary[key] = {k: med(fmt, conns, k, w) for k in (
                    "frames_per_s", "sidecar_cpu_util", "frames_per_cpu_s", "engine_cpu_util",
                    "records_to_engine_per_s", "records_per_cpu_s", "loader_cpu_util",
                    "host_busy_cores", "wakeups_per_krecord")}
                print(f"| {fmt} | {conns} | {w} | {med(fmt, conns, 'records_to_engine_per_s', w):,.0f} | "
                      f"{med(fmt, conns, 'sidecar_cpu_util', w):.2f} | {per_core:,.0f} | "
                      f"{per_core / TARGET_PER_CORE:.2f}x | {med(fmt, conns, 'frames_per_cpu_s', w):,.0f} | "
                      f"{med(fmt, conns, 'engine_cpu_util', w):.2f} | {med(fmt, conns, 'loader_cpu_util', w):.2f} |"
                      + (f" {before(fmt, conns):,.0f} | {per_core / before(fmt, conns):.2f}x |"
                         if a.baseline and w == 1 else " – | – |" if a.baseline else ""))
    print("\nEvery run: no reply, no rate_limited (asserted; the bench lifts the limits with the sidecar's flags)."
          " Records are those the sidecar published for the engine; behind a full ring, positions may coalesce"
          " per driver before they are written. With N workers the sidecar CPU is the sum over the N processes"
          " and the counters the sum of each worker's /metrics (bench/workers.py reaches each one).")
    if len(worker_counts) > 1 and 1 in worker_counts:
        print("\n### Ingest per host: N workers against 1 (same run)\n")
        print("| format | connections | workers | records/s per host | ratio to 1 worker | sidecar CPU (sum) | "
              f"load process CPU | host cores busy (of {psutil.cpu_count()}) | records per sidecar CPU-s | "
              "worker wake-ups per 1,000 records |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for fmt in ("json", "msgpack"):
            for conns in sweep:
                one = med(fmt, conns, "records_to_engine_per_s", 1)
                for w in worker_counts:
                    many = med(fmt, conns, "records_to_engine_per_s", w)
                    cpu, load_cpu = med(fmt, conns, "sidecar_cpu_util", w), med(fmt, conns, "loader_cpu_util", w)
                    host = med(fmt, conns, "host_busy_cores", w)
                    print(f"| {fmt} | {conns} | {w} | {many:,.0f} | {many / one:.2f}x | {cpu:.2f} | {load_cpu:.2f} | "
                          f"{host:.2f} | {med(fmt, conns, 'records_per_cpu_s', w):,.0f} | "
                          f"{med(fmt, conns, 'wakeups_per_krecord', w):.1f} |")
    result = {"mode": mode, "machine": describe(), "repeats": repeats, "conns": sweep, "workers": worker_counts,
              "seconds": seconds,
              "codec": rows, "instructions": counted, "ingest_runs": ingest, "ingest": summary,
              "target_per_core": TARGET_PER_CORE}
    if a.baseline:
        result["baseline"] = {"dir": str(a.baseline), "commit": commit_of(a.baseline), "ingest_runs": baseline,
                              "records_per_cpu_s": {f"{fmt}/{c}": before(fmt, c) for fmt in baseline for c in sweep}}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
