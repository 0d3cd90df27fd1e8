"""What `dgdo run` prints once it serves: the addresses a person needs, and how to get a token.

    [dgdo] dashboard: http://127.0.0.1:8765/admin?token=...     (a fresh admin token: click it)
    [dgdo] drivers: ws://127.0.0.1:8765/ws/driver/{driver_id}?token=JWT
    [dgdo] passengers: ws://127.0.0.1:8765/ws/passenger/{passenger_id}?token=JWT
    [dgdo] admin feed: ws://127.0.0.1:8765/ws/admin?token=JWT
    [dgdo] health: http://127.0.0.1:8765/healthz  metrics: http://127.0.0.1:8765/metrics
    [dgdo] token: /abs/path/.venv/bin/dgdo token --secret-file ... --role driver --sub d1

The token line is a command that works as printed, against this run's secret: the path to
`dgdo` is absolute, and the secret is named the way this run got it (its file, or the
environment variable; a secret made up for the run is spelled out, as it is printed anyway).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from sidecar.wire import auth


def browsable_host(host: str) -> str:
    """A wildcard listen address is not something a browser can open: name the loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, f"[{host}]" if ":" in host else host)


def dashboard_url(host: str, port: int, secret: str | None, ttl_s: float = auth.DEFAULT_TTL_S,
                  tls: bool = False) -> str:
    """The dashboard's address with a fresh admin token in it: one line a person can click."""
    url = f"{'https' if tls else 'http'}://{browsable_host(host)}:{port}/admin"
    if secret is None:  # auth off
        return url
    return f"{url}?token={auth.mint(secret, 'admin', 'dashboard', ttl_s)}"


def dgdo_command() -> list[str]:
    """This `dgdo`, by absolute path: the script beside our Python (a venv's bin/), else `python -m sidecar`."""
    beside = Path(sys.executable).parent / "dgdo"
    if os.access(beside, os.X_OK):
        return [str(beside.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "sidecar"]


def token_command(secret_file: Path | None, made_up: str | None) -> str:
    """The `dgdo token` command line that signs with this run's secret."""
    cmd = [*dgdo_command(), "token"]
    env = ""
    if secret_file is not None:
        cmd += ["--secret-file", str(secret_file.absolute())]
    elif made_up is not None:
        env = f"{auth.ENV_SECRET}={shlex.quote(made_up)} "
    # else: the secret is in $DGDO_JWT_SECRET, which the shell that started us has.
    return env + shlex.join([*cmd, "--role", "driver", "--sub", "d1"])


def lines(host: str, port: int, secret: str | None, secret_file: Path | None, made_up: str | None,
          tls: bool = False) -> list[str]:
    web = f"{'https' if tls else 'http'}://{browsable_host(host)}:{port}"
    ws = f"{'wss' if tls else 'ws'}://{browsable_host(host)}:{port}"
    query = "" if secret is None else "?token=JWT"
    out = [
        f"dashboard: {dashboard_url(host, port, secret, tls=tls)}",
        f"drivers: {ws}/ws/driver/{{driver_id}}{query}",
        f"passengers: {ws}/ws/passenger/{{passenger_id}}{query}",
        f"admin feed: {ws}/ws/admin{query}",
        f"health: {web}/healthz  metrics: {web}/metrics",
    ]
    if secret is not None:
        out.append(f"token: {token_command(secret_file, made_up)}")
    return out
