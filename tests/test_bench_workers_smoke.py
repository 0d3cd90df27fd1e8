"""The benches' 2-worker modes (`--workers 1,2`, issue 11) run end to end in --smoke mode and report
N workers beside one: every message reached a client, both workers served, the ratios are there.
No timing assertions (a 2-vCPU machine shows no scaling; the figures are the benches' to report)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, dgdo_entries, leftovers


@pytest.mark.timeout(240)
def test_bench_push_two_workers_routes_every_passenger_to_its_worker(engine_bin: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "push.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "push" / "bench_push.py"), "--smoke", "--n", "40",
                           "--workers", "1,2", "--json", str(out_json), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "### Push per host: N workers against 1 (same run)" in done.stdout
    (row,) = json.loads(out_json.read_text())["rows"]
    (two,) = row["runs"]["sidecar 2 workers"]
    assert two["workers"] == 2 and two["connections"] == 40 and two["unplaced"] == 0
    # The kernel spread the 40 clients over both workers, and the feeder wrote to each the records of
    # the clients connected there: every message written (summed over the workers) reached a client.
    assert sorted(two["per_worker"]) == ["1", "2"]
    assert sum(w["passengers"] for w in two["per_worker"].values()) == 40
    assert all(w["passengers"] > 0 and w["records"] > 0 for w in two["per_worker"].values()), two
    assert len(two["worker_cpu_s"]) == 2 and all(c > 0 for c in two["worker_cpu_s"])
    assert two["messages"] > 0 and two["received"] == two["messages"], two
    for key in ("per_s", "per_cpu_s"):
        assert math.isfinite(row["scaling"]["sidecar 2 workers"][key]) and row["scaling"]["sidecar 2 workers"][key] > 0


@pytest.mark.timeout(240)
def test_bench_latency_two_workers_e2e_and_passenger_path(engine_bin: Path, tmp_path: Path) -> None:
    before = dgdo_entries()
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "latency" / "run.py"), "--smoke", "--variants",
                           "engine e2e", "--workers", "1,2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = tmp_path.glob("latency-*-smoke.json")
    res = json.loads(report.read_text())
    # (on failure: the step that timed out, and the stack's log: what engine and workers said)
    assert res["failures"] == [], report.with_suffix(".log").read_text(errors="replace")[-6000:]
    rows = {r["variant"]: r for r in res["rows"]}
    assert set(rows) == {"engine e2e", "engine e2e 2 workers"}
    two = rows["engine e2e 2 workers"]
    assert two["offers"]["n"] > 0 and 0 < two["offers"]["p50"] <= two["offers"]["p99"]
    assert two["ratio_1w_p50"] > 0 and two["ratio_1w_p99"] > 0
    (placed,) = res["e2e_placement"]["engine e2e 2 workers"]
    assert placed["driver"] != placed["passenger"] and {placed["driver"], placed["passenger"]} <= {1, 2}

    done = subprocess.run([sys.executable, str(ROOT / "bench" / "latency" / "passenger_path.py"), "--smoke",
                           "--variants", "stack", "--workers", "1,2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = tmp_path.glob("passenger-path-*-smoke.json")
    res = json.loads(report.read_text())
    assert res["failures"] == []
    rows = {(r["variant"], r["mode"]): r for r in res["rows"]}
    for mode in ("one at a time", "burst"):
        r = rows[("stack 2 workers", mode)]
        expected = res["singles"] if mode == "one at a time" else res["bursts"] * res["pairs"]
        assert r["n"] == expected, (mode, r["n"])  # every position reached its passenger, whatever its worker
        assert r["p50_x_stack"] > 0 and r["p99_x_stack"] > 0
    (placed,) = res["placement"]
    assert placed["pairs_on_two_workers"] + placed["pairs_on_one_worker"] == res["pairs"]
    assert leftovers(before) == [], "the bench left something behind"
