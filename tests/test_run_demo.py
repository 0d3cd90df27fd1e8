"""`dgdo run` as `make run` starts it: engine + sidecar + demo, status lines, clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from conftest import ROOT, LineReader, new_state_dir, stack_env

STATUS = (r"drivers online\s+(\d+) \| orders requested\s+(\d+) matched\s+(\d+) completed\s+(\d+)"
          r" \| push p50\s+([\d.]+) µs p99\s+([\d.]+) µs")


def test_run_with_demo_matches_and_completes_orders_then_stops_clean(engine_bin: Path) -> None:
    instance = f"t{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "run", "--port", "0", "--demo", "6", "--status-interval", "0.5",
         "--instance", instance, "--state-dir", new_state_dir()],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=stack_env(DGDO_JWT_SECRET=""),
    )
    out = LineReader(proc.stdout)
    try:
        out.wait_for(r"sidecar listening on ws://127\.0\.0\.1:\d+")
        completed = 0
        while completed == 0:  # each status line is awaited; the demo's first trips take a few seconds
            m = out.wait_for(STATUS, timeout=60)
            online, requested, matched, completed = (int(g) for g in m.groups()[:4])
        assert online >= 1 and requested >= matched >= completed >= 1
        p50_us, p99_us = float(m.group(5)), float(m.group(6))
        assert 0 < p50_us <= p99_us
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    assert rc == 0
    assert [p for p in os.listdir("/dev/shm") if instance in p] == []
