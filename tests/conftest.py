"""Fixtures that run the real thing: the engine binary, the sidecar process, real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every sidecar the tests start checks tokens signed with this; clients mint theirs with `mint()`.
JWT_SECRET = "dgdo-tests-secret-0123456789abcdef-not-for-production"


def mint(role: str, sub: str, ttl_s: float = 3600, secret: str = JWT_SECRET) -> str:
    """A token for (role, sub) that the test stacks accept."""
    from sidecar import auth

    return auth.mint(secret, role, sub, ttl_s)


def stack_env(**extra: str) -> dict[str, str]:
    """The environment for a sidecar process under test: the known secret, unbuffered output."""
    return {**os.environ, "DGDO_JWT_SECRET": JWT_SECRET, "PYTHONUNBUFFERED": "1", **extra}

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


@pytest.fixture
def shm_name() -> Iterator[str]:
    name = f"/dgdo-test-{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(FileNotFoundError):
        os.unlink("/dev/shm" + name)


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


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    out: LineReader
    port: int
    instance: str
    jwt_secret: str = JWT_SECRET

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def http_get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

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


def start_stack(*extra: str, env: dict[str, str] | None = None) -> Stack:
    instance = f"t{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "sidecar", "run", "--host", "127.0.0.1", "--port", "0", "--no-demo",
           "--status-interval", "0", "--instance", instance, *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, env=stack_env(**(env or {})))
    out = LineReader(proc.stdout)
    try:
        m = out.wait_for(r"sidecar listening on ws://127\.0\.0\.1:(\d+)")
    except TimeoutError:
        proc.kill()
        raise
    stack = Stack(proc, out, int(m.group(1)), instance)
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
