"""The latency suite's --smoke mode runs every variant and writes a sane report (no timing assertions);
killed at any moment (SIGTERM or SIGKILL), it leaves nothing behind.

It once failed now and then with "the bench left shared memory behind": feeder.py made its rings
as named /dev/shm segments and removed them in a `finally`. The runner sends `quit` and then
SIGTERM at once; a SIGTERM that landed after the feeder left its command loop but before it set
SIG_IGN raised SystemExit inside that `finally` and skipped the unlinks (and a feeder killed after
the 5 s grace never ran it). Its rings are memfds now, its sockets abstract names: there is no
cleanup left to skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import dgdo_entries, leftovers

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["ring", "ring spin", "zmq ipc", "unix socket", "unix socket spin", "stdout pipe", "http POST",
            "fastapi+zmq"]
E2E = ["engine e2e", "e2e journal never", "e2e journal interval", "e2e journal batch"]

for _mod in ("zmq", "fastapi", "uvicorn", "matplotlib"):
    pytest.importorskip(_mod, reason="bench extra not installed: pip install -e '.[bench]' (make bench-deps)")


@pytest.mark.timeout(240)
def test_smoke_run_reports_every_variant_with_ordered_percentiles(engine_bin: Path, tmp_path: Path) -> None:
    before = dgdo_entries()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "latency" / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=220, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/12]" in proc.stderr and "[12/12]" in proc.stderr  # progress was shown

    reports = list(tmp_path.glob("latency-*-smoke.json"))
    assert len(reports) == 1
    result = json.loads(reports[0].read_text())
    assert {"cpu", "cores", "kernel", "python"} <= result["machine"].keys()

    rows = {(r["variant"], r["phase"]): r for r in result["rows"]}
    expected = {(v, ph) for v in VARIANTS for ph in ("idle", "load")} | {(v, "idle") for v in E2E}
    assert set(rows) == expected
    for key, row in rows.items():
        s = row["offers"]
        assert s["n"] > 0, key
        values = [s[k] for k in ("p50", "p90", "p99", "p99.9", "max")]
        assert all(v > 0 for v in values), (key, values)
        assert values == sorted(values), (key, values)

    for v in ("ring", "ring spin", "unix socket", "unix socket spin"):  # what the idle strategy costs is shown
        for ph in ("idle", "load"):
            assert 0 <= rows[(v, ph)]["sidecar_cpu_pct"] < 400, (v, ph, rows[(v, ph)].get("sidecar_cpu_pct"))
            assert rows[(v, ph)]["sidecar_preempted_per_s"] >= 0, (v, ph)  # the kernel's count, read per phase

    md = reports[0].with_suffix(".md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(expected)  # header + one row per (variant, phase)
    for v in [*VARIANTS, *E2E]:
        assert f"| {v} |" in md
    assert reports[0].with_suffix(".png").stat().st_size > 1000
    assert leftovers(before) == [], "the bench left something behind"


@pytest.mark.timeout(120)
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pin needs 2 CPUs")
def test_pin_gives_each_feeds_sidecar_a_cpu_the_runner_does_not_use(engine_bin: Path, tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "latency" / "run.py"), "--smoke", "--pin", "--out", str(tmp_path),
         "--variants", "ring spin,unix socket"],
        capture_output=True, text=True, timeout=110, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(tmp_path.glob("latency-*-smoke.json")).read_text())
    assert result["pinned"] == {"sidecar": cpus[-1:], "others": cpus[:-1], "runner": cpus[:-1]}
    # As the kernel reported each sidecar's affinity while it served the phase:
    assert result["sidecar_cpus"] == {"ring spin": cpus[-1:], "unix socket": cpus[-1:]}
    assert all(r["offers"]["n"] > 0 for r in result["rows"])
    assert "Pinned (--pin)" in next(tmp_path.glob("latency-*-smoke.md")).read_text()


def _abstract_names(prefix: str) -> list[str]:
    with open("/proc/net/unix") as f:
        return [line.split()[-1] for line in f if line.rstrip().split(" ")[-1].startswith(prefix)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("variant", "sig", "up"), [
    ("ring", signal.SIGKILL, "feeder: worker 1 attached"),
    ("engine e2e", signal.SIGKILL, "sidecar listening"),
    ("ring", signal.SIGTERM, "feeder: worker 1 attached"),
])
def test_a_bench_killed_mid_run_takes_its_processes_and_leaves_nothing(
        engine_bin: Path, tmp_path: Path, variant: str, sig: signal.Signals, up: str) -> None:
    before = dgdo_entries()
    bench = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "latency" / "run.py"), "--variants", variant, "--repeats", "1",
         "--seconds", "60", "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(up in p.read_text(errors="replace") for p in tmp_path.glob("latency-*.log")):
            assert bench.poll() is None and time.monotonic() < deadline, f"the {variant} stack never came up"
            time.sleep(0.05)  # the bench's processes log to a file: nothing to await but its lines
        children = psutil.Process(bench.pid).children(recursive=True)
        assert len(children) >= 2, children  # feeder + sidecar, or dgdo run + engine
        assert _abstract_names(f"@dgdo-bench-{bench.pid}") or variant != "ring"
        bench.send_signal(sig)
        bench.wait(30)
        _gone, alive = psutil.wait_procs(children, timeout=20)  # they end with it (sidecar/shell/lifetime.py)
        assert alive == [], f"still running after the bench's {sig.name}: {alive}"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert _abstract_names(f"@dgdo-bench-{bench.pid}") == []
    assert [n for n in os.listdir("/dev/shm") if re.match(rf"dgdo\.bench{bench.pid}", n)] == []
    assert leftovers(before) == [], f"the bench left something behind after its {sig.name}"
