"""The engine's log lines under journald: each carries its syslog priority (engine/src/loop/journal_log.hpp).

systemd gives a service's stderr to journald as a stream and names it in $JOURNAL_STREAM
("DEVICE:INODE"); journald reads a leading `<N>` on each line as its priority. The test plays
journald's part with a pipe: the real engine, its stderr that pipe, $JOURNAL_STREAM naming it.
Warnings (`!`) then read `<4>`, endings (`x`) `<5>`, states reached (`=`) `<6>`, including the
line a forked snapshot writer writes by hand; a bad flag `<3>`. With $JOURNAL_STREAM unset, or
naming another file (inherited by a process whose stderr was redirected), the lines are unchanged.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

from conftest import engine_cmd

SNAPSHOT = ("--snapshot-every-records", "1", "--snapshot-every-s", "0.05", "--tick-ms", "10")


def stream_id(fd: int) -> str:
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


def run_engine(engine: Path, *extra: str, journal: str | None = "pipe", wait_for: str | None = None) -> list[str]:
    """Runs the engine with stderr a pipe until `wait_for` shows on it (else until it exits), then
    SIGTERM; returns its stderr lines. `journal`: "pipe" names the pipe in $JOURNAL_STREAM, None
    unsets it, anything else is passed as is."""
    r, w = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal is not None:
        env["JOURNAL_STREAM"] = stream_id(w) if journal == "pipe" else journal
    with tempfile.TemporaryDirectory(prefix="dgdo-journal-") as d:
        cmd = engine_cmd(engine, f"{d}/control", *(a.replace("STATE", f"{d}/state") for a in extra))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=w, env=env)
        os.close(w)
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # "dgdo-engine ready ...": SIGTERM is handled from here on; b"" if it exited
        lines: list[str] = []
        with os.fdopen(r, "r") as err:
            for line in err:  # EOF when the engine (and any snapshot writer it forked) has exited
                lines.append(line.rstrip("\n"))
                if ready and wait_for is not None and wait_for in line:
                    proc.send_signal(signal.SIGTERM)
                    wait_for = None
        proc.wait(10)
        proc.stdout.close()
    return lines


def test_under_the_journal_each_line_carries_its_priority(engine_bin: Path) -> None:
    lines = run_engine(engine_bin, wait_for="no --state-dir")
    assert lines[0] == "<4>dgdo-engine: ! no --state-dir: running without a journal; a restart loses every order"
    assert lines[-1] == "<5>dgdo-engine: x shutting down"
    assert all(re.match(r"<[3-6]>dgdo-engine", line) for line in lines), lines


def test_info_lines_and_the_snapshot_writers_hand_written_line_are_info(engine_bin: Path) -> None:
    lines = run_engine(engine_bin, "--state-dir", "STATE", *SNAPSHOT, wait_for="snapshot at record")
    assert lines[0].startswith("<6>dgdo-engine: = recovered ")
    # Written by the forked child with write(2), not through stdio (loop/persistence.cpp).
    assert any(re.fullmatch(r"<6>dgdo-engine: = snapshot at record \d+ written \(.*\)", line) for line in lines), lines
    assert all(re.match(r"<[3-6]>dgdo-engine", line) for line in lines), lines


def test_a_bad_flag_is_an_error(engine_bin: Path) -> None:
    lines = run_engine(engine_bin, "--no-such-flag")
    assert lines and lines[0].startswith("<3>dgdo-engine: ") and "--no-such-flag" in lines[0], lines


def test_without_the_journal_the_lines_are_unchanged(engine_bin: Path) -> None:
    with open(os.devnull, "wb") as other:
        elsewhere = stream_id(other.fileno())  # $JOURNAL_STREAM inherited, stderr redirected since
    for journal in (None, elsewhere):
        lines = run_engine(engine_bin, "--state-dir", "STATE", *SNAPSHOT, journal=journal,
                           wait_for="snapshot at record")
        assert lines[0].startswith("dgdo-engine: = recovered ")
        assert lines[-1] == "dgdo-engine: x shutting down"
        assert all(line.startswith("dgdo-engine: ") for line in lines), lines
