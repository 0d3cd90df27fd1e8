"""A rollback meets state a newer engine wrote: the real engine refuses to start, in one line,
and changes nothing (no journal tail cut, no snapshot passed over), so the newer version can
start again on it with nothing lost (engine/src/store/recovery.cpp)."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

from conftest import engine_cmd

JOURNAL_VERSION_AT = 8  # segment header: u64 magic "DGDOJRN1", u32 version (engine/src/store/journal.hpp)


def files(state: Path) -> dict[str, bytes]:
    return {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file()}


def start_and_stop(engine_bin: Path, state: Path) -> None:
    """One clean run: recovers (nothing), opens its first journal segment, stops on SIGTERM."""
    proc = subprocess.Popen(engine_cmd(engine_bin, f"@dgdo-rollback-{os.getpid()}", "--state-dir", str(state)),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"dgdo-engine ready")
    proc.terminate()
    assert proc.wait(timeout=20) == 0


def test_an_engine_refuses_a_newer_journal_and_leaves_it_whole(engine_bin: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    start_and_stop(engine_bin, state)
    segments = sorted((state / "journal").glob("*.dgj"))
    assert segments, "the first run wrote no journal segment"
    with open(segments[-1], "r+b") as f:
        f.seek(JOURNAL_VERSION_AT)
        (version,) = struct.unpack("<I", f.read(4))
        f.seek(JOURNAL_VERSION_AT)
        f.write(struct.pack("<I", version + 1))  # as a newer engine would have written it
    before = files(state)
    done = subprocess.run(engine_cmd(engine_bin, f"@dgdo-rollback2-{os.getpid()}", "--state-dir", str(state)),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "ready" not in done.stdout
    refusal = [line for line in done.stderr.splitlines() if "newer engine wrote this state" in line]
    assert len(refusal) == 1 and segments[-1].name in refusal[0], done.stderr
    assert files(state) == before  # not a byte cut, moved or added
