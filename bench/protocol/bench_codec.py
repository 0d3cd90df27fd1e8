"""Protocol micro-benchmark and the sidecar's driver_location ingest rate per core.

    python bench/protocol/bench_codec.py [--smoke] [--repeats R] [--seconds S] [--conns 4,16,64] [--json PATH]

1. Codec: µs per message, JSON vs msgpack, for decode + validate through the sidecar's own
   `Decoder.feed` (driver_location, ride_request) and `encode` (new_order, order_update,
   driver_location as pushed to a passenger). Median of R repeats of timeit loops.
2. Ingest: the real stack (`dgdo run --no-demo`: engine + sidecar, rate limits lifted with the
   sidecar's own flags) on 127.0.0.1, fed by a separate load process of N picows driver
   connections sending pre-encoded `driver_location` frames as fast as TCP lets them. Measured
   over S seconds: records the sidecar published to the engine (`dgdo_records_out_total`; frames
   decoded, `dgdo_frames_in_total`, are shown too), the sidecar process's CPU seconds (psutil,
   the engine's counted apart), and so records into the engine per sidecar CPU-second ("per
   core", the headline), against DESIGN §6's ≥ 100k/s. A run counts only if the sidecar sent
   nothing back (no errors, no rate_limited): a refused frame is not ingest. Median of R runs,
   per format.

Progress goes to stderr, a Markdown table to stdout. On a 2-vCPU machine the load process and
the engine share the cores with the sidecar; the per-CPU-second figure is what compares.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
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

from bench.machine import describe, one_line  # noqa: E402
from sidecar import auth, lifetime  # noqa: E402
from sidecar.events import DRIVER, PASSENGER  # noqa: E402
from sidecar.protocol import JSON, MSGPACK, Decoder, encode  # noqa: E402

TARGET_PER_CORE = 100_000
SECRET = "bench-protocol-secret-" + "0" * 32
NO_LIMITS = ["--positions-per-s", "1e12", "--positions-burst", "1e12",
             "--messages-per-s", "1e12", "--messages-burst", "1e12"]

DRIVER_LOCATION = {"type": "driver_location", "lat": 38.5605, "lon": 68.784, "heading": 90.0, "speed_kmh": 32.5,
                   "accuracy_m": 8.0}
RIDE_REQUEST = {"type": "ride_request", "id": "r1", "pickup": {"lat": 38.5598, "lon": 68.787},
                "dropoff": {"lat": 38.575, "lon": 68.795}}
NEW_ORDER = {"type": "new_order", "order_id": 1001, "passenger_id": "p1", "pickup": {"lat": 38.5598, "lon": 68.787},
             "dropoff": {"lat": 38.575, "lon": 68.795}, "distance_m": 610.2, "eta_s": 165.0, "expires_in_s": 15.0,
             "seq": 1, "ts": 1764090000000}
ORDER_UPDATE = {"type": "order_update", "order_id": 1001, "status": "accepted", "driver_id": "d1", "seq": 2,
                "ts": 1764090000000}
POSITION_PUSH = {"type": "driver_location", "order_id": 1001, "driver_id": "d1", "lat": 38.5605, "lon": 68.784,
                 "heading": 90.0, "speed_kmh": 32.5, "ts": 1764090000000}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- 1. codec ---------------------------------------------------------------------------


def per_call_us(fn: Any, number: int, repeats: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=repeats)
    return statistics.median(times) / number * 1e6


def codec(number: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, msg, role, conn_id in (("driver_location", DRIVER_LOCATION, DRIVER, "d1"),
                                     ("ride_request", RIDE_REQUEST, PASSENGER, "p1")):
        j, m = json.dumps(msg, separators=(",", ":")).encode(), msgpack.packb(msg)
        dec = Decoder(role, conn_id)
        assert dec.feed(False, True, j) == dec.feed(True, True, m)
        rows.append({"op": "decode+validate", "message": name, "bytes_json": len(j), "bytes_msgpack": len(m),
                     "json_us": per_call_us(lambda d=dec, p=j: d.feed(False, True, p), number, repeats),
                     "msgpack_us": per_call_us(lambda d=dec, p=m: d.feed(True, True, p), number, repeats)})
    for name, msg in (("new_order", NEW_ORDER), ("order_update", ORDER_UPDATE), ("driver_location", POSITION_PUSH)):
        rows.append({"op": "encode", "message": name, "bytes_json": len(encode(msg, JSON)),
                     "bytes_msgpack": len(encode(msg, MSGPACK)),
                     "json_us": per_call_us(lambda x=msg: encode(x, JSON), number, repeats),
                     "msgpack_us": per_call_us(lambda x=msg: encode(x, MSGPACK), number, repeats)})
    return rows


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

    async def drive(i: int) -> None:
        nonlocal sent
        token = auth.mint(SECRET, "driver", f"bench{i}")
        transport, listener = await ws_connect(Loader, f"{url}/ws/driver/bench{i}?token={token}")
        transport.send(WSMsgType.TEXT, b'{"type":"driver_status","status":"online"}')
        sent += 1
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

    t0, started = time.monotonic(), time.time()
    stop_at = t0 + seconds
    await asyncio.gather(*(drive(i) for i in range(conns)))
    return sent, time.monotonic() - t0, started


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([-0-9.e+]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def start_stack(state_dir: str) -> tuple[subprocess.Popen[bytes], int]:
    # Ends with us even after our kill -9 (sidecar/lifetime.py); its engine ends with it.
    env = lifetime.child_env({**os.environ, auth.ENV_SECRET: SECRET, "PYTHONUNBUFFERED": "1"})
    cmd = [sys.executable, "-m", "sidecar", "run", "--host", "127.0.0.1", "--port", "0", "--no-demo",
           "--status-interval", "0", "--instance", f"bp{uuid.uuid4().hex[:8]}", "--log-level", "WARNING",
           "--state-dir", state_dir, *NO_LIMITS]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        m = re.search(r"sidecar listening on ws://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
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


def settled_metrics(port: int) -> tuple[dict[str, float], float]:
    """/metrics once the frame counter stops moving (the sidecar has drained its sockets), and
    the wall-clock time it was last seen moving."""
    last, moved = metrics(port), time.time()
    while True:
        time.sleep(0.05)
        now = metrics(port)
        if now["dgdo_frames_in_total"] == last["dgdo_frames_in_total"]:
            return now, moved
        last, moved = now, time.time()


def ingest_once(conns: int, seconds: float, binary: bool) -> dict[str, float]:
    """One run: counters and CPU are read while the sidecar is idle, before and after the load.

    (A saturated worker answers /metrics late, so the window is the whole load, not a slice of it;
    the handful of handshakes it includes cost nothing next to millions of frames.)
    """
    state = tempfile.TemporaryDirectory(prefix="dgdo-bench-codec-")  # a fresh engine state per run
    proc, port = start_stack(state.name)
    try:
        side = psutil.Process(proc.pid)
        engine = next((c for c in side.children() if "dgdo-engine" in " ".join(c.cmdline())), None)
        cmd = [sys.executable, __file__, "--load", f"ws://127.0.0.1:{port}", "--conns", str(conns),
               "--seconds", str(seconds)] + (["--binary"] if binary else [])
        m0, _ = settled_metrics(port)
        c0 = side.cpu_times()
        e0 = engine.cpu_times() if engine else None
        loader = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        assert loader.returncode == 0, loader.stderr[-2000:]
        m1, last_frame = settled_metrics(port)
        c1 = side.cpu_times()
        e1 = engine.cpu_times() if engine else None
        sent, _sending, started = (float(x) for x in loader.stdout.split())
        elapsed = last_frame - started  # first frame sent -> last frame decoded (±50 ms)
        frames = m1["dgdo_frames_in_total"] - m0["dgdo_frames_in_total"]
        cpu = (c1.user + c1.system) - (c0.user + c0.system)
        res = {"frames": frames, "wall_s": elapsed, "frames_per_s": frames / elapsed, "sidecar_cpu_s": cpu,
               "sidecar_cpu_util": cpu / elapsed, "frames_per_cpu_s": frames / cpu if cpu > 0 else 0.0,
               "loader_sent": sent}
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
        return res
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        state.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny counts: checks that everything runs")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None, help="ingest window per run")
    p.add_argument("--conns", default=None, help="driver connections of the load process, a comma list (4,16,64)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--binary", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.load:
        import uvloop

        sent, elapsed, started = uvloop.run(load(a.load, int(a.conns or 8), a.seconds or 5, a.binary))
        print(sent, f"{elapsed:.6f}", f"{started:.6f}", flush=True)
        return 0
    repeats = a.repeats or (1 if a.smoke else 5)
    seconds = a.seconds or (1.5 if a.smoke else 4.0)
    sweep = [int(c) for c in (a.conns or ("4" if a.smoke else "4,16,64")).split(",")]
    number = 2_000 if a.smoke else 50_000

    log(f"codec: {repeats} x {number} calls per message")
    rows = codec(number, repeats)
    ingest: dict[str, list[dict[str, float]]] = {"json": [], "msgpack": []}
    for r in range(repeats):  # round-robin over formats and connection counts, rotated each repeat
        combos = [(fmt, c) for c in sweep for fmt in ("json", "msgpack")]
        combos = combos[r % len(combos):] + combos[: r % len(combos)]
        for fmt, conns in combos:
            res = ingest_once(conns, seconds, fmt == "msgpack")
            res["conns"] = conns
            ingest[fmt].append(res)
            log(f"ingest {fmt} x{conns} run {r + 1}/{repeats}: {res['records_to_engine_per_s']:,.0f} records/s "
                f"into the engine, sidecar CPU {res['sidecar_cpu_util']:.2f} -> {res['records_per_cpu_s']:,.0f} "
                f"records per CPU-second ({res['frames_per_cpu_s']:,.0f} frames)")

    def med(fmt: str, conns: int, key: str) -> float:
        vals = [r[key] for r in ingest[fmt] if r["conns"] == conns and key in r]
        return statistics.median(vals) if vals else float("nan")

    mode = "smoke" if a.smoke else "full"
    print(f"## Protocol benchmark ({mode})\n\nMachine: {one_line(describe())}\n")
    print(f"### Codec (median of {repeats} x {number} calls)\n")
    print("| op | message | JSON µs | msgpack µs | JSON/msgpack | bytes JSON | bytes msgpack |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['message']} | {r['json_us']:.2f} | {r['msgpack_us']:.2f} | "
              f"{r['json_us'] / r['msgpack_us']:.2f} | {r['bytes_json']} | {r['bytes_msgpack']} |")
    print(f"\n### Ingest of driver_location (median of {repeats} runs of {seconds:g} s; one load process)\n")
    print("| format | connections | records into the engine/s (wall) | sidecar CPU | "
          "records into the engine per sidecar CPU-second | vs 100k/s per core | "
          "frames per sidecar CPU-second | engine CPU |")
    print("|---|---|---|---|---|---|---|---|")
    summary: dict[str, dict[str, float]] = {}
    for fmt in ("json", "msgpack"):
        for conns in sweep:
            per_core = med(fmt, conns, "records_per_cpu_s")
            summary[f"{fmt}/{conns}"] = {k: med(fmt, conns, k) for k in (
                "frames_per_s", "sidecar_cpu_util", "frames_per_cpu_s", "engine_cpu_util", "records_to_engine_per_s",
                "records_per_cpu_s")}
            print(f"| {fmt} | {conns} | {med(fmt, conns, 'records_to_engine_per_s'):,.0f} | "
                  f"{med(fmt, conns, 'sidecar_cpu_util'):.2f} | {per_core:,.0f} | "
                  f"{per_core / TARGET_PER_CORE:.2f}x | {med(fmt, conns, 'frames_per_cpu_s'):,.0f} | "
                  f"{med(fmt, conns, 'engine_cpu_util'):.2f} |")
    print("\nEvery run: no reply, no rate_limited (asserted; the bench lifts the limits with the sidecar's flags)."
          " Records are those the sidecar published for the engine; behind a full ring, positions may coalesce"
          " per driver before they are written.")
    result = {"mode": mode, "machine": describe(), "repeats": repeats, "conns": sweep, "seconds": seconds,
              "codec": rows, "ingest_runs": ingest, "ingest": summary, "target_per_core": TARGET_PER_CORE}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
