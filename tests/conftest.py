"""Fixtures that run the real thing: the engine binary, the sidecar process, real sockets.

Every process a test starts ends with the test session, even when pytest itself is killed
with -9 (sidecar/shell/lifetime.py: the sidecar by $DGDO_DIE_WITH_PARENT, the engine by
--die-with-parent). And the session checks at its very end that it left nothing behind:
no dgdo entry in /dev/shm or /tmp that was not there before, no engine or sidecar of this
checkout still running (`leftovers()`); any of those fails the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from sidecar.shell import lifetime

ROOT = Path(__file__).resolve().parents[1]
# Every sidecar the tests start checks tokens signed with this; clients mint theirs with `mint()`.
JWT_SECRET = "dgdo-tests-secret-0123456789abcdef-not-for-production"


def mint(role: str, sub: str, ttl_s: float = 3600, secret: str = JWT_SECRET) -> str:
    """A token for (role, sub) that the test stacks accept."""
    from sidecar.wire import auth

    return auth.mint(secret, role, sub, ttl_s)


def stack_env(**extra: str) -> dict[str, str]:
    """The environment for a sidecar process under test: the known secret, unbuffered output, and
    the marker that ends it with this pytest process (start it from the main thread)."""
    return lifetime.child_env({**os.environ, "DGDO_JWT_SECRET": JWT_SECRET, "PYTHONUNBUFFERED": "1", **extra})


def engine_cmd(engine: Path, control: str, *extra: str) -> list[str]:
    """The engine's command line for a test: it ends with this pytest process, even after a kill -9."""
    return [str(engine), "--control", control, "--die-with-parent", str(os.getpid()), *extra]


def engine_refusal(cmd: list[str]) -> str:
    """Runs an engine command line that must refuse to start; returns its stderr."""
    engine = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert engine.stdout is not None
    first = engine.stdout.readline()  # "dgdo-engine ready ..." once started, "" once exited
    if first:
        engine.kill()
    _out, err = engine.communicate(timeout=30)
    assert not first, f"started: {err}"
    assert engine.returncode != 0
    return err

BUILD = ROOT / "build" / "engine"
ENGINE = BUILD / "dgdo-engine"
RINGPEER = BUILD / "dgdo-ringpeer"


@pytest.fixture(scope="session")
def engine_bin() -> Path:
    assert ENGINE.exists(), f"{ENGINE} missing: run `make engine` (make test does)"
    return ENGINE


@pytest.fixture(scope="session")
def ringpeer_bin() -> Path:
    assert RINGPEER.exists(), f"{RINGPEER} missing: run `make engine` (make test does)"
    return RINGPEER


