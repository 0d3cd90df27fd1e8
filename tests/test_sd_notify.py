"""systemd's side of sd_notify, played by the test: the real engine and the real sidecar, each
given a NOTIFY_SOCKET the test bound and a WATCHDOG_USEC, say READY=1, STATUS=... and WATCHDOG=1;
a process stopped with SIGSTOP (a wedged loop, as far as systemd can tell) stops its pings and
resumes them with SIGCONT. Like systemd with NotifyAccess=main, the test reads each datagram's
sender pid (SCM_CREDENTIALS): under `dgdo run` only dgdo itself talks, never the engine it starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, LineReader, engine_cmd, new_state_dir, stack_env

from sidecar.shell import sd_notify

WATCHDOG_S = 1.0  # pings every 0.5 s
SILENCE_S = 3 * WATCHDOG_S  # a stopped process sends nothing for this long: six pings missed


@dataclass
class Datagram:
    pid: int
    fields: dict[str, str]


@dataclass
class SystemdSide:
    """A NOTIFY_SOCKET: an AF_UNIX datagram socket that records who sent what."""

    address: str  # as in $NOTIFY_SOCKET: a path, or @name
    sock: socket.socket = field(init=False)
    got: list[Datagram] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:] if self.address.startswith("@") else self.address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def env(self, watchdog_s: float = WATCHDOG_S) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}

    def recv(self, timeout: float) -> Datagram | None:
        self.sock.settimeout(timeout)
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except (TimeoutError, BlockingIOError):  # BlockingIOError: timeout 0, nothing queued
            return None
        pid = 0
        for level, type_, cdata in anc:
            if level == socket.SOL_SOCKET and type_ == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", cdata[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        d = Datagram(pid, fields)
        self.got.append(d)
        return d

    def expect(self, key: str, value: str | None = None, timeout: float = 20.0) -> Datagram:
        """The next datagram carrying `key` (with `value`, or containing `value` for STATUS)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            d = self.recv(left)
            if d is None:
                break
            v = d.fields.get(key)
            if v is not None and (value is None or v == value or (key == "STATUS" and value in v)):
                return d
        raise TimeoutError(f"no {key}={value or '*'} within {timeout} s; got {[g.fields for g in self.got[-10:]]}")

    def drain(self) -> None:
        while self.recv(0.0) is not None:
            pass

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[SystemdSide, SystemdSide]]:
    """One notify socket per service, as systemd has one per unit: an abstract one and a path one."""
    a = SystemdSide(f"@dgdo-test-notify-{uuid.uuid4().hex[:12]}")
    b = SystemdSide(str(tmp_path / "notify.sock"))
    yield a, b
    a.close()
    b.close()


def _stopped(pid: int, timeout: float = 5.0) -> None:
    """Returns once the kernel shows the process stopped (SIGSTOP is delivered asynchronously)."""
    proc = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while proc.status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline, f"process {pid} never stopped"
        time.sleep(0.01)  # no event to await for another process's state


def _wedge_and_recover(side: SystemdSide, pid: int) -> None:
    """A stopped process sends no ping for SILENCE_S; once continued, it pings again."""
    os.kill(pid, signal.SIGSTOP)
    try:
        _stopped(pid)
        side.drain()  # what it sent before it stopped
        silent = side.recv(SILENCE_S)
        assert silent is None, f"a stopped process pinged: {silent}"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert side.expect("WATCHDOG", "1", timeout=3 * WATCHDOG_S).pid == pid


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_engine_and_sidecar_notify_ready_status_and_watchdog(
        engine_bin: Path, systemd: tuple[SystemdSide, SystemdSide], tmp_path: Path) -> None:
    eng_side, car_side = systemd
    control = str(tmp_path / "engine.sock")
    engine = subprocess.Popen(engine_cmd(engine_bin, control, "--state-dir", new_state_dir()),
                              stdout=subprocess.DEVNULL, env={**os.environ, **eng_side.env()})
    sidecar = None
    try:
        ready = eng_side.expect("READY", "1")
        assert ready.pid == engine.pid
        assert "workers none" in ready.fields["STATUS"]  # the status comes with READY
        assert eng_side.expect("WATCHDOG", "1").pid == engine.pid

        cmd = [sys.executable, "-m", "sidecar", "sidecar", "--control", control, "--port", "0",
               "--status-interval", "0"]
        sidecar = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, env=stack_env(**car_side.env()))
        out = LineReader(sidecar.stdout)
        port = int(out.wait_for(r"sidecar listening on ws://127\.0\.0\.1:(\d+)").group(1))
        ready = car_side.expect("READY", "1")
        assert ready.pid == sidecar.pid
        assert f"worker 1 port {port}" in ready.fields["STATUS"]
        assert "no pushes yet" in ready.fields["STATUS"]
        assert car_side.expect("WATCHDOG", "1").pid == sidecar.pid
        # The engine's status follows its workers.
        assert eng_side.expect("STATUS", "workers 1 ").pid == engine.pid

        _wedge_and_recover(eng_side, engine.pid)
        _wedge_and_recover(car_side, sidecar.pid)

        assert _stop(sidecar) == 0
        assert car_side.expect("STOPPING", "1").pid == sidecar.pid
        assert _stop(engine) == 0
        assert eng_side.expect("STOPPING", "1").pid == engine.pid
    finally:
        for p in (sidecar, engine):
            if p is not None:
                _stop(p)


