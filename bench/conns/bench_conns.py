"""Memory per idle connection: the sidecar's RSS with N idle WebSocket connections, per connection.

    python bench/conns/bench_conns.py [--smoke] [--n 10000] [--repeats R] [--json PATH]

The real stack (`dgdo run --no-demo --no-journal`: the engine and the sidecar, the sidecar being
that process) on 127.0.0.1. The load client (bench/push/clients.py) is a separate process that
opens N passenger connections, each with its own token, and waits for every welcome: each is a
whole session (auth, registry, the engine's SESSION_STATE), then idle. Measured on the sidecar
process: RSS (and USS) after it is up and has served one warm-up connection (imports and lazy
state are paid), then with the N connections open, settled; the difference divided by N. A bare
picows server (bench/push/raw_server.py: a listener, a welcome, nothing else) is measured the
same way beside it: what picows and uvloop themselves cost per connection.

RLIMIT_NOFILE is raised to the hard limit here, and inherited by every process started (each side
holds N sockets). Goal (issue 9): ≤ 10 KB per connection at 10,000.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "latency"))
import common  # noqa: E402
import psutil  # noqa: E402
import uvloop  # noqa: E402

from bench.machine import describe, one_line  # noqa: E402
from bench.push.bench_push import Clients  # noqa: E402
from bench.push.clients import raise_nofile  # noqa: E402

PY = sys.executable
GOAL_KB = 10.0


log = common.log


free_port = common.free_port


child_env = common.child_env


def memory(p: psutil.Process) -> dict[str, float]:
    full = p.memory_full_info()
    return {"rss": full.rss, "uss": full.uss}


async def settled(p: psutil.Process, quiet_s: float = 0.5, limit_s: float = 10) -> dict[str, float]:
    """Memory once RSS stops moving (the last welcomes and session opens are done)."""
    last = memory(p)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet_s)
        now = memory(p)
        if abs(now["rss"] - last["rss"]) < 64 * 1024:
            return now
        last = now
    return last


def wait_up(port: int, proc: subprocess.Popen, path: str | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if path is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
        else:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",
                                                                      timeout=1) as r:
                if r.status == 200:
                    return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise TimeoutError(f"server on {port} did not come up")
        time.sleep(0.05)


def start(kind: str, port: int, logf) -> subprocess.Popen:
    if kind == "sidecar":
        cmd = [str(Path(PY).with_name("dgdo")), "run", "--no-demo", "--no-journal", "--port", str(port),
               "--instance", f"conns{os.getpid()}p{port}", "--status-interval", "0", "--log-level", "WARNING"]
        proc = subprocess.Popen(cmd, env=child_env(), stdout=logf, stderr=logf, cwd=str(ROOT))
        wait_up(port, proc, "/healthz")
    else:
        proc = subprocess.Popen([PY, str(ROOT / "bench" / "push" / "raw_server.py"), "--port", str(port)],
                                stdin=subprocess.PIPE, stdout=logf, stderr=logf, env=child_env(), cwd=str(ROOT))
        wait_up(port, proc, None)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def run_once(kind: str, n: int, logf) -> dict:
    port = free_port()
    proc = start(kind, port, logf)
    extra = [] if kind == "sidecar" else ["--no-token"]
    try:
        p = psutil.Process(proc.pid)
        warm = await Clients.start(port, 1, *extra, "--prefix", "warm")  # imports and first-use state paid
        await warm.stop()
        before = await settled(p)
        t0 = time.monotonic()
        clients = await Clients.start(port, n, *extra, timeout=600)
        connect_s = time.monotonic() - t0
        try:
            after = await settled(p)
            still = (await clients.count())["open"]
        finally:
            await clients.stop()
        return {"kind": kind, "n": clients.info["n"], "open_at_end": still, "connect_s": round(connect_s, 2),
                "rss_before": before["rss"], "rss_after": after["rss"], "uss_before": before["uss"],
                "uss_after": after["uss"], "rss_kb_per_conn": (after["rss"] - before["rss"]) / n / 1024,
                "uss_kb_per_conn": (after["uss"] - before["uss"]) / n / 1024}
    finally:
        stop(proc)


def markdown(res: dict) -> str:
    lines = [
        f"## Memory per idle connection{' (smoke)' if res['smoke'] else ''}",
        "",
        f"Machine: {res['machine_line']}; RLIMIT_NOFILE {res['nofile']}",
        f"Command: `{res['command']}` — {res['repeats']} repeats; median. RSS of the serving process before "
        "(after one warm-up connection) and with N idle connections open (welcomed), settled.",
        "",
        f"| server | N | RSS before MB | RSS with N MB | RSS KB / conn | USS KB / conn | goal ≤ {GOAL_KB:g} KB |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        ok = "–" if r["kind"] != "sidecar" else ("met" if r["rss_kb_per_conn"] <= GOAL_KB else "missed")
        name = "sidecar (dgdo run)" if r["kind"] == "sidecar" else "bare picows server"
        lines.append(f"| {name} | {r['n']} | {r['rss_before'] / 2**20:.1f} | {r['rss_after'] / 2**20:.1f} | "
                     f"{r['rss_kb_per_conn']:.1f} | {r['uss_kb_per_conn']:.1f} | {ok} |")
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    n = args.n or (200 if args.smoke else 10_000)
    repeats = args.repeats or 1
    nofile = raise_nofile()
    if nofile < n + 1000:
        log(f"[conns] RLIMIT_NOFILE hard limit {nofile} is below N + 1000 ({n + 1000}): connections will fail")
    machine = describe()
    log(f"[conns] {one_line(machine)}; RLIMIT_NOFILE {nofile}; N = {n}, {repeats} repeats")
    out_dir = Path(args.out) if args.out else ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"sidecar": [], "raw": []}
    with open(out_dir / f"conns-{time.strftime('%Y%m%d-%H%M%S')}.log", "wb") as logf:
        for rep in range(repeats):
            for kind in ("sidecar", "raw") if rep % 2 == 0 else ("raw", "sidecar"):
                r = await run_once(kind, n, logf)
                runs[kind].append(r)
                log(f"[conns] rep {rep + 1} {kind:8s} N={r['n']} in {r['connect_s']} s: RSS "
                    f"{r['rss_before'] / 2**20:.1f} -> {r['rss_after'] / 2**20:.1f} MB = "
                    f"{r['rss_kb_per_conn']:.1f} KB/conn (USS {r['uss_kb_per_conn']:.1f})")
    rows = []
    for kind, rs in runs.items():
        row = {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], int | float)}
        row["kind"] = kind
        row["n"] = rs[0]["n"]
        rows.append(row)
    cmd = "make bench-conns" + (" ARGS=--smoke" if args.smoke else "")
    res = {"command": cmd, "machine": machine, "machine_line": one_line(machine), "smoke": args.smoke,
           "nofile": nofile, "repeats": repeats, "rows": rows, "runs": runs, "goal_kb": GOAL_KB}
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="N = 200 (for tests)")
    ap.add_argument("--n", type=int, default=0, help="idle connections (default 10000)")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--json", default="")
    ap.add_argument("--out", default="", help="directory for the process logs (default bench/results)")
    return uvloop.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