_state_root: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the stacks of this session keep their engine state: one fresh dir per stack, never the
    user's own `dgdo run` default (a journal there would carry one test's orders into the next)."""
    root = tmp_path_factory.mktemp("engine-state")
    _state_root[:] = [root]
    return root


def new_state_dir() -> str:
    # Empty only in a second copy of this module (`import tests.conftest`): its dirs would land in /tmp, never removed.
    assert _state_root, "no state root: import this module as `conftest`, the copy pytest loaded"
    return tempfile.mkdtemp(prefix="stack-", dir=_state_root[0])


@pytest.fixture
def small_disk() -> Iterator[str]:
    """A 2 MiB tmpfs for a state directory: a disk that fills up (test_state_dir_faults.fill_up)."""
    d = tempfile.mkdtemp(prefix="dgdo-disk-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", d], capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(d)
        pytest.skip(f"cannot mount a small tmpfs here (needs root in the initial mount namespace): {mounted.stderr}")
    yield d
    subprocess.run(["umount", "-l", d], check=True)
    os.rmdir(d)


class LineReader:
    """Reads a process's stdout on a thread so the pipe never fills; lines can be awaited."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.all: list[str] = []
        self._t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._t.start()

    def _run(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.all.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line matching {pattern!r}; got: {self.all[-20:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            m = rx.search(line)
            if m:
                return m


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET on 127.0.0.1:port, an error status included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    out: LineReader
    port: int
    instance: str
    jwt_secret: str = JWT_SECRET
    engine_pid: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def http_get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.port, path)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Waits until /healthz says the engine is attached."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.http_get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)  # polling an HTTP endpoint: there is no event to await across processes
        raise TimeoutError("sidecar never reported the engine attached")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_stack(*extra: str, env: dict[str, str] | None = None, **popen: Any) -> Stack:
    """Starts `dgdo run` (engine + sidecar); `popen` goes to Popen (e.g. `preexec_fn=` to set a limit,
    `stderr=subprocess.STDOUT` to read the log lines too)."""
    instance = f"t{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "sidecar", "run", "--host", "127.0.0.1", "--port", "0", "--no-demo",
           "--status-interval", "0", "--instance", instance, "--state-dir", new_state_dir(), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, env=stack_env(**(env or {})), **popen)
    out = LineReader(proc.stdout)
    try:
        m = out.wait_for(r"sidecar listening on ws://127\.0\.0\.1:(\d+)")
    except TimeoutError:
        proc.kill()
        raise
    stack = Stack(proc, out, int(m.group(1)), instance)
    stack.engine_pid = int(next(re.search(r"dgdo-engine ready .* pid=(\d+)", line).group(1)  # type: ignore[union-attr]
                                for line in out.all if "dgdo-engine ready" in line))
    stack.wait_healthy()
    return stack


@pytest.fixture
def stack(engine_bin: Path) -> Iterator[Stack]:
    s = start_stack()
    yield s
    assert s.stop() == 0
    leftovers = [p for p in os.listdir("/dev/shm") if s.instance in p]
    assert leftovers == [], f"shared memory left behind: {leftovers}"


def dumps(m: dict) -> str:
    return json.dumps(m, separators=(",", ":"))


# ---- nothing left behind -----------------------------------------------------------------------

PLACES = ("/dev/shm", "/tmp")


def dgdo_entries() -> set[str]:
    """What a process of ours could leave behind: dgdo* segments in /dev/shm, and dgdo* sockets and
    directories (a control socket's) in /tmp. Regular files in /tmp are not ours to judge: nothing
    of ours writes one, and other programs on a shared machine (profilers) do."""
    found = set()
    for place in PLACES:
        with contextlib.suppress(OSError):
            for e in os.scandir(place):
                with contextlib.suppress(OSError):
                    if e.name.startswith("dgdo") and (place == "/dev/shm" or e.is_dir(follow_symlinks=False)
                                                      or stat.S_ISSOCK(e.stat(follow_symlinks=False).st_mode)):
                        found.add(e.path)
    return found


def _in_use_elsewhere(path: str) -> bool:
    """Whether a live process outside this session uses `path` (or something under it) right now: a
    socket bound there, an open fd, a mapping or its cwd. That is then not our leftover but what a
    concurrent run (another checkout's tests or benches on this machine) is working with."""
    with contextlib.suppress(OSError), open("/proc/net/unix") as f:
        if any(line.rstrip().split(" ")[-1].startswith(path) for line in f):
            return True
    me = psutil.Process()
    ours = {me.pid, *(p.pid for p in me.parents()), *(p.pid for p in me.children(recursive=True))}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"{entry.path}/cwd").startswith(path):
                return True
            for fd in os.scandir(f"{entry.path}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path).startswith(path):
                        return True
            with open(f"{entry.path}/maps") as maps:
                if any(path in line for line in maps):
                    return True
    return False


def our_processes() -> list[psutil.Process]:
    """Engines built in this checkout and programs started from it, other than us and our parents."""
    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    binaries = {os.path.realpath(ENGINE), os.path.realpath(RINGPEER)}
    found = []
    for proc in psutil.process_iter(["pid", "exe", "cwd", "cmdline"]):
        info = proc.info
        if info["pid"] in skip:
            continue
        exe = os.path.realpath(info["exe"]) if info["exe"] else ""
        cmd = " ".join(info["cmdline"] or ())
        if exe in binaries or (info["cwd"] == str(ROOT) and ("sidecar" in cmd or "bench/" in cmd)):
            found.append(proc)
    return found


def leftovers(before: set[str], wait_s: float = 10.0) -> list[str]:
    """What this session left behind: new dgdo entries in /dev/shm and /tmp, our processes still
    running. Processes get `wait_s` to finish exiting (a SIGTERM from a dying parent is async)."""
    deadline = time.monotonic() + wait_s
    procs = our_processes()
    while procs and time.monotonic() < deadline:
        psutil.wait_procs(procs, timeout=max(0.0, deadline - time.monotonic()))
        procs = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    left = [f"process {p.pid}: {' '.join(p.cmdline())}" for p in procs if p.is_running()]
    suspects = [e for e in dgdo_entries() - before if not _in_use_elsewhere(e)]
    # Another run's entry on its way out is gone in a moment; a leftover stays.
    deadline = time.monotonic() + min(wait_s, 3.0)
    while suspects and time.monotonic() < deadline:
        time.sleep(0.2)  # files in a shared /tmp: nothing to await but their disappearance
        suspects = [e for e in suspects if os.path.lexists(e) and not _in_use_elsewhere(e)]
    return left + sorted(suspects)


_before_session: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _before_session.update(dgdo_entries())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = leftovers(_before_session)
    if left:
        sys.stderr.write("\n\nthe test session left these behind:\n" + "".join(f"  {x}\n" for x in left))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
