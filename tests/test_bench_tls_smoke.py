"""The TLS cost bench runs end to end in --smoke mode and reports sane figures (no timing targets)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BENCH = ROOT / "bench" / "tls" / "bench_tls.py"
VARIANTS = ("plain", "tls ec", "tls rsa")


@pytest.mark.timeout(300)
def test_bench_tls_smoke_reports_plain_and_tls_side_by_side(engine_bin: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "tls.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--json", str(out_json), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "## TLS cost in the sidecar (smoke)" in done.stdout and "Machine:" in done.stdout
    result = json.loads(out_json.read_text())
    for v in VARIANTS:
        (hs,) = result["runs"][v]["handshake"]
        assert hs["n"] == result["h"] and 0 < hs["median_ms"] <= hs["p90_ms"], hs
        (mem,) = result["runs"][v]["memory"]
        assert mem["n"] == result["m"] and math.isfinite(mem["kb_per_conn"]), mem
        (push,) = result["runs"][v]["push"]
        assert push["connections"] == result["n"] and push["messages"] > 0 and push["cpu_s"] > 0, push
        # Over wss:// as over ws://, every message written reached a client: nothing lost in TLS.
        assert push["received"] == push["messages"], push
    table = [ln for ln in done.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| |")]
    assert len(table) == 6 and all(ln.count("|") == len(VARIANTS) + 2 for ln in table), table
