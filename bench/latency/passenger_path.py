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

Two ways of sending, both measured per sample (perf_counter_ns just before the driver's send ->
at the passenger's frame, one process):

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

from sidecar import lifetime

HERE = Path(__file__).resolve().parent
ROOT = common.ROOT
PY = sys.executable
BARE, FASTAPI, STACK, STACK_JOURNAL = "bare picows relay", "fastapi relay", "stack", "stack journal"
VARIANTS = [BARE, FASTAPI, STACK, STACK_JOURNAL]
MODES = ["one at a time", "burst"]
LAT0, LON0 = 30.0, 68.78
PAIR_SPACING_DEG = 0.2  # ~22 km between pairs: each passenger is matched with its own driver only
TEXT = WSMsgType.TEXT


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    return lifetime.child_env(dict(os.environ, DGDO_JWT_SECRET=common.JWT_SECRET, PYTHONUNBUFFERED="1"))


# ---- the client -------------------------------------------------------------------------------


class Timing:
    """Sends awaiting their passenger's frame: (pair, sample) -> (send ns, future)."""

    def __init__(self) -> None:
        self.pending: dict[tuple[int, int], tuple[int, asyncio.Future[int]]] = {}
        self.samples: list[int] = []

    def arrived(self, pair: int, lon: float, t: int) -> None:
        key = (pair, round((lon - LON0) * 1e6))
        got = self.pending.pop(key, None)
        if got is not None:
            sent, fut = got
            self.samples.append(t - sent)
            if not fut.done():
                fut.set_result(t)


class Peer(WSListener):
    def __init__(self, timing: Timing, pair: int, passenger: bool) -> None:
        self.timing = timing
        self.pair = pair
        self.passenger = passenger
        self.msgs: list[dict] = []
        self.changed = asyncio.Event()
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        t = time.perf_counter_ns()
        if frame.msg_type is not TEXT:
            if frame.msg_type is WSMsgType.CLOSE:
                transport.disconnect()
            return
        m = json.loads(frame.get_payload_as_bytes())
        if self.passenger and m.get("type") == "driver_location":
            self.timing.arrived(self.pair, m["lon"], t)
            return
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


def peer_factory(timing: Timing, pair: int, passenger: bool):
    return lambda *_: Peer(timing, pair, passenger)


def position(pair: int, sample: int) -> dict:
    return {"type": "driver_location", "lat": LAT0 + pair * PAIR_SPACING_DEG, "lon": LON0 + sample * 1e-6,
            "heading": 90.0, "speed_kmh": 30.0}


async def open_pairs(port: int, pairs: int, timing: Timing, tokens: bool) -> list[tuple[Peer, Peer]]:
    out = []
    for i in range(pairs):
        peers = []
        for role, prefix in (("driver", "pd"), ("passenger", "pp")):
            app_id = f"{prefix}{i}"
            url = f"ws://127.0.0.1:{port}/ws/{role}/{app_id}"
            if tokens:
                url += f"?token={common.token(role, app_id)}"
            # (picows calls the factory with the request and response: no defaults to capture with)
            _tr, peer = await ws_connect(peer_factory(timing, i, role == "passenger"), url, enable_auto_ping=False)
            peers.append(peer)
        out.append((peers[0], peers[1]))
    for d, p in out:
        await d.expect("welcome")
        await p.expect("welcome")
    return out


async def start_ride(i: int, d: Peer, p: Peer) -> None:
    """Driver online at the pair's spot, a ride requested there, offered to it, accepted: from
    now on its positions go to this passenger."""
    lat = LAT0 + i * PAIR_SPACING_DEG
    await d.request({"type": "driver_status", "status": "online", "id": "s"})
    await d.request({"type": "driver_location", "lat": lat, "lon": LON0, "id": "l"})
    ack = await p.request({"type": "ride_request", "id": "r", "pickup": {"lat": lat + 0.002, "lon": LON0},
                           "dropoff": {"lat": lat + 0.02, "lon": LON0 + 0.02}})
    order = ack["order_id"]
    await d.expect("new_order", order_id=order)
    await d.request({"type": "order_accept", "order_id": order, "id": "a"})


async def measure(pairs: list[tuple[Peer, Peer]], timing: Timing, singles: int, bursts: int,
                  gap_s: float, interval_s: float, sample0: int) -> dict[str, list[int]]:
    loop = asyncio.get_running_loop()
    n = len(pairs)
    sample = sample0
    out: dict[str, list[int]] = {}

    async def one(i: int) -> asyncio.Future[int]:
        nonlocal sample
        sample += 1
        fut = loop.create_future()
        m = json.dumps(position(i, sample)).encode()
        tr = pairs[i][0].transport
        assert tr is not None
        timing.pending[(i, sample)] = (time.perf_counter_ns(), fut)
        tr.send(TEXT, m)
        return fut

    # Warm-up: every pair once (the first position after the accept also moves the order to arriving).
    for _ in range(2):
        futs = [await one(i) for i in range(n)]
        await asyncio.wait(futs, timeout=5)
        await asyncio.sleep(interval_s)
    timing.samples.clear()
    timing.pending.clear()

    for k in range(singles):
        fut = await one(k % n)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, 2)
        await asyncio.sleep(gap_s)
    out["one at a time"], timing.samples = timing.samples, []
    timing.pending.clear()

    next_at = loop.time()
    for _ in range(bursts):
        next_at += interval_s
        payloads = []
        for i in range(n):
            sample += 1
            payloads.append((i, sample, json.dumps(position(i, sample)).encode(), loop.create_future()))
        for i, s, m, fut in payloads:
            tr = pairs[i][0].transport
            assert tr is not None
            timing.pending[(i, s)] = (time.perf_counter_ns(), fut)
            tr.send(TEXT, m)
        await asyncio.wait([f for *_, f in payloads], timeout=2)
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    out["burst"], timing.samples = timing.samples, []
    timing.pending.clear()
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


