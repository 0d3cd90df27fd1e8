"""Nothing of ours outlives its processes: kill -9 of `dgdo run`, of the engine and the sidecar
together, a missing engine binary. Rings are memfds (nothing in /dev/shm), control sockets are
abstract names (nothing in /tmp), and the engine and the demo end with `dgdo run`."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, LineReader, dgdo_entries, leftovers, new_state_dir, stack_env
from test_engine_death import start_split


def await_exit(pid: int, timeout: float) -> bool:
    """True once process `pid` (not necessarily our child) has exited; False after `timeout`."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def abstract_bound(name: str) -> bool:
    with open("/proc/net/unix") as f:
        return any(line.rstrip().endswith(" " + name) for line in f)


def start_run(*extra: str) -> tuple[subprocess.Popen[bytes], LineReader, str, int, str]:
    """`dgdo run` until healthy; (process, output, instance, engine pid, control name)."""
    instance = f"t{os.urandom(4).hex()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "run", "--port", "0", "--status-interval", "0", "--instance", instance,
         "--state-dir", new_state_dir(), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=stack_env(),
    )
    out = LineReader(proc.stdout)
    ready = out.wait_for(r"dgdo-engine ready control=(\S+) pid=(\d+)")
    out.wait_for(r"sidecar listening on ws://127\.0\.0\.1:\d+")
    control, engine_pid = ready.group(1), int(ready.group(2))
    assert control.startswith("@"), control  # dgdo run's control socket is an abstract name
    assert abstract_bound(control)
    return proc, out, instance, engine_pid, control


def assert_nothing_left(before: set[str], instance: str, control: str) -> None:
    assert not abstract_bound(control), f"{control} still bound"
    assert [n for n in os.listdir("/dev/shm") if instance in n] == []
    assert leftovers(before) == []


def test_kill_9_of_dgdo_run_takes_its_engine_and_demo_and_leaves_nothing(engine_bin: Path) -> None:
    before = dgdo_entries()
    proc, out, instance, engine_pid, control = start_run("--demo", "2")
    demo_pid = int(out.wait_for(r"\[dgdo\] demo pid=(\d+)").group(1))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # PR_SET_PDEATHSIG: the kernel sends both SIGTERM as `dgdo run` dies; they stop by themselves.
    assert await_exit(engine_pid, 15), "the engine outlived dgdo run's kill -9"
    assert await_exit(demo_pid, 15), "the demo outlived dgdo run's kill -9"
    assert_nothing_left(before, instance, control)


def test_kill_9_of_engine_and_sidecar_together_leaves_nothing(engine_bin: Path) -> None:
    before = dgdo_entries()
    proc, _out, instance, engine_pid, control = start_run("--no-demo")
    os.kill(engine_pid, signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert await_exit(engine_pid, 15)
    assert_nothing_left(before, instance, control)


def test_kill_9_of_a_split_engine_and_sidecar_leaves_nothing(engine_bin: Path) -> None:
    """As systemd runs them (two units), with an abstract control name."""
    before = dgdo_entries()
    s = start_split(engine_bin)
    assert s.engine is not None
    s.engine.send_signal(signal.SIGKILL)
    s.sidecar.send_signal(signal.SIGKILL)
    s.engine.wait()
    s.sidecar.wait()
    assert_nothing_left(before, s.instance, s.control)


@pytest.mark.parametrize("engine", ["/nonexistent/dgdo-engine", "/bin/false"])
def test_an_engine_that_cannot_start_leaves_no_runtime_dir(engine: str) -> None:
    before = dgdo_entries()
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "--port", "0", "--no-demo", "--state-dir", new_state_dir()],
        cwd=ROOT, capture_output=True, timeout=60, env=stack_env(DGDO_ENGINE=engine),
    )
    assert done.returncode != 0
    assert re.search(rb"not an executable|engine failed to start", done.stderr), done.stderr[-500:]
    assert leftovers(before) == []


def test_the_engine_refuses_to_start_when_its_parent_is_already_gone(engine_bin: Path) -> None:
    # A pid that is not our parent stands for a parent that died before the engine could ask for
    # PR_SET_PDEATHSIG (it was reparented already): the request would never fire.
    done = subprocess.run([str(engine_bin), "--control", f"@dgdo-orphan-{os.getpid()}", "--die-with-parent", "1"],
                          capture_output=True, timeout=10)
    assert done.returncode == 1
    assert b"is gone" in done.stderr, done.stderr


def test_leftovers_sees_a_dir_of_ours_in_tmp(tmp_path: Path) -> None:
    before = dgdo_entries()
    probe = Path("/tmp") / f"dgdo-probe-{os.getpid()}"
    probe.mkdir()
    try:
        assert leftovers(before, wait_s=0.5) == [str(probe)]
    finally:
        probe.rmdir()
    assert leftovers(before, wait_s=0.5) == []
