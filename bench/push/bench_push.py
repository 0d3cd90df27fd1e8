"""Push throughput: messages the sidecar writes per CPU-second, against a bare picows send loop.

    python bench/push/bench_push.py [--smoke | --quick] [--n 100,1000,5000] [--repeats R] [--seconds S]
                                    [--workers 1,2] [--json PATH]

For each N (connected passengers), in each repeat, two runs side by side:

* `sidecar`: the production sidecar process (`python -m sidecar sidecar`), attached over the
  real control socket and memfd rings to bench/latency/feeder.py, which plays the engine. The
  feeder writes passes of one ORDER_UPDATE (reliable, numbered) and one DRIVER_POSITION for
  every passenger, the next pass when the sidecar has drained half of the previous one: the
  sidecar is never idle and the ring never full. Counted: `dgdo_messages_out_total` (/metrics)
  over S seconds, divided by the sidecar process's CPU seconds over the same span (psutil:
  user + system). The whole push path: drain, route, build, encode, picows send, kernel.
* `raw picows`: raw_server.py, a bare picows server writing the same two pre-encoded frames to
  every connection in a loop: picows' send and the kernel's write only. Same clients, same
  measurement. `raw batched`: the same, both frames of a pass in one write: what a message
  costs when a write carries two.

`--baseline DIR` adds `previous sidecar`: the same run with the sidecar package of another
checkout (`python -m sidecar` run from DIR, e.g. a worktree of the previous commit), in every
repeat beside this one, and the ratio of the two.

`--workers 1,2` adds `sidecar 2 workers` (any N): N sidecar processes (`--worker 1..N`) on the one
port (SO_REUSEPORT), all attached to the one feeder, which writes each passenger's records to the
ring of the worker its session opened on (the kernel chose it by a hash of the client's addresses;
the feeder learns it from the SESSION_OPEN records, which carry the worker). Counted: the sum of
each worker's `dgdo_messages_out_total` (each worker's own `--metrics-port`) over the sum of the
N processes' CPU seconds, and messages per second per host (wall), with the ratio of each to one
worker's in the same repeat. The feeder's and the clients' CPU are shown too: on a small machine
they take the cores the extra worker would need.

The clients (clients.py, N picows connections that count frames) run in their own process.
All three processes share the machine's cores: the per-CPU-second figure is what compares;
wall-clock rates are shown too. Goal (issue 9): ≥ 200k messages per sidecar CPU-second.
RLIMIT_NOFILE is raised to the hard limit here and inherited by every process started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "latency"))
import psutil  # noqa: E402
import uvloop  # noqa: E402

from bench.machine import describe, host_busy, one_line  # noqa: E402
from bench.push.clients import raise_nofile  # noqa: E402

HERE = Path(__file__).resolve().parent
PY = sys.executable
GOAL = 200_000
KINDS = ("sidecar", "raw", "raw batched")
BASELINE = "previous sidecar"  # --baseline: another checkout's sidecar, same feeder, same clients


def sidecar_kind(workers: int) -> str:
    return "sidecar" if workers == 1 else f"sidecar {workers} workers"


def _latency_runner():
    """bench/latency/run.py: its stack starter (feeder + sidecar) and feeder client, reused as they are."""
    spec = importlib.util.spec_from_file_location("latency_run", ROOT / "bench" / "latency" / "run.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["latency_run"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


lat = _latency_runner()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def messages_out(port: int, tls: ssl.SSLContext | None = None, worker: int = 1) -> float:
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5, context=tls) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(f'dgdo_messages_out_total{{worker="{worker}"}} '):
                return float(line.split()[-1])
    raise RuntimeError("no dgdo_messages_out_total in /metrics")


def messages_out_all(st, tls: ssl.SSLContext | None = None) -> float:
    """Messages written by every worker of the stack: one worker's public /metrics, or the sum of
    each worker's --metrics-port (with N workers on one port the public one answers for any one)."""
    if not st.metrics_ports:
        return messages_out(st.port, tls)
    return sum(messages_out(mp, None, w) for w, mp in enumerate(st.metrics_ports, 1))


class Clients:
    """clients.py as a child process: N connections, a frame count on request."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict) -> None:
        self.proc = proc
        self.info = info

    @classmethod
    async def start(cls, port: int, n: int, *extra: str, timeout: float = 180) -> Clients:
        proc = await asyncio.create_subprocess_exec(
            PY, str(HERE / "clients.py"), "--port", str(port), "--n", str(n), *extra,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=lat.child_env())
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line.startswith(b"ready "):
            proc.kill()
            raise RuntimeError(f"clients did not come up: {line!r}")
        return cls(proc, json.loads(line[6:]))

    async def count(self) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"count\n")
        await self.proc.stdin.drain()
        return json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 30))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
            await asyncio.wait_for(self.proc.wait(), 20)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def settle(clients: Clients, quiet_s: float = 0.2, limit_s: float = 10) -> dict:
    """The clients' count once it stops growing (frames still in flight when the phase ended)."""
    last = await clients.count()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet_s)
        now = await clients.count()
        if now["frames"] == last["frames"]:
            return now
        last = now
    return last


