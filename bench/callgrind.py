"""Instructions counted by callgrind: a cost figure that a busy, noisy machine does not disturb.

The benches count a path as (a run doing N of it) - (the same run doing one or none), over N:
both runs import and set up the same, so the difference is the path alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path


def instructions(cmd: list[str], timeout_s: float = 1800) -> int:
    """Runs `cmd` under callgrind; the instructions it executed in all (every thread, no children)."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"dgdo-callgrind-{uuid.uuid4().hex[:8]}.out"
    try:
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                       check=True, capture_output=True, timeout=timeout_s)
        m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        assert m, "no totals in the callgrind output"
        return int(m.group(1))
    finally:
        out.unlink(missing_ok=True)
