"""The sidecar's log lines under journald carry their priority (sidecar/shell/journal.py).

A Python process configured as `dgdo` configures logging (the same format), its stderr a pipe
that $JOURNAL_STREAM names, plays the sidecar: a warning reads `<4>`, info `<6>`, every line of
an error's traceback `<3>`. With $JOURNAL_STREAM naming another file, or unset, nothing changes.
"""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

from sidecar.shell import journal

PROGRAM = """
import logging
from sidecar.shell import journal
logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
print(journal.use_journal_priorities(), flush=True)
log = logging.getLogger("dgdo.front")
log.info("= listening")
log.warning("! connection limit reached")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("! answering a request failed")
"""


def run(journal_stream: str | None) -> tuple[str, list[str]]:
    """Runs PROGRAM with stderr a pipe; `journal_stream` "pipe" names that pipe."""
    r, w = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        st = os.fstat(w)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}" if journal_stream == "pipe" else journal_stream
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=w)
    os.close(w)
    with os.fdopen(r) as err:
        lines = err.read().splitlines()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, lines
    return out.decode().strip(), lines


def test_under_the_journal_each_line_carries_its_records_priority() -> None:
    used, lines = run("pipe")
    assert used == "True"
    assert lines[0].startswith("<6>") and lines[0].endswith(" INFO dgdo.front = listening")
    assert lines[1].startswith("<4>") and lines[1].endswith(" WARNING dgdo.front ! connection limit reached")
    assert lines[2].endswith(" ERROR dgdo.front ! answering a request failed")
    assert len(lines) > 4 and all(line.startswith("<3>") for line in lines[2:]), lines  # the traceback too
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"


def test_elsewhere_the_lines_are_unchanged() -> None:
    with open(os.devnull, "wb") as other:
        st = os.fstat(other.fileno())
    for value in (None, f"{st.st_dev}:{st.st_ino}", "garbage"):
        used, lines = run(value)
        assert used == "False"
        assert not any(line.startswith("<") for line in lines), lines
        assert lines[-1] == "ZeroDivisionError: division by zero"


def test_priorities_follow_syslog() -> None:
    assert [journal.priority(n) for n in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]


def test_dgdo_itself_writes_priorities_under_the_journal() -> None:
    """The real `dgdo sidecar`, its engine not there: its warning reaches the journal as <4>."""
    r, w = os.pipe()
    st = os.fstat(w)
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "sidecar", "--control", f"@dgdo-nobody-{os.getpid()}",
                             "--port", "0", "--insecure-no-auth", "--status-interval", "0"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=w)
    os.close(w)
    try:
        with os.fdopen(r) as err:
            for line in err:  # ends when the process does (the test's timeout bounds it)
                if "engine not reachable" in line:
                    assert line.startswith("<4>") and " WARNING " in line, line
                    break
            else:
                raise AssertionError("dgdo sidecar ended without its 'engine not reachable' warning")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