def start_server(variant: str, port: int, logf, state: Path, extra: list[str]) -> subprocess.Popen:
    if variant in (BARE, FASTAPI):
        kind = "picows" if variant == BARE else "fastapi"
        proc = subprocess.Popen([PY, str(HERE / "relays.py"), "--kind", kind, "--port", str(port)],
                                env=child_env(), stdout=logf, stderr=logf, cwd=str(ROOT))
        wait_port(port, proc)
        return proc
    journal = ["--no-journal"] if variant == STACK else ["--state-dir", str(state / f"j{port}")]
    proc = subprocess.Popen([str(Path(PY).with_name("dgdo")), "run", "--no-demo", "--port", str(port),
                             "--instance", f"pp{os.getpid()}x{port}", "--status-interval", "0",
                             "--log-level", "WARNING", *journal, *extra],
                            env=child_env(), stdout=logf, stderr=logf, cwd=str(ROOT))
    wait_healthy(port, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sidecar_pid(proc: subprocess.Popen) -> int:
    """`dgdo run` is the sidecar itself (the engine is its child)."""
    return proc.pid


async def run_variant(variant: str, args: argparse.Namespace, logf, state: Path, rep: int) -> dict[str, list[int]]:
    port = free_port()
    stack = variant in (STACK, STACK_JOURNAL)
    extra = ["--idle-spin-us", str(args.idle_spin_us)] if stack and args.idle_spin_us is not None else []
    proc = start_server(variant, port, logf, state, extra)
    timing = Timing()
    prof = None
    try:
        pairs = await open_pairs(port, args.pairs, timing, tokens=stack)
        if stack:
            for i, (d, p) in enumerate(pairs):
                await start_ride(i, d, p)
        if args.profile and stack:
            pyspy = Path(PY).with_name("py-spy")
            if pyspy.exists():
                dest = Path(args.profile) / f"pyspy-passenger-path-{variant.replace(' ', '-')}-r{rep}.txt"
                prof = subprocess.Popen([str(pyspy), "record", "-p", str(sidecar_pid(proc)), "-d", "60", "-r", "1000",
                                         "--format", "raw", "-o", str(dest), "--nonblocking"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        got = await measure(pairs, timing, args.singles, args.bursts, args.gap_s, args.interval_s, 0)
        for d, p in pairs:
            for peer in (d, p):
                if peer.transport is not None:
                    peer.transport.disconnect()
        return got
    finally:
        if prof is not None:
            prof.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                prof.wait(10)
        stop(proc)


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
            for base, tag in ((BARE, "bare"), (FASTAPI, "fastapi")):
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
        g50, g99, gfa = st["p50_x_bare"] <= 2.0, st["p99_x_bare"] <= 2.5, (st.get("p50_x_fastapi") or 9) < 1.0
        out.append(f"{mode}: stack p50 {st['p50_x_bare']:.2f}× bare (goal ≤ 2.0: {'met' if g50 else 'MISSED'}), "
                   f"p99 {st['p99_x_bare']:.2f}× (goal ≤ 2.5: {'met' if g99 else 'MISSED'}), "
                   f"p50 {st.get('p50_x_fastapi') or 0:.2f}× FastAPI's (goal < 1: {'met' if gfa else 'MISSED'})")
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
        "",
        "| variant | mode | n | p50 | p90 | p99 | max | p50 ×bare | p99 ×bare | p50 ×FastAPI | p50 ×bare per repeat |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        per = ", ".join(f"{x:.2f}" for x in r.get("p50_x_bare_per_repeat", []))

        def f(v: float | None) -> str:
            return "–" if v is None else f"{v:.2f}"

        lines.append(f"| {r['variant']} | {r['mode']} | {r['n']} | {r['p50']:.0f} | {r['p90']:.0f} | {r['p99']:.0f} | "
                     f"{r['max']:.0f} | {f(r.get('p50_x_bare'))} | {f(r.get('p99_x_bare'))} | "
                     f"{f(r.get('p50_x_fastapi'))} | {per} |")
    if res["goals"]:
        lines += ["", *[f"- {g}" for g in res["goals"]]]
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
    variants = args.variants.split(",") if args.variants else VARIANTS
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
    state = out_dir / f".state-path-{stamp}"
    with contextlib.ExitStack() as cleanup, open(f"{base}.log", "wb") as logf:
        cleanup.callback(shutil.rmtree, state, True)
        for rep in range(args.repeats):
            order = variants[rep % len(variants):] + variants[: rep % len(variants)]
            for v in order:
                t0 = time.monotonic()
                try:
                    got = await run_variant(v, args, logf, state, rep)
                except Exception as e:  # one broken variant must not lose the others
                    log(f"[path] rep {rep + 1} {v}: FAILED ({type(e).__name__}: {e})")
                    failures.append({"repeat": rep + 1, "variant": v, "error": f"{type(e).__name__}: {e}"})
                    continue
                for mode, ns in got.items():
                    per_rep[(v, mode, rep)] = s = pct(ns)
                    if s.get("n"):
                        log(f"[path] rep {rep + 1} {v:18s} {mode:13s} n={s['n']:5d} p50={s['p50']:7.0f} "
                            f"p99={s['p99']:7.0f} max={s['max']:7.0f} µs ({time.monotonic() - t0:.1f} s)")
    rows = analyse(per_rep, variants, args.repeats)
    res = {"machine": machine, "argv": sys.argv[1:], "repeats": args.repeats, "pairs": args.pairs,
           "singles": args.singles, "bursts": args.bursts, "gap_s": args.gap_s, "interval_s": args.interval_s,
           "idle_spin_us": args.idle_spin_us, "rows": rows, "goals": goals(rows), "failures": failures}
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
    return uvloop.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
