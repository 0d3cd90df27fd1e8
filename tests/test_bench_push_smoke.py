"""The push-throughput bench runs end to end in --smoke mode and reports sane figures (no targets)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BENCH = ROOT / "bench" / "push" / "bench_push.py"


@pytest.mark.timeout(240)
def test_bench_push_smoke_reports_sidecar_and_raw_picows_rates(engine_bin: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "push.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--json", str(out_json), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "## Push throughput (smoke)" in done.stdout and "Machine:" in done.stdout
    result = json.loads(out_json.read_text())
    assert [r["n"] for r in result["rows"]] == [20, 100]
    for row in result["rows"]:
        for kind in ("sidecar", "raw", "raw batched"):
            assert math.isfinite(row[kind]["per_cpu_s"]) and row[kind]["per_cpu_s"] > 0, (kind, row)
            (run,) = row["runs"][kind]
            assert run["connections"] == row["n"]
            assert run["messages"] > 0 and run["cpu_s"] > 0, run
            # Every message written reached a client (nothing lost on the way, nothing invented).
            assert run["received"] == run["messages"], run
        (side,) = row["runs"]["sidecar"]
        assert side["messages"] <= side["records"], "the sidecar writes at most one message per record"
        assert row["ratio"] > 0
    table = [ln for ln in done.stdout.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert len(table) == 2
