"""What `dgdo run --workers N` hands its workers, and what it takes from a port: real `dgdo run`
stacks (the real engine, worker 1 in the `dgdo run` process, worker 2 a `dgdo sidecar` child),
real `websockets` clients.

* A port another stack listens on is refused with one line, even when that stack's workers
  share it with SO_REUSEPORT: two unrelated stacks never split a port's connections.
* Every worker verifies tokens with the secret worker 1 uses, wherever the file says otherwise
  ($DGDO_JWT_SECRET over [auth] secret_file, as for worker 1).
* SIGHUP to `dgdo run` reloads the TLS certificate in every worker.
* Relative paths of the config file are the file's directory's; `tls_cert` without `tls_key`
  names both forms; `dgdo run --help` copies none of the engine's defaults.

Which worker took a connection is the `X-Dgdo-Worker` header of its 101. The clients here send
`Origin`, as a browser does: a token refused is then still upgraded (and answered with an
`error`, close 4401: shell/refusal.py), so a refusal says which worker refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import JWT_SECRET, Stack, mint, new_state_dir, start_stack
from test_cli import dgdo, one_line
from tlsstack import client_context, self_signed, start_tls_stack
from websockets.asyncio.client import connect

from sidecar.shell import cli
from sidecar.wire import auth

pytestmark = pytest.mark.timeout(120)

HEADER = "X-Dgdo-Worker"
OTHER_SECRET = "the-config-files-secret-which-worker-1-does-not-use"
TRIES = 200  # connections tried for each worker to be reached: the kernel picks, ~1/2 each


@pytest.fixture(scope="module")
def secret_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("secret")
    (d / "jwt-secret").write_text(OTHER_SECRET + "\n")
    cfg = d / "dgdo.toml"
    cfg.write_text(f'[auth]\nsecret_file = "{d / "jwt-secret"}"\n')
    return cfg


@pytest.fixture(scope="module")
def two_workers(engine_bin: Any, secret_files: Path) -> Iterator[Stack]:
    """`dgdo run --workers 2` with $DGDO_JWT_SECRET (JWT_SECRET) and a file whose [auth] secret_file
    holds another: worker 1 uses the environment's, as the secret's order says (shell/jwt_secret.py)."""
    s = start_stack("--workers", "2", "--config", str(secret_files))
    s.out.wait_for(r"sidecar listening")  # worker 2: attached before it listens
    yield s
    assert s.stop() == 0


async def first_message(url: str, ctx: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any]]:
    """Connects as a browser would; returns the worker that took it and the first message it sent."""
    async with connect(url, origin="http://localhost", ssl=ctx, open_timeout=5) as ws:  # type: ignore[arg-type]
        worker = int(ws.response.headers[HEADER])
        return worker, json.loads(await asyncio.wait_for(ws.recv(), 5))


async def on_each_worker(url: str, ctx: ssl.SSLContext | None = None, each: int = 2) -> dict[int, list[dict[str, Any]]]:
    """The first message of `each` connections landed on each of the 2 workers."""
    got: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(TRIES):
        worker, first = await first_message(url, ctx)
        got[worker].append(first)
        if all(len(v) >= each for v in got.values()):
            return got
    raise AssertionError(f"not every worker reached in {TRIES} connections: {({w: len(v) for w, v in got.items()})}")


def test_every_worker_verifies_with_the_secret_worker_1_uses(two_workers: Stack) -> None:
    async def main() -> None:
        ours = await on_each_worker(f"{two_workers.url}/ws/admin?token={mint('admin', 'ops')}")
        for worker, firsts in ours.items():
            assert [m["type"] for m in firsts] == ["welcome"] * len(firsts), (worker, firsts)
        # The file's secret, which worker 1 does not use: refused by every worker alike.
        theirs = await on_each_worker(f"{two_workers.url}/ws/admin?token={mint('admin', 'ops', secret=OTHER_SECRET)}")
        for worker, firsts in theirs.items():
            assert {(m["type"], m.get("code")) for m in firsts} == {("error", "unauthorized")}, (worker, firsts)
    asyncio.run(main())


def test_the_children_get_the_config_file_not_the_values_it_gave(two_workers: Stack) -> None:
    import psutil

    (child,) = [c for c in psutil.Process(two_workers.proc.pid).children() if "sidecar" in " ".join(c.cmdline())]
    argv = child.cmdline()
    assert "--config" in argv and "--secret-file" not in argv, argv
    assert child.environ()[auth.ENV_SECRET] == JWT_SECRET


@pytest.mark.parametrize("first", ["single", "two_workers"])
def test_a_second_dgdo_run_on_a_port_in_use_exits_with_one_line(
        two_workers: Stack, engine_bin: Any, first: str) -> None:
    """An unrelated stack on the port: a single worker (no SO_REUSEPORT) or two sharing it (SO_REUSEPORT)."""
    held = start_stack() if first == "single" else two_workers
    try:
        out = dgdo("run", "--host", "127.0.0.1", "--port", str(held.port), "--no-demo", "--status-interval", "0",
                   "--state-dir", new_state_dir(), env={auth.ENV_SECRET: JWT_SECRET})
        assert out.returncode == 1, out
        assert one_line(out.stderr) == f"dgdo: cannot listen on 127.0.0.1:{held.port}: Address already in use"
        assert "dgdo-engine ready" not in out.stdout  # refused before anything started
        assert held.http_get("/healthz")[0] == 200
    finally:
        if held is not two_workers:
            assert held.stop() == 0


def test_sighup_reloads_the_certificate_in_every_worker(engine_bin: Any, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "live")
    s = start_tls_stack(cert, key, "--workers", "2")
    try:
        s.out.wait_for(r"sidecar listening on wss://")  # worker 2
        url = f"{s.url}/ws/admin?token={mint('admin', 'ops')}"
        new_cert, new_key = self_signed(tmp_path / "renewed")
        shutil.copy(new_cert, cert)
        shutil.copy(new_key, key)
        s.proc.send_signal(signal.SIGHUP)
        for _ in range(2):  # worker 1's line and worker 2's (they share the output)
            s.out.wait_for(r"reloaded the TLS certificate", timeout=10)
        # A client trusting only the renewed certificate reaches each worker.
        got = asyncio.run(on_each_worker(url, client_context(new_cert)))
        assert {m["type"] for firsts in got.values() for m in firsts} == {"welcome"}
    finally:
        assert s.stop() == 0


def test_a_reload_passed_on_while_a_worker_starts_waits_for_it(engine_bin: Any, tmp_path: Path) -> None:
    # A SIGHUP's default action ends a process: a worker must not meet it before its handler is in place.
    cert, key = self_signed(tmp_path / "live")
    s = start_tls_stack(cert, key, "--workers", "2")
    try:
        first = int(s.out.wait_for(r"worker 2 pid=(\d+)").group(1))
        s.out.wait_for(r"sidecar listening on wss://")  # worker 2, up
        os.kill(first, signal.SIGKILL)  # dgdo run starts it again: caught while it imports
        s.out.wait_for(r"worker 2 pid=(\d+)")
        new_cert, new_key = self_signed(tmp_path / "renewed")
        shutil.copy(new_cert, cert)
        shutil.copy(new_key, key)
        s.proc.send_signal(signal.SIGHUP)
        for _ in range(2):  # worker 1's, and the new worker 2's once its handler is in place (which may
            # have read the renewed files at its start already: then it finds them unchanged)
            s.out.wait_for(r"SIGHUP: (reloaded the TLS certificate|the TLS certificate .* is unchanged)", timeout=20)
        assert any("passed signal 1 on to worker 2" in line for line in s.out.all)
        assert not any(re.search(r"worker 2 exited with status -1\b", line) for line in s.out.all), s.out.all[-20:]
        got = asyncio.run(on_each_worker(f"{s.url}/ws/admin?token={mint('admin', 'ops')}", client_context(new_cert)))
        assert {m["type"] for firsts in got.values() for m in firsts} == {"welcome"}
    finally:
        assert s.stop() == 0


# ---- the config file's paths, the TLS pair, the engine's defaults ---------------------------------


def test_relative_paths_in_the_config_file_are_its_directorys(tmp_path: Path) -> None:
    (tmp_path / "jwt-secret").write_text(JWT_SECRET + "\n")
    cfg = tmp_path / "dgdo.toml"
    cfg.write_text('[auth]\nsecret_file = "jwt-secret"\n[sidecar]\ntls_cert = "tls/missing.pem"\n'
                   'tls_key = "tls/missing-key.pem"\n')
    token = dgdo("token", "--config", str(cfg), "--role", "driver", "--sub", "d1")  # run from the checkout
    assert token.returncode == 0, token.stderr
    assert auth.verify(token.stdout.strip(), JWT_SECRET).sub == "d1"
    side = dgdo("sidecar", "--config", str(cfg), "--control", "@dgdo-test-nobody", "--status-interval", "0")
    assert side.returncode == 1
    assert str(tmp_path / "tls" / "missing.pem") in one_line(side.stderr)


@pytest.mark.parametrize("command", ["run", "sidecar"])
def test_a_tls_cert_without_key_in_the_file_names_both_forms(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "dgdo.toml"
    cfg.write_text('[sidecar]\ntls_cert = "/etc/dgdo/tls/fullchain.pem"\n')
    out = dgdo(command, "--config", str(cfg), "--control", "@x", env={auth.ENV_SECRET: JWT_SECRET}) \
        if command == "sidecar" else dgdo(command, "--config", str(cfg), env={auth.ENV_SECRET: JWT_SECRET})
    assert out.returncode == 2
    assert "tls_cert and tls_key (--tls-cert/--tls-key) go together" in one_line(out.stderr)


def test_run_help_copies_none_of_the_engines_defaults() -> None:
    out = dgdo("run", "--help")
    assert out.returncode == 0, out.stderr
    assert "the engine's defaults: dgdo-engine --help" in " ".join(out.stdout.split())
    for flag, (_type, text) in cli.ENGINE_FLAGS.items():
        assert not re.search(r"\(\d[\d.]*\)", text), (flag, text)  # "(50)": a copy that drifts
