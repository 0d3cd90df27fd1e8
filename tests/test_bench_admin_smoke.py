"""The admin feed benchmark runs end to end in --smoke mode, and its figures show the feed's bound:
a fixed number of messages a second to an admin, however many positions arrive (no timing targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BENCH = ROOT / "bench" / "admin" / "run.py"


def test_bench_admin_smoke_reports_cpu_and_what_an_admin_receives(engine_bin: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--seconds", "2", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "## Admin feed benchmark (smoke)" in done.stdout and "Machine:" in done.stdout
    result = json.loads(out_json.read_text())
    runs = result["runs"]
    assert sorted(r["admins"] for r in runs) == [0, 1, 4]
    for r in runs:
        assert r["positions_in_per_s"] > 50, r  # the load ran (200 drivers at 1/s)
        assert r["sidecar_cpu"] > 0 and r["slow_reader_closes"] == 0, r
        if r["admins"]:
            assert r["snapshot_rows"] == result["drivers"] == 200
            # ~2 fleet deltas and 1 system_stats a second, not one message per position.
            assert 1 <= r["admin_msgs_per_s"] <= 10, r
            assert r["admin_by_type"]["fleet"]["msgs_per_s"] <= 3, r
