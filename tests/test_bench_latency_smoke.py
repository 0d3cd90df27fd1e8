"""The latency suite's --smoke mode runs every variant and writes a sane report (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["ring", "zmq ipc", "unix socket", "stdout pipe", "http POST", "fastapi+zmq"]
E2E = ["engine e2e", "e2e journal never", "e2e journal interval", "e2e journal batch"]

for _mod in ("zmq", "fastapi", "uvicorn", "matplotlib"):
    pytest.importorskip(_mod, reason="bench extra not installed: pip install -e '.[bench]' (make bench-deps)")


@pytest.mark.timeout(240)
def test_smoke_run_reports_every_variant_with_ordered_percentiles(engine_bin: Path, tmp_path: Path) -> None:
    shm_before = {n for n in os.listdir("/dev/shm") if n.startswith("dgdo.bench")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "latency" / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=220, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/10]" in proc.stderr and "[10/10]" in proc.stderr  # progress was shown

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

    md = reports[0].with_suffix(".md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(expected)  # header + one row per (variant, phase)
    for v in [*VARIANTS, *E2E]:
        assert f"| {v} |" in md
    assert reports[0].with_suffix(".png").stat().st_size > 1000
    left = {n for n in os.listdir("/dev/shm") if n.startswith("dgdo.bench")} - shm_before
    assert not left, f"the bench left shared memory behind: {sorted(left)}"