def test_a_sidecar_started_before_its_engine_is_ready_and_attaches_when_the_engine_comes(
        engine_bin: Path, systemd: tuple[SystemdSide, SystemdSide], tmp_path: Path) -> None:
    """Waiting for the engine is a state the worker serves in, not an unfinished start: held back from
    READY, systemd would kill it at TimeoutStartSec= and start it again for as long as the engine is down."""
    eng_side, car_side = systemd
    control = str(tmp_path / "engine.sock")
    cmd = [sys.executable, "-m", "sidecar", "sidecar", "--control", control, "--port", "0", "--status-interval", "0"]
    sidecar = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, env=stack_env(**car_side.env()))
    engine = None
    try:
        out = LineReader(sidecar.stdout)
        out.wait_for(r"sidecar listening on ws://127\.0\.0\.1:(\d+)")
        ready = car_side.expect("READY", "1")
        assert ready.pid == sidecar.pid
        assert f"waiting for the engine on {control}" in ready.fields["STATUS"]
        assert car_side.expect("WATCHDOG", "1").pid == sidecar.pid

        engine = subprocess.Popen(engine_cmd(engine_bin, control, "--state-dir", new_state_dir()),
                                  stdout=subprocess.DEVNULL, env={**os.environ, **eng_side.env()})
        assert car_side.expect("STATUS", "worker 1 port").pid == sidecar.pid  # attached
        assert _stop(sidecar) == 0
    finally:
        for p in (sidecar, engine):
            if p is not None:
                _stop(p)


def test_dgdo_run_notifies_as_its_own_main_process_only(systemd: tuple[SystemdSide, SystemdSide]) -> None:
    """`dgdo run` under systemd: READY and pings come from dgdo; the engine and the demo it starts do
    not inherit NOTIFY_SOCKET (systemd with NotifyAccess=main would log and drop theirs)."""
    side, _ = systemd
    cmd = [sys.executable, "-m", "sidecar", "run", "--port", "0", "--no-demo", "--status-interval", "0",
           "--state-dir", new_state_dir()]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, env=stack_env(**side.env()))
    out = LineReader(proc.stdout)
    try:
        engine_pid = int(out.wait_for(r"dgdo-engine ready .* pid=(\d+)").group(1))
        assert side.expect("READY", "1").pid == proc.pid
        assert side.expect("WATCHDOG", "1").pid == proc.pid
        side.recv(2 * WATCHDOG_S)  # a window for a stray engine ping to show up in
        assert {d.pid for d in side.got} == {proc.pid}, f"the engine ({engine_pid}) notified too"
        assert "NOTIFY_SOCKET" not in psutil.Process(engine_pid).environ()
    finally:
        assert _stop(proc) == 0


async def test_keep_alive_pings_and_sends_a_changed_status_once() -> None:
    """The sidecar's loop task: WATCHDOG=1 every half period, STATUS only when it changed."""
    side = SystemdSide(f"@dgdo-test-keepalive-{uuid.uuid4().hex[:12]}")
    try:
        notifier = sd_notify.Notifier(side.address, watchdog_s=0.1)
        status = ["first"]
        task = asyncio.get_running_loop().create_task(sd_notify.keep_alive(notifier, lambda: status[0]))
        first = await asyncio.to_thread(side.recv, 5.0)
        assert first is not None and first.fields == {"WATCHDOG": "1", "STATUS": "first"}
        second = await asyncio.to_thread(side.recv, 5.0)
        assert second is not None and second.fields == {"WATCHDOG": "1"}  # unchanged: not repeated
        status[0] = "second\nline"
        changed = await asyncio.to_thread(side.expect, "STATUS", "second line", 5.0)
        assert changed.fields["STATUS"] == "second line"  # one line: the protocol is line-based
        task.cancel()
        notifier.close()
    finally:
        side.close()


def test_notifier_from_env_takes_the_variables_and_honours_watchdog_pid() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2500000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "1"}
    n = sd_notify.Notifier.from_env(env)
    assert n.enabled and n.watchdog_s == 2.5
    assert env == {"OTHER": "1"}  # not passed on to children
    n.close()
    n = sd_notify.Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.enabled and n.watchdog_s == 0.0  # another process is the watched one
    n.close()
    n = sd_notify.Notifier.from_env({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled and n.watchdog_s == 0.0 and not n.send("READY=1")
