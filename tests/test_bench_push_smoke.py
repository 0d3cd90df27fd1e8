"""The push-throughput bench runs end to end in --smoke mode and reports sane figures (no targets)."""

from __future__ import annotations

import json
import math
import re
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


def test_core_cost_harness_reports_a_cost_and_writes_the_pushes(tmp_path: Path) -> None:
    """bench/push/core_cost.py: records through the real core and the shell's write into stub transports,
    a pass of an order update and a position per passenger, or (`--idle`) one order update a drain."""
    harness = BENCH.parent / "core_cost.py"
    for extra, what in (([], "message"), (["--idle"], "one-push drain")):
        done = subprocess.run([sys.executable, str(harness), "--n", "3", "--passes", "5", "--repeats", "1", *extra],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        m = re.search(rf"N=(\d+) JSON: ([0-9.]+) µs per {what} ", done.stdout)
        assert m and m.group(1) == ("1" if extra else "3"), done.stdout
        assert 0 < float(m.group(2)) < 10_000, done.stdout
    dump = tmp_path / "pushes.bin"
    done = subprocess.run([sys.executable, str(harness), "--n", "3", "--dump", str(dump)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    data = dump.read_bytes()
    # 3 passes x 3 passengers x (order update + position), each an unmasked text frame of the push's JSON
    assert data.count(b'{"type":"order_update"') == 9 and data.count(b'{"type":"driver_location"') == 9
    assert data[:1] == b"\x81"
