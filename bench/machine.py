"""The machine a benchmark ran on, for the report next to the numbers."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> dict[str, str | int]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }


def one_line(m: dict[str, str | int]) -> str:
    return f"{m['cpu']}, {m['cores']} vCPU, Linux {m['kernel']}, Python {m['python']}, load {m['loadavg_at_start']}"


def host_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host so far, over all cores (psutil.cpu_times): the
    difference of two readings over a window says how many cores were busy, whoever used them
    (the benches' own processes, or another job on a shared machine)."""
    import psutil

    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return total - idle, total
