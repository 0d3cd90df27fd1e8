"""The command lines an operator types: --version, and every bad flag or environment problem as
one line on stderr with a non-zero exit (no traceback, no usage dump); the JWT secret from a
systemd credential; the idle status line."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ENGINE, JWT_SECRET, ROOT, stack_env
from websockets.exceptions import InvalidStatus
from wsclient import AppClient

from sidecar.session.stats import SidecarStats
from sidecar.shell.cli import CREDENTIAL_SECRET, configured_secret
from sidecar.wire import auth

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def dgdo(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DGDO_JWT_SECRET", "CREDENTIALS_DIRECTORY")}
    return subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=timeout)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    assert "Traceback" not in text
    return lines[0]


def test_version_of_both_programs_is_the_projects() -> None:
    out = dgdo("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"dgdo {VERSION}", out
    eng = subprocess.run([str(ENGINE), "--version"], capture_output=True, text=True, timeout=10)
    assert eng.returncode == 0 and eng.stdout.strip() == f"dgdo-engine {VERSION}"


@pytest.mark.parametrize(("args", "says"), [
    (("sidecar", "--control", "@x", "--port", "99999"), "--port: must be between 0 and 65535, not 99999"),
    (("sidecar", "--control", "@x", "--port", "http"), "--port: must be an integer, not 'http'"),
    (("sidecar", "--control", "@x", "--log-level", "verbose"), "--log-level: must be one of DEBUG"),
    (("sidecar", "--control", "@x", "--worker", "70000"), "--worker: must be between 1 and 65535"),
    (("sidecar", "--control", "@x", "--worker", "0"), "--worker: must be between 1 and 65535"),
    (("sidecar", "--control", "@x", "--status-interval", "-1"), "--status-interval"),
    (("run", "--matching", "greedyy"), "--matching: invalid choice: 'greedyy'"),
    (("run", "--workers", "0"), "--workers: must be between 1 and 64"),
    (("run", "--fsync", "sometimes"), "--fsync: invalid choice"),
    (("sidecar",), "--control"),
    (("frobnicate",), "invalid choice"),
])
def test_a_bad_flag_is_one_line_and_exit_2(args: tuple[str, ...], says: str) -> None:
    out = dgdo(*args, env={"DGDO_JWT_SECRET": JWT_SECRET})
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert says in line and line.startswith("dgdo") and "--help" in line


def test_a_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = dgdo("sidecar", "--control", "@dgdo-test-no-engine", "--port", str(port), "--status-interval", "0",
                   env={"DGDO_JWT_SECRET": JWT_SECRET})
    assert out.returncode == 1
    assert one_line(out.stderr) == f"dgdo: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_missing_engine_binary_is_one_line() -> None:
    out = dgdo("run", "--no-demo", env={"DGDO_ENGINE": "/nonexistent/dgdo-engine", "DGDO_JWT_SECRET": JWT_SECRET})
    assert out.returncode == 1
    assert "DGDO_ENGINE=/nonexistent/dgdo-engine is not an executable file" in one_line(out.stderr)


@pytest.mark.parametrize("args", [("--matching", "greedyy"), ("--tick-ms", "0"), ("--bogus", "1")])
def test_engine_bad_flag_is_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    eng = subprocess.run([str(ENGINE), "--control", "@dgdo-test-x", *args], capture_output=True, text=True, timeout=10)
    assert eng.returncode == 2
    assert re.fullmatch(r"dgdo-engine: .+ \(see dgdo-engine --help\)", one_line(eng.stderr))


def test_log_lines_carry_their_level() -> None:
    """A sidecar with no engine to attach to: its first log lines name their level."""
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "sidecar", "--control", "@dgdo-test-nobody",
                             "--port", "0", "--status-interval", "0", "--insecure-no-auth"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=stack_env())
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the warning that auth is off
    finally:
        proc.terminate()
        proc.wait(20)
    assert re.match(r"\d{4}-\d\d-\d\d [\d:,]+ WARNING dgdo ! auth is OFF", line), line


# ---- the JWT secret as a systemd credential --------------------------------------------------


def test_secret_comes_from_the_environment_else_the_credential(tmp_path: Path) -> None:
    (tmp_path / CREDENTIAL_SECRET).write_text("from-the-credential-" + "x" * 20 + "\n")  # `echo`'s newline
    creds = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert configured_secret(creds) == "from-the-credential-" + "x" * 20
    from_env = "from-env-" + "y" * 23  # 32 bytes: the least a secret may have
    assert configured_secret({**creds, auth.ENV_SECRET: from_env}) == from_env
    assert configured_secret({"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) is None
    assert configured_secret({}) is None
    (tmp_path / CREDENTIAL_SECRET).write_text("\n")
    with pytest.raises(SystemExit, match="is empty"):
        configured_secret(creds)


def test_token_minted_with_the_credential_verifies(tmp_path: Path) -> None:
    secret = "credential-secret-0123456789abcdef"
    (tmp_path / CREDENTIAL_SECRET).write_text(secret + "\n")
    out = dgdo("token", "--role", "driver", "--sub", "d1", env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert auth.verify(out.stdout.strip(), secret).sub == "d1"
    out = dgdo("token", "--role", "driver", "--sub", "d1", "--secret-file", str(tmp_path / CREDENTIAL_SECRET))
    assert auth.verify(out.stdout.strip(), secret).sub == "d1"
    out = dgdo("token", "--role", "driver", "--sub", "d1", "--secret-file", str(tmp_path / "missing"))
    assert out.returncode == 1 and "cannot read the JWT secret" in one_line(out.stderr)


def test_sidecar_serves_with_the_credential_and_no_env_secret(tmp_path: Path, engine_bin: Path) -> None:
    """`dgdo sidecar` under LoadCredential=: no DGDO_JWT_SECRET anywhere, tokens checked with the file's."""
    secret = "credential-secret-0123456789abcdef"
    (tmp_path / CREDENTIAL_SECRET).write_text(secret)
    env = {k: v for k, v in stack_env(CREDENTIALS_DIRECTORY=str(tmp_path)).items() if k != auth.ENV_SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "sidecar", "--control", "@dgdo-test-nobody-2",
                             "--port", "0", "--status-interval", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        m = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert m, proc.stderr.read() if proc.stderr else ""
        async def status(token: str) -> int:
            try:
                ws = await AppClient.open(f"ws://127.0.0.1:{m.group(1)}/ws/driver/d1", token=token)
            except InvalidStatus as e:
                return e.response.status_code
            await ws.close()
            return 101

        assert asyncio.run(status(auth.mint("wrong-secret-0123456789abcdef-0123", "driver", "d1"))) == 401
        assert asyncio.run(status(auth.mint(secret, "driver", "d1"))) == 101
    finally:
        proc.terminate()
        proc.wait(20)


def test_idle_status_line_says_no_pushes_yet() -> None:
    s = SidecarStats()
    assert "no pushes yet" in s.status_line() and "p50" not in s.status_line()
    s.push_latency.add(120_000)
    assert "push p50   120.0 µs" in s.status_line()
