"""What TLS in the sidecar costs: per connection and per message, plain ws:// beside wss://, one run.

    python bench/tls/bench_tls.py [--smoke | --quick] [--json PATH]

Variants, each a production sidecar (`python -m sidecar sidecar`) attached to bench/latency/feeder.py
playing the engine over the real control socket and rings:

* `plain`: ws://, as behind a TLS proxy or on loopback;
* `tls ec`: wss:// with an ECDSA P-256 certificate (what ACME CAs issue by default now);
* `tls rsa`: wss:// with an RSA 2048 certificate.

Certificates are made at start with the openssl CLI (sidecar/shell/tls.py `self_signed`); clients
trust them as their CA, host name checked. Measured, per variant:

* **handshake**: H connections opened one after another by one picows client in this process, each
  to its welcome (TCP, TLS, HTTP upgrade, auth, the engine's session open), then closed: the
  client's time connect → welcome (median, p90), and the sidecar's CPU over the whole loop / H.
  A full handshake every time (the client keeps no TLS session to resume).
* **memory**: M idle connections (bench/push/clients.py, its own process): the sidecar's RSS with
  them open minus before, / M.
* **push**: bench/push's sidecar run (N passengers, S seconds, the feeder never letting the sidecar
  idle): messages the sidecar writes per CPU-second of its process, and the ratio to plain.

The variants of one repeat run back to back, in a rotating order; medians over repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "latency"))
import common  # noqa: E402
import psutil  # noqa: E402
import uvloop  # noqa: E402
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect  # noqa: E402

from bench.machine import describe, one_line  # noqa: E402
from bench.push import bench_push  # noqa: E402
from bench.push.clients import raise_nofile  # noqa: E402
from sidecar.shell.tls import self_signed  # noqa: E402

lat = bench_push.lat
log = common.log
VARIANTS = ("plain", "tls ec", "tls rsa")


class _Welcomed(WSListener):
    def __init__(self, welcomed: asyncio.Future[None]) -> None:
        self.welcomed = welcomed

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY) and not self.welcomed.done():
            self.welcomed.set_result(None)
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()


def _tls_args(certs: tuple[Path, Path] | None) -> tuple[str, ...]:
    return ("--tls-cert", str(certs[0]), "--tls-key", str(certs[1])) if certs else ()


async def handshakes(certs: tuple[Path, Path] | None, h: int, logf) -> dict:
    st = lat.start_stack("ring", logf, sidecar_args=_tls_args(certs))
    ctx = ssl.create_default_context(cafile=str(certs[0])) if certs else None
    scheme = "wss" if certs else "ws"
    feeder = None
    try:
        side = psutil.Process(st.sidecar.pid)
        feeder = lat.Feeder(st.cmd_path)
        await feeder.open()
        await feeder.wait_ready()
        loop = asyncio.get_running_loop()

        async def one(i: int) -> float:
            app_id = f"hs{i}"
            url = f"{scheme}://127.0.0.1:{st.port}/ws/passenger/{app_id}?token={common.token('passenger', app_id)}"
            welcomed = loop.create_future()
            t0 = time.perf_counter()
            tr, _ = await ws_connect(lambda: _Welcomed(welcomed), url, ssl_context=ctx)
            await asyncio.wait_for(welcomed, 10)
            took = time.perf_counter() - t0
            tr.disconnect()
            await tr.wait_disconnected()
            return took

        for i in range(min(20, h)):  # warm-up: imports, lazy state, the first session's costs
            await one(-1 - i)
        c0 = bench_push.cpu_s(side)
        times = [await one(i) for i in range(h)]
        cpu = bench_push.cpu_s(side) - c0
        await feeder.quit()
        feeder = None
        times.sort()
        return {"n": h, "median_ms": 1000 * statistics.median(times),
                "p90_ms": 1000 * times[int(0.9 * (len(times) - 1))], "cpu_ms_per_conn": 1000 * cpu / h}
    finally:
        st.stop()


async def memory(certs: tuple[Path, Path] | None, m: int, logf) -> dict:
    st = lat.start_stack("ring", logf, sidecar_args=_tls_args(certs))
    clients = None
    feeder = None
    try:
        side = psutil.Process(st.sidecar.pid)
        feeder = lat.Feeder(st.cmd_path)
        await feeder.open()
        await feeder.wait_ready()
        trust = ("--cafile", str(certs[0])) if certs else ()
        warm = await bench_push.Clients.start(st.port, 1, "--prefix", "warm", *trust)
        await warm.stop()
        await asyncio.sleep(0.3)  # the warm-up connection's close is processed
        before = side.memory_info().rss
        clients = await bench_push.Clients.start(st.port, m, *trust)
        await asyncio.sleep(0.5)  # session opens settle
        after = side.memory_info().rss
        await feeder.quit()
        feeder = None
        return {"n": clients.info["n"], "kb_per_conn": (after - before) / 1024 / m}
    finally:
        if clients is not None:
            await clients.stop()
        st.stop()


def markdown(res: dict) -> str:
    rows = res["rows"]
    p = rows["plain"]

    def ratio(v: str, key: str, sub: str) -> str:
        base = p[key][sub]
        return f" ({rows[v][key][sub] / base:.2f}×)" if base and v != "plain" else ""

    head = "| | " + " | ".join(f"`{v}`" for v in VARIANTS) + " |"
    lines = [
        f"## TLS cost in the sidecar{' (smoke)' if res['smoke'] else ''}",
        "",
        f"Machine: {res['machine_line']}",
        f"Command: `{res['command']}` — {res['repeats']} repeat(s); medians over repeats; (×) = ratio to plain.",
        "",
        head,
        "|---|" + "---:|" * len(VARIANTS),
        "| connect → welcome, median ms (one at a time, "
        f"{res['h']} per repeat) | " + " | ".join(f"{rows[v]['handshake']['median_ms']:.2f}"
                                                 f"{ratio(v, 'handshake', 'median_ms')}" for v in VARIANTS) + " |",
        "| connect → welcome, p90 ms | " + " | ".join(f"{rows[v]['handshake']['p90_ms']:.2f}" for v in VARIANTS) + " |",
        "| sidecar CPU per connection (open + close), ms | " + " | ".join(
            f"{rows[v]['handshake']['cpu_ms_per_conn']:.2f}{ratio(v, 'handshake', 'cpu_ms_per_conn')}"
            for v in VARIANTS) + " |",
        f"| sidecar memory per idle connection ({res['m']} open), KB | " + " | ".join(
            f"{rows[v]['memory']['kb_per_conn']:.1f}{ratio(v, 'memory', 'kb_per_conn')}" for v in VARIANTS) + " |",
        f"| push: messages per sidecar CPU-second ({res['n']} passengers) | " + " | ".join(
            f"{rows[v]['push']['per_cpu_s']:,.0f}{ratio(v, 'push', 'per_cpu_s')}" for v in VARIANTS) + " |",
        "| push: sidecar CPU µs per message | " + " | ".join(
            f"{1e6 / rows[v]['push']['per_cpu_s']:.2f}" if rows[v]["push"]["per_cpu_s"] else "-" for v in VARIANTS)
        + " |",
    ]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    if args.smoke:
        h, m, n, seconds, repeats = 20, 50, 50, 0.5, 1
    elif args.quick:
        h, m, n, seconds, repeats = 200, 1000, 1000, 2.0, 1
    else:
        h, m, n, seconds, repeats = 500, 2000, 1000, 3.0, 3
    repeats = args.repeats or repeats
    nofile = raise_nofile()
    machine = describe()
    log(f"[tls] {one_line(machine)}; RLIMIT_NOFILE {nofile}; {h} handshakes, {m} idle, push to {n} x {seconds} s, "
        f"{repeats} repeat(s)")
    out_dir = Path(args.out) if args.out else ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    logpath = out_dir / f"tls-{time.strftime('%Y%m%d-%H%M%S')}.log"
    runs: dict[str, dict[str, list[dict]]] = {v: {"handshake": [], "memory": [], "push": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp, open(logpath, "wb") as logf:
        certs = {"plain": None, "tls ec": self_signed(Path(tmp) / "ec", key_type="ec"),
                 "tls rsa": self_signed(Path(tmp) / "rsa", key_type="rsa")}
        for rep in range(repeats):
            order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
            for v in order:
                hs = await handshakes(certs[v], h, logf)
                mem = await memory(certs[v], m, logf)
                push = await bench_push.run_sidecar(n, seconds, logf, tls=certs[v])
                for key, r in (("handshake", hs), ("memory", mem), ("push", push)):
                    runs[v][key].append(r)
                log(f"[tls] rep {rep + 1} {v:7s}: connect→welcome {hs['median_ms']:.2f} ms median, "
                    f"{hs['cpu_ms_per_conn']:.2f} CPU-ms/conn; {mem['kb_per_conn']:.1f} KB/idle conn; "
                    f"push {push['per_cpu_s']:,.0f} msgs/CPU-s ({push['received']:,} received)")
    rows = {v: {key: {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
                for key, rs in runs[v].items()} for v in VARIANTS}
    cmd = "make bench-tls" + (" ARGS=--smoke" if args.smoke else " ARGS=--quick" if args.quick else "")
    res = {"command": cmd, "machine": machine, "machine_line": one_line(machine), "smoke": args.smoke,
           "repeats": repeats, "h": h, "m": m, "n": n, "seconds": seconds, "rows": rows, "runs": runs}
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    log(f"[tls] process logs in {logpath}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few connections and 0.5 s of push (for tests)")
    ap.add_argument("--quick", action="store_true", help="one repeat: 200 handshakes, 1000 idle, 2 s of push")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--json", default="", help="write the results here too")
    ap.add_argument("--out", default="", help="directory for the process logs (default bench/results)")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return uvloop.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
