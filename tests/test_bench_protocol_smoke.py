"""The protocol benchmark runs end to end in --smoke mode and reports sane figures (no timing targets)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BENCH = ROOT / "bench" / "protocol" / "bench_codec.py"


def test_bench_protocol_smoke_reports_codec_and_ingest_figures(engine_bin: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "## Protocol benchmark (smoke)" in out and "Machine:" in out
    table = [ln for ln in out.splitlines() if ln.startswith("| decode+validate") or ln.startswith("| encode")]
    assert len(table) == 5
    result = json.loads(out_json.read_text())
    assert {(r["op"], r["message"]) for r in result["codec"]} == {
        ("decode+validate", "driver_location"), ("decode+validate", "ride_request"),
        ("encode", "new_order"), ("encode", "order_update"), ("encode", "driver_location")}
    for r in result["codec"]:
        for key in ("json_us", "msgpack_us", "legacy_json_us", "legacy_msgpack_us"):
            assert math.isfinite(r[key]) and 0 < r[key] < 10_000, r
        assert r["bytes_json"] > 20 and r["bytes_msgpack"] > 20
    for fmt in ("json", "msgpack"):
        runs = result["ingest_runs"][fmt]
        assert runs, fmt
        for run in runs:
            assert run["frames"] > 0 and run["sidecar_cpu_s"] > 0, run
            assert run["rate_limited"] == 0, "the bench lifts the rate limits; nothing should be refused"
            assert run["frames"] <= run["loader_sent"], "the sidecar cannot decode more than was sent"
            assert run["conns"] == 4
        assert result["ingest"][f"{fmt}/4"]["frames_per_cpu_s"] > 0
    assert "frames per sidecar CPU-second" in out
    assert "legacy JSON µs" in out, "the previous codec's figures stand beside the new ones"


def test_a_baseline_checkout_runs_after_each_repeat_and_stands_beside(engine_bin: Path, tmp_path: Path) -> None:
    """--baseline DIR: another checkout's own bench over the same sweep (here this checkout: what is
    checked is the plumbing, that its runs are taken, kept apart and put beside ours)."""
    out_json = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--repeats", "2", "--seconds", "0.5",
                           "--baseline", str(ROOT), "--json", str(out_json)],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out_json.read_text())
    base = result["baseline"]
    assert base["dir"] == str(ROOT) and re.fullmatch(r"[0-9a-f]{7,}", base["commit"]), base
    for fmt in ("json", "msgpack"):
        assert len(result["ingest_runs"][fmt]) == 2
        assert len(base["ingest_runs"][fmt]) == 2, "one baseline sweep after each of the 2 repeats"
        assert all(r["conns"] == 4 and r["records_per_cpu_s"] > 0 for r in base["ingest_runs"][fmt])
        assert base["records_per_cpu_s"][f"{fmt}/4"] > 0
    rows = [ln for ln in done.stdout.splitlines() if ln.startswith(("| json | 4 |", "| msgpack | 4 |"))]
    assert len(rows) == 2 and all(ln.endswith("x |") for ln in rows), rows  # the × baseline column
    assert "Baseline: " in done.stdout


def test_ingest_cost_harness_reports_a_sane_cost_per_message() -> None:
    """bench/protocol/ingest_cost.py: frames through the real frame callback, core and link framing."""
    for binary in ([], ["--binary"]):
        done = subprocess.run([sys.executable, str(BENCH.parent / "ingest_cost.py"), "--conns", "4", "--rounds", "20",
                               "--repeats", "1", *binary], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]  # it asserts that every message reached the link
        m = re.search(r"4 drivers (JSON|msgpack): ([0-9.]+) µs CPU per message", done.stdout)
        assert m and m.group(1) == ("msgpack" if binary else "JSON"), done.stdout
        assert 0 < float(m.group(2)) < 10_000, done.stdout
