"""The engine benchmark and the matching simulation run and print sane numbers (tiny counts)."""

from __future__ import annotations

import math
import re
import subprocess

from conftest import BUILD


def run(binary: str) -> str:
    path = BUILD / binary
    assert path.exists(), f"{path} missing: run `make engine`"
    done = subprocess.run([str(path), "--smoke"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def rows(table: str) -> dict[str, list[str]]:
    out = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| metric") and not line.startswith("| demand"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0] + (" / " + cells[1] if not re.match(r"^[\d.]*$", cells[1]) else "")] = cells[1:]
    return out


def test_engine_bench_smoke_prints_a_table_with_plausible_timings() -> None:
    out = run("dgdo-engine-bench")
    assert "dgdo-engine-bench (smoke)" in out
    table = rows(out)
    update = float(table["position update, index by handle (ns)"][2])
    query_p50 = float(table["nearest-available query, grid (µs)"][0])
    offer_p99 = float(table["offer decision, ride_request → NEW_ORDER (µs)"][1])
    for v in (update, query_p50, offer_p99):
        assert math.isfinite(v) and v > 0
    assert update < 100_000 and query_p50 < 10_000 and offer_p99 < 100_000  # sane, not targets: smoke is tiny
    assert re.search(r"(\d+)/\1 requests got an offer", out)


def test_matching_sim_smoke_compares_greedy_and_batched() -> None:
    out = run("dgdo-matching-sim")
    lines = [ln for ln in out.splitlines() if ln.startswith("| ") and "%" in ln]
    assert len(lines) == 6
    for ln in lines:
        served = float(re.search(r"([\d.]+) %", ln).group(1))
        assert 0 <= served <= 100
    assert sum("greedy" in ln for ln in lines) == 3 and sum("batched" in ln for ln in lines) == 3
