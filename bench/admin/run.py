"""The admin feed under a big fleet: what one dashboard costs the sidecar, and what it receives.

    python bench/admin/run.py [--drivers 10000] [--seconds 20] [--repeats 2] [--smoke] [--json PATH]

The real stack (`dgdo run --no-demo`: engine + sidecar, default limits) on 127.0.0.1. A separate
load process opens N driver connections over the public protocol (picows, one uvloop), says
`online`, and sends each driver's `driver_location` once a second (a random walk around
Dushanbe), spread evenly over the second. Then, alternating, R times:

* without an admin: the sidecar's CPU over S seconds (psutil; the engine and the load process
  are measured apart);
* with one admin tab's worth of subscription (every topic the dashboard asks for: system_stats,
  fleet, active_orders, assignments, drivers, log) on one picows connection in this process:
  the same CPU, plus the messages and bytes per second the admin received (payload bytes, per
  message type), counted after the first full snapshot, whose size is reported apart;
* with four such admins: the extra CPU per admin (each delta is encoded once for all).

The positions the sidecar decoded over the window (/metrics `dgdo_frames_in_total`) show that
the load ran at its rate during both measurements. Progress goes to stderr, a Markdown table to
stdout. On a 2-vCPU machine the load process, the engine and the sidecar share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.machine import describe, one_line  # noqa: E402
from sidecar.shell import lifetime  # noqa: E402
from sidecar.wire import auth  # noqa: E402

SECRET = "bench-admin-secret-" + "0" * 32
TOPICS = ["system_stats", "fleet", "active_orders", "assignments", "drivers", "log"]  # as the dashboard asks
CENTER = (38.56, 68.78)
CONNECT_CONCURRENCY = 200


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the load process: N drivers, one position a second each ---------------------------------


async def load(url: str, drivers: int, rate_hz: float) -> None:
    """Connects `drivers` drivers, prints `connected N`, then sends positions until SIGTERM; then
    prints `sent K seconds S`."""
    from picows import WSListener, WSMsgType, ws_connect

    class Quiet(WSListener):  # what the server sends a driver (welcome) is not needed here
        pass

    rng = random.Random(1)
    transports: list[Any] = []
    pos = [[CENTER[0] + rng.uniform(-0.04, 0.04), CENTER[1] + rng.uniform(-0.05, 0.05)] for _ in range(drivers)]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(i: int) -> None:
        token = auth.mint(SECRET, "driver", f"b{i:05d}")
        async with gate:
            for attempt in range(5):
                try:
                    t, _ = await ws_connect(Quiet, f"{url}/ws/driver/b{i:05d}?token={token}")
                    break
                except OSError:
                    await asyncio.sleep(0.2 * (attempt + 1))
            else:
                raise RuntimeError(f"driver {i} could not connect")
        t.send(WSMsgType.TEXT, b'{"type":"driver_status","status":"online"}')
        transports.append((i, t))

    await asyncio.gather(*(connect(i) for i in range(drivers)))
    transports.sort()
    print(f"connected {len(transports)}", flush=True)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    slot_s = 0.01  # every 10 ms a 1/100 slice of the fleet reports: each driver once per 1/rate_hz s
    slices = max(1, round(1 / rate_hz / slot_s))
    sent, t0, k = 0, time.monotonic(), 0
    while not stop.is_set():
        for i, t in transports[k % slices::slices]:
            p = pos[i]
            p[0] += rng.uniform(-2e-4, 2e-4)
            p[1] += rng.uniform(-2e-4, 2e-4)
            t.send(WSMsgType.TEXT, f'{{"type":"driver_location","lat":{p[0]:.6f},"lon":{p[1]:.6f}}}'.encode())
            sent += 1
        k += 1
        next_at = t0 + k * slot_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
    print(f"sent {sent} seconds {time.monotonic() - t0:.3f}", flush=True)
    for _, t in transports:
        t.disconnect()


# ---- the runner -------------------------------------------------------------------------------


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{([^}]*)\})? ([-0-9.e+]+)$", line)
        if m:  # keyed without the `worker` label: a series summed over workers
            labels = ",".join(kv for kv in (m.group(2) or "").split(",") if kv and not kv.startswith("worker="))
            key = m.group(1) + (f"{{{labels}}}" if labels else "")
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def start_stack(state_dir: str) -> tuple[subprocess.Popen[bytes], int]:
    env = lifetime.child_env({**os.environ, auth.ENV_SECRET: SECRET, "PYTHONUNBUFFERED": "1"})
    cmd = [sys.executable, "-m", "sidecar", "run", "--host", "127.0.0.1", "--port", "0", "--no-demo",
           "--status-interval", "0", "--instance", f"ba{uuid.uuid4().hex[:8]}", "--log-level", "WARNING",
           "--state-dir", state_dir]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    port = 0
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        m = re.search(r"sidecar listening on ws://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
        if not line and proc.poll() is not None:
            raise RuntimeError("the stack exited before listening")
    if not port:
        proc.kill()
        raise RuntimeError("the stack never said it was listening")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            if r.status == 200:
                return proc, port
        time.sleep(0.05)  # polling /healthz: there is no event to await across processes
    proc.kill()
    raise RuntimeError("engine never attached")


def cpu_s(p: psutil.Process | None) -> float:
    if p is None:
        return math.nan
    t = p.cpu_times()
    return t.user + t.system


class Admin:
    """One admin connection (picows) that counts what it receives, per message type."""

    def __init__(self) -> None:
        self.counting = False
        self.messages: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.snapshot_bytes = 0
        self.snapshot_rows = 0
        self.got_snapshot = asyncio.Event()
        self.transport: Any = None

    async def open(self, url: str, name: str) -> None:
        from picows import WSListener, WSMsgType, ws_connect

        admin = self

        class Listener(WSListener):
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type is not WSMsgType.TEXT:
                    return
                data = frame.get_payload_as_bytes()
                m = json.loads(data)
                t = m.get("type", "?")
                if t == "welcome":
                    transport.send(WSMsgType.TEXT, json.dumps({"type": "subscribe", "topics": TOPICS}).encode())
                elif t == "fleet" and m.get("full") and not admin.got_snapshot.is_set():
                    admin.snapshot_bytes, admin.snapshot_rows = len(data), len(m["drivers"])
                    admin.got_snapshot.set()
                    return
                if admin.counting:
                    admin.messages[t] += 1
                    admin.bytes[t] += len(data)

        token = auth.mint(SECRET, "admin", name)
        self.transport, _ = await ws_connect(Listener, f"{url}/ws/admin?token={token}", max_frame_size=64 << 20)
        await asyncio.wait_for(self.got_snapshot.wait(), 60)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.disconnect()


async def measure(port: int, side: psutil.Process, engine: psutil.Process | None, loader: psutil.Process,
                  seconds: float, admins: int) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}"
    opened = [Admin() for _ in range(admins)]
    for i, a in enumerate(opened):
        await a.open(url, f"bench{i}")
    await asyncio.sleep(1.0)  # past the snapshot(s): measure the steady state
    loop = asyncio.get_running_loop()
    m0 = await loop.run_in_executor(None, metrics, port)
    c0, e0, l0, t0 = cpu_s(side), cpu_s(engine), cpu_s(loader), time.monotonic()
    for a in opened:
        a.counting = True
    await asyncio.sleep(seconds)
    for a in opened:
        a.counting = False
    c1, e1, l1, t1 = cpu_s(side), cpu_s(engine), cpu_s(loader), time.monotonic()
    m1 = await loop.run_in_executor(None, metrics, port)
    for a in opened:
        a.close()
    wall = t1 - t0
    res: dict[str, Any] = {
        "admins": admins, "seconds": wall,
        "sidecar_cpu": (c1 - c0) / wall, "engine_cpu": (e1 - e0) / wall, "load_cpu": (l1 - l0) / wall,
        "positions_in_per_s": (m1["dgdo_frames_in_total"] - m0["dgdo_frames_in_total"]) / wall,
        "slow_reader_closes": m1.get('dgdo_closed_total{reason="slow_reader"}', 0)
        - m0.get('dgdo_closed_total{reason="slow_reader"}', 0),
    }
    if opened:
        a = opened[0]
        res["admin_msgs_per_s"] = sum(a.messages.values()) / wall
        res["admin_bytes_per_s"] = sum(a.bytes.values()) / wall
        res["admin_by_type"] = {t: {"msgs_per_s": a.messages[t] / wall, "bytes_per_s": a.bytes[t] / wall}
                                for t in sorted(a.messages)}
        res["snapshot_bytes"] = a.snapshot_bytes
        res["snapshot_rows"] = a.snapshot_rows
    return res


async def bench(drivers: int, seconds: float, repeats: int, rate_hz: float) -> tuple[list[dict[str, Any]], Any]:
    state = tempfile.TemporaryDirectory(prefix="dgdo-bench-admin-")
    proc, port = start_stack(state.name)
    loader_proc: subprocess.Popen[str] | None = None
    try:
        side = psutil.Process(proc.pid)
        engine = next((c for c in side.children() if "dgdo-engine" in " ".join(c.cmdline())), None)
        log(f"stack on port {port}; connecting {drivers} drivers")
        loader_proc = subprocess.Popen(
            [sys.executable, __file__, "--load", f"ws://127.0.0.1:{port}", "--drivers", str(drivers),
             "--rate", str(rate_hz)],
            stdout=subprocess.PIPE, text=True, env=lifetime.child_env(dict(os.environ)))
        assert loader_proc.stdout is not None
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        line = await loop.run_in_executor(None, loader_proc.stdout.readline)
        if not line.startswith("connected"):
            raise RuntimeError(f"the load process failed: {line!r}")
        log(f"{line.strip()} drivers in {time.monotonic() - t0:.1f} s; warming up")
        loader = psutil.Process(loader_proc.pid)
        await asyncio.sleep(max(3.0, seconds / 4))
        runs = []
        for r in range(repeats):
            for admins in (0, 1, 4):
                res = await measure(port, side, engine, loader, seconds, admins)
                res["repeat"] = r
                runs.append(res)
                log(f"run {r + 1}/{repeats}, {admins} admin(s): sidecar CPU {res['sidecar_cpu']:.3f}, "
                    f"positions in {res['positions_in_per_s']:,.0f}/s"
                    + (f", to the admin {res['admin_msgs_per_s']:.1f} msg/s {res['admin_bytes_per_s'] / 1024:,.1f}"
                       f" KiB/s" if admins else ""))
        loader_proc.send_signal(signal.SIGTERM)
        tail = await loop.run_in_executor(None, loader_proc.stdout.read)
        return runs, tail.strip()
    finally:
        if loader_proc is not None and loader_proc.poll() is None:
            loader_proc.kill()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        state.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="200 drivers, short windows: checks that everything runs")
    p.add_argument("--drivers", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None, help="measurement window per run")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--rate", type=float, default=1.0, help="positions per driver per second")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    a = p.parse_args()
    drivers = a.drivers or (200 if a.smoke else 10_000)
    if a.load:
        import uvloop

        uvloop.run(load(a.load, drivers, a.rate))
        return 0
    # Each driver is a socket here and one in the sidecar: raise the fd limit as far as allowed.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if drivers + 200 > hard:
        raise SystemExit(f"bench: {drivers} drivers need more file descriptors than the limit {hard} allows")
    seconds = a.seconds or (3.0 if a.smoke else 20.0)
    repeats = a.repeats or (1 if a.smoke else 2)
    import uvloop

    runs, tail = uvloop.run(bench(drivers, seconds, repeats, a.rate))

    def med(admins: int, key: str) -> float:
        vals = [r[key] for r in runs if r["admins"] == admins and key in r]
        return statistics.median(vals) if vals else math.nan

    mode = "smoke" if a.smoke else "full"
    base = med(0, "sidecar_cpu")
    print(f"## Admin feed benchmark ({mode})\n\nMachine: {one_line(describe())}\n")
    print(f"{drivers:,} drivers connected over the public protocol, each sending `driver_location` {a.rate:g}/s; "
          f"median of {repeats} windows of {seconds:g} s. Load process: {tail}.\n")
    print("| admins | positions in/s | sidecar CPU | vs no admin | engine CPU | load CPU | "
          "to one admin: msg/s | to one admin: KiB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for admins in (0, 1, 4):
        cpu = med(admins, "sidecar_cpu")
        print(f"| {admins} | {med(admins, 'positions_in_per_s'):,.0f} | {cpu:.3f} | "
              f"{'' if admins == 0 else f'{cpu - base:+.3f}'} | {med(admins, 'engine_cpu'):.3f} | "
              f"{med(admins, 'load_cpu'):.3f} | "
              + (f"{med(admins, 'admin_msgs_per_s'):.1f} | {med(admins, 'admin_bytes_per_s') / 1024:,.1f} |"
                 if admins else "– | – |"))
    one = [r for r in runs if r["admins"] == 1]
    if one:
        last = one[-1]
        print("\nTo one admin, by message type (last window): "
              + ", ".join(f"`{t}` {v['msgs_per_s']:.2f} msg/s {v['bytes_per_s'] / 1024:,.1f} KiB/s"
                          for t, v in last["admin_by_type"].items())
              + f". The full snapshot on subscribe: {last['snapshot_rows']:,} drivers in "
                f"{last['snapshot_bytes'] / 1024:,.0f} KiB. Without batching, every fix would be a message: "
                f"{med(1, 'positions_in_per_s'):,.0f} msg/s.")
    closes = sum(r["slow_reader_closes"] for r in runs)
    print(f"\nSlow-reader closes during the windows: {closes:g}. CPU is in cores (1.0 = one core busy).")
    result = {"mode": mode, "machine": describe(), "drivers": drivers, "rate_hz": a.rate, "seconds": seconds,
              "repeats": repeats, "runs": runs, "load": tail}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