def profile(pid: int, seconds: float, dest: Path | None) -> subprocess.Popen | None:
    """py-spy (if installed next to this Python) on `pid` for `seconds`, raw format, native frames too
    (which needs the process paused per sample: the figures of a profiled run are not the headline)."""
    pyspy = Path(PY).with_name("py-spy")
    if dest is None or not pyspy.exists():
        return None
    return subprocess.Popen([str(pyspy), "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "500",
                             "--native", "--format", "raw", "-o", str(dest)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run_sidecar(n: int, seconds: float, logf, prof_dir: Path | None = None,
                      tls: tuple[Path, Path] | None = None, workers: int = 1, root: Path = ROOT) -> dict:
    """The sidecar's push run; with `tls` (cert, key) it serves wss:// and the clients trust that cert (bench/tls);
    with `workers` > 1, that many sidecar processes on the one port (CPU and messages summed over them);
    `root`: the checkout whose sidecar runs (--baseline)."""
    tls_args = ("--tls-cert", str(tls[0]), "--tls-key", str(tls[1])) if tls else ()
    st = lat.start_stack("ring", logf, sidecar_args=tls_args, workers=workers, sidecar_root=root)
    ctx = ssl.create_default_context(cafile=str(tls[0])) if tls else None
    clients = None
    try:
        sides = [psutil.Process(p.pid) for p in st.sidecars]
        feeder_proc = psutil.Process(st.procs[0].pid)
        clients = await Clients.start(st.port, n, *(("--cafile", str(tls[0])) if tls else ()))
        load = psutil.Process(clients.proc.pid)
        feeder = lat.Feeder(st.cmd_path)
        await feeder.open()
        await feeder.wait_ready()
        await asyncio.sleep(0.3)  # welcomes and session opens settle
        got0 = (await clients.count())["frames"]
        m0, c0 = messages_out_all(st, ctx), [cpu_s(p) for p in sides]
        f0, l0, h0 = cpu_s(feeder_proc), cpu_s(load), host_busy()
        side = sides[0]
        tag = "" if root == ROOT else "-baseline"
        prof = profile(side.pid, seconds,
                       prof_dir / f"pyspy-push-sidecar{tag}-{n}-{side.pid}.txt" if prof_dir else None)
        sent = await feeder.call({"cmd": "push", "passengers": n, "seconds": seconds})
        if prof is not None:
            await asyncio.get_running_loop().run_in_executor(None, prof.wait)
        m1, c1 = messages_out_all(st, ctx), [cpu_s(p) for p in sides]
        f1, l1, h1 = cpu_s(feeder_proc), cpu_s(load), host_busy()
        got = (await settle(clients))["frames"] - got0
        await feeder.quit()
        msgs, cpu = m1 - m0, sum(c1) - sum(c0)
        return {"messages": msgs, "cpu_s": cpu, "seconds": sent["seconds"], "per_cpu_s": msgs / cpu if cpu else 0.0,
                "per_s": msgs / sent["seconds"], "records": sent["records"], "received": got,
                "connections": clients.info["n"], "workers": workers,
                "worker_cpu_s": [b - a for a, b in zip(c0, c1, strict=True)],
                "feeder_cpu_s": f1 - f0, "clients_cpu_s": l1 - l0,
                "host_busy_cores": (h1[0] - h0[0]) / (h1[1] - h0[1]) * (psutil.cpu_count() or 1),
                "per_worker": sent.get("per_worker", {}), "unplaced": sent.get("unplaced", 0)}
    finally:
        if clients is not None:
            await clients.stop()
        st.stop()


async def run_raw(n: int, seconds: float, logf, batched: bool = False) -> dict:
    port = free_port()
    proc = subprocess.Popen([PY, str(HERE / "raw_server.py"), "--port", str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=logf, env=lat.child_env())
    clients = None
    try:
        lat._wait_port(port)
        raw = psutil.Process(proc.pid)
        clients = await Clients.start(port, n, "--no-token")
        got0 = (await clients.count())["frames"]
        c0 = cpu_s(raw)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"go {seconds}{' batched' if batched else ''}\n".encode())
        proc.stdin.flush()
        t0 = time.monotonic()
        line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        wall = time.monotonic() - t0
        c1 = cpu_s(raw)
        res = json.loads(line)
        got = (await settle(clients))["frames"] - got0
        cpu = c1 - c0
        return {"messages": res["sent"], "cpu_s": cpu, "seconds": wall, "per_cpu_s": res["sent"] / cpu if cpu else 0.0,
                "per_s": res["sent"] / wall, "skipped": res["skipped"], "received": got,
                "connections": clients.info["n"]}
    finally:
        if clients is not None:
            await clients.stop()
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.write(b"quit\n")
            proc.stdin.flush()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def markdown(res: dict) -> str:
    lines = [
        f"## Push throughput{' (smoke)' if res['smoke'] else ''}",
        "",
        f"Machine: {res['machine_line']}",
        f"Command: `{res['command']}` — {res['repeats']} repeats of {res['seconds']} s per run; medians over repeats;",
        "ratio = median of per-repeat (sidecar ÷ raw picows) ratios. Messages per CPU-second of the writing process.",
        "",
        "| N clients | sidecar msgs / CPU-s | raw picows msgs / CPU-s | sidecar ÷ raw | raw, 2 frames a write "
        f"msgs / CPU-s | sidecar msgs/s (wall) | raw msgs/s (wall) | sidecar CPU % | goal ≥ {GOAL // 1000}k |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    many = [w for w in res["workers"] if w != 1]
    for row in res["rows"]:
        s, r, b = row["sidecar"], row["raw"], row["raw batched"]
        ok = "met" if s["per_cpu_s"] >= GOAL else "missed"
        lines.append(f"| {row['n']} | {s['per_cpu_s']:,.0f} | {r['per_cpu_s']:,.0f} | {row['ratio']:.2f} | "
                     f"{b['per_cpu_s']:,.0f} | {s['per_s']:,.0f} | {r['per_s']:,.0f} | {s['cpu_pct']:.0f} | {ok} |")
    lines += ["", "`raw picows`: one picows `send` (one send(2)) per message; `raw, 2 frames a write`: the pass's "
                  "two frames for a client in one write, as the sidecar writes what one drain owes a client "
                  "(sidecar/wire/frames.py)."]
    if res.get("baseline"):
        lines += ["", f"### This sidecar against the previous one (`--baseline {res['baseline']}`, same run)", "",
                  "Ratio: median of per-repeat (this ÷ previous), the two run one after the other in each repeat.", "",
                  "| N clients | this sidecar msgs / CPU-s | previous sidecar msgs / CPU-s | this ÷ previous | "
                  "this CPU % | previous CPU % |", "|---:|---:|---:|---:|---:|---:|"]
        for row in res["rows"]:
            s, p = row["sidecar"], row[BASELINE]
            lines.append(f"| {row['n']} | {s['per_cpu_s']:,.0f} | {p['per_cpu_s']:,.0f} | {row['vs_baseline']:.2f} | "
                         f"{s['cpu_pct']:.0f} | {p['cpu_pct']:.0f} |")
    if many and 1 in res["workers"]:
        lines += ["", "### Push per host: N workers against 1 (same run)", "",
                  "Ratios: median of per-repeat (N workers ÷ 1 worker). CPU % of one core over the push window; "
                  "sidecar CPU summed over the workers; clients = the load process; placement = passengers per "
                  "worker (the kernel's choice).", "",
                  "| N clients | workers | msgs/s per host (wall) | × 1 worker | msgs / sidecar CPU-s | × 1 worker | "
                  f"sidecar CPU % | feeder CPU % | clients CPU % | host cores busy (of {psutil.cpu_count()}) | "
                  "placement |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in res["rows"]:
            for w in [1, *many]:
                k = sidecar_kind(w)
                m, x = row[k], row.get("scaling", {}).get(k, {})
                place = row.get("placement", {}).get(k, "")
                lines.append(f"| {row['n']} | {w} | {m['per_s']:,.0f} | {x.get('per_s', 1.0):.2f} | "
                             f"{m['per_cpu_s']:,.0f} | {x.get('per_cpu_s', 1.0):.2f} | {m['cpu_pct']:.0f} | "
                             f"{m['feeder_pct']:.0f} | {m['clients_pct']:.0f} | {m['host_busy_cores']:.2f} | {place} |")
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    if args.smoke:
        ns, repeats, seconds = [20, 100], 1, 0.5
    elif args.quick:
        ns, repeats, seconds = [100, 1000, 5000], 1, 2.0
    else:
        ns, repeats, seconds = [100, 1000, 5000], 3, 3.0
    ns = [int(x) for x in args.n.split(",")] if args.n else ns
    repeats = args.repeats or repeats
    seconds = args.seconds or seconds
    workers = [int(w) for w in args.workers.split(",")]
    kinds = (*(sidecar_kind(w) for w in workers), *((BASELINE,) if args.baseline else ()), *KINDS[1:])
    nofile = raise_nofile()
    machine = describe()
    log(f"[push] {one_line(machine)}; RLIMIT_NOFILE {nofile}; N = {ns}, {repeats} repeats of {seconds} s; "
        f"workers {workers}")
    runs: dict[tuple[int, str], list[dict]] = {}
    out_dir = Path(args.out) if args.out else ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    logpath = out_dir / f"push-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with open(logpath, "wb") as logf:
        for rep in range(repeats):
            for n in ns:
                order = kinds[rep % len(kinds):] + kinds[: rep % len(kinds)]
                for kind in order:
                    if kind == BASELINE:
                        r = await run_sidecar(n, seconds, logf, Path(args.profile) if args.profile else None,
                                              root=Path(args.baseline).resolve())
                    elif kind.startswith("sidecar"):
                        w = next(w for w in workers if sidecar_kind(w) == kind)
                        r = await run_sidecar(n, seconds, logf, Path(args.profile) if args.profile else None,
                                              workers=w)
                    else:
                        r = await run_raw(n, seconds, logf, batched=kind == "raw batched")
                    runs.setdefault((n, kind), []).append(r)
                    extra = (f"; feeder {r['feeder_cpu_s']:.2f}, clients {r['clients_cpu_s']:.2f} CPU-s"
                             if "feeder_cpu_s" in r else "")
                    log(f"[push] rep {rep + 1} N={n:5d} {kind:16s} {r['messages']:9,.0f} msgs in {r['cpu_s']:.2f} "
                        f"CPU-s = {r['per_cpu_s']:9,.0f}/CPU-s ({r['per_s']:9,.0f}/s wall; received {r['received']:,}"
                        f"{extra})")
    rows = []
    for n in ns:
        side, raw = runs[(n, "sidecar")], runs[(n, "raw")]
        med = {k: {key: statistics.median(x.get(key, 0.0) for x in runs[(n, k)])
                   for key in ("per_cpu_s", "per_s", "cpu_s", "seconds", "feeder_cpu_s", "clients_cpu_s",
                                 "host_busy_cores")}
               for k in kinds}
        for v in med.values():
            for key, pct in (("cpu_s", "cpu_pct"), ("feeder_cpu_s", "feeder_pct"), ("clients_cpu_s", "clients_pct")):
                v[pct] = 100 * v[key] / v["seconds"] if v["seconds"] else 0.0
        ratios = [s["per_cpu_s"] / r["per_cpu_s"] for s, r in zip(side, raw, strict=True) if r["per_cpu_s"]]
        row = {"n": n, **med, "ratio": statistics.median(ratios) if ratios else 0.0, "ratios": ratios,
               "runs": {k: runs[(n, k)] for k in kinds}}
        if args.baseline:
            row["vs_baseline"] = statistics.median(s["per_cpu_s"] / b["per_cpu_s"]
                                                   for s, b in zip(side, runs[(n, BASELINE)], strict=True)
                                                   if b["per_cpu_s"])
        if 1 in workers and len(workers) > 1:  # N workers against 1, pairing the runs of one repeat
            row["scaling"], row["placement"] = {}, {}
            for w in workers:
                k = sidecar_kind(w)
                row["scaling"][k] = {key: statistics.median(b[key] / a[key] for a, b in zip(side, runs[(n, k)],
                                                                                            strict=True) if a[key])
                                     for key in ("per_s", "per_cpu_s")}
                last = runs[(n, k)][-1].get("per_worker", {})
                row["placement"][k] = " / ".join(str(last[w_]["passengers"]) for w_ in sorted(last, key=int))
        rows.append(row)
    flags = [f for f in ("--smoke" if args.smoke else "--quick" if args.quick else "",
                         f"--workers {args.workers}" if workers != [1] else "") if f]
    cmd = "make bench-push" + (f" ARGS='{' '.join(flags)}'" if len(flags) > 1 else f" ARGS={flags[0]}" if flags else "")
    res = {"command": cmd, "machine": machine, "machine_line": one_line(machine), "smoke": args.smoke,
           "repeats": repeats, "seconds": seconds, "rows": rows, "goal_per_cpu_s": GOAL, "workers": workers,
           "baseline": args.baseline}
    md = markdown(res)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    log(f"[push] process logs in {logpath}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="N = 20, 100; one repeat of 0.5 s (for tests)")
    ap.add_argument("--quick", action="store_true", help="one repeat of 2 s")
    ap.add_argument("--n", default="", help="comma list of client counts (default 100,1000,5000)")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--workers", default="1", help="sidecar workers on the one port, a comma list: 1,2 runs both "
                                                  "in each repeat and reports the ratio (default 1)")
    ap.add_argument("--baseline", default="", help="another checkout (e.g. the previous commit's) whose sidecar runs "
                                                  "too, in every repeat, for a side-by-side ratio")
    ap.add_argument("--json", default="", help="write the results here too")
    ap.add_argument("--profile", default="", help="directory for py-spy profiles of the sidecar (pip install py-spy)")
    ap.add_argument("--out", default="", help="directory for the process logs (default bench/results)")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return uvloop.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
