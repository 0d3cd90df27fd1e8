"""The idle-connection memory bench (bench/conns) runs in --smoke mode and reports sane figures (no goal)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, dgdo_entries, leftovers


@pytest.mark.timeout(240)
def test_bench_conns_smoke_reports_rss_per_connection(engine_bin: Path, tmp_path: Path) -> None:
    before = dgdo_entries()
    out_json = tmp_path / "conns.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "conns" / "bench_conns.py"), "--smoke", "--json",
                           str(out_json), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "## Memory per idle connection (smoke)" in done.stdout
    res = json.loads(out_json.read_text())
    assert {r["kind"] for r in res["rows"]} == {"sidecar", "raw"}
    for r in res["rows"]:
        assert r["n"] == 200 and r["open_at_end"] == 200, r  # every connection opened and stayed open
        assert r["rss_after"] > r["rss_before"] > 0, r
        assert math.isfinite(r["rss_kb_per_conn"]) and 0 < r["rss_kb_per_conn"] < 1000, r
    assert leftovers(before) == [], "the bench left something behind"
