"""The passenger-path latency bench (bench/latency/passenger_path.py) runs every variant in --smoke mode
and writes a sane report: every send of every variant arrived, percentiles ordered, ratios present.
No timing assertions (those are the bench's to report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, dgdo_entries, leftovers

for _mod in ("fastapi", "uvicorn"):
    pytest.importorskip(_mod, reason="bench extra not installed: pip install -e '.[bench]' (make bench-deps)")

VARIANTS = ["bare picows relay", "fastapi relay", "stack", "stack journal"]


def run_smoke(tmp_path: Path, *args: str) -> tuple[dict, str]:
    """passenger_path.py --smoke ARGS, writing into tmp_path: its JSON report (no variant failed) and its Markdown."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "latency" / "passenger_path.py"), "--smoke", *args,
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = tmp_path.glob("passenger-path-*-smoke.json")
    res = json.loads(report.read_text())
    assert res["failures"] == []
    return res, report.with_suffix(".md").read_text()


@pytest.mark.timeout(240)
def test_passenger_path_smoke_times_every_variant_and_mode(engine_bin: Path, tmp_path: Path) -> None:
    before = dgdo_entries()
    res, md = run_smoke(tmp_path)
    rows = {(r["variant"], r["mode"]): r for r in res["rows"]}
    assert set(rows) == {(v, m) for v in VARIANTS for m in ("one at a time", "burst")}
    for key, r in rows.items():
        expected = res["singles"] if key[1] == "one at a time" else res["bursts"] * res["pairs"]
        assert r["n"] == expected, (key, r["n"])  # every position reached its passenger, once
        assert 0 < r["p50"] <= r["p90"] <= r["p99"] <= r["max"], (key, r)
        assert r["p50_x_bare"] > 0 and r["p99_x_bare"] > 0
    assert len(res["goals"]) == 2 and all("stack p50" in g for g in res["goals"])
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + len(rows)
    assert leftovers(before) == [], "the bench left something behind"


@pytest.mark.timeout(240)
def test_stack_configs_run_beside_the_bare_relay_and_report_the_links_wake_ups_and_spins(
        engine_bin: Path, tmp_path: Path) -> None:
    before = dgdo_entries()
    res, _ = run_smoke(tmp_path, "--variants", "bare picows relay", "--stack-configs", "spin=;nospin=--reply-spin-us 0")
    assert {(r["variant"], r["mode"]) for r in res["rows"]} == {
        (v, m) for v in ("bare picows relay", "stack spin", "stack nospin") for m in ("one at a time", "burst")}
    counters = {c["variant"]: c for c in res["link_counters"]}
    # Every position sent one at a time is awaited by its passenger on this worker: one spin each
    # with the default reply spin, none with it off (then the doorbell brings every answer).
    assert counters["stack spin"]["dgdo_reply_spins"] >= res["singles"]
    assert counters["stack nospin"]["dgdo_reply_spins"] == 0
    assert counters["stack nospin"]["dgdo_doorbell_wakeups"] >= res["singles"]
    assert leftovers(before) == [], "the bench left something behind"


@pytest.mark.timeout(240)
def test_server_cpus_pins_the_relays_and_the_stacks_and_a_stack_config_may_unpin(
        engine_bin: Path, tmp_path: Path) -> None:
    before = dgdo_entries()
    res, md = run_smoke(tmp_path, "--variants", "bare picows relay,fastapi relay,stack", "--server-cpus", "0",
                        "--stack-configs", "unpinned=cpus=0,1")
    # As the kernel has them: the relays, and the stack's sidecar with its engine (a child).
    every = sorted(os.sched_getaffinity(0))
    assert res["server_affinity"] == {"bare picows relay": [0], "fastapi relay": [0], "stack": [0],
                                      "stack unpinned": [c for c in every if c in (0, 1)]}
    assert "Every server pinned to CPU 0" in md
    assert leftovers(before) == [], "the bench left something behind"
