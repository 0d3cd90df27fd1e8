"""What the TLS tests share: throwaway certificates, clients that trust them, a stack serving wss://.

The certificates are made at test time with the openssl command-line tool (sidecar/shell/tls.py
`self_signed`), for 127.0.0.1 and localhost, and trusted by the clients as their only CA: the
host name is checked as a phone would check it.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import ROOT, LineReader, Stack, new_state_dir, stack_env
from wsclient import AppClient

from sidecar.shell.tls import self_signed

__all__ = ["TlsStack", "client_context", "https_get", "open_app", "self_signed", "start_tls_stack"]


def client_context(cafile: Path) -> ssl.SSLContext:
    """A client's context that trusts only `cafile`, host name checked (what an app does with a private CA)."""
    return ssl.create_default_context(cafile=str(cafile))


def https_get(url: str, ctx: ssl.SSLContext | None, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class TlsStack(Stack):
    """`dgdo run --tls-cert --tls-key`: the conftest Stack, spoken to over wss:// and https://."""

    client_ssl: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    def http_get(self, path: str) -> tuple[int, bytes]:
        return https_get(f"https://127.0.0.1:{self.port}{path}", self.client_ssl)


def start_tls_stack(cert: Path, key: Path, *extra: str) -> TlsStack:
    instance = f"t{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "sidecar", "run", "--host", "127.0.0.1", "--port", "0", "--status-interval", "0",
           "--instance", instance, "--state-dir", new_state_dir(), "--tls-cert", str(cert), "--tls-key", str(key),
           *extra]
    if "--demo" not in extra:
        cmd.append("--no-demo")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=stack_env())
    out = LineReader(proc.stdout)
    try:
        port = int(out.wait_for(r"sidecar listening on wss://127\.0\.0\.1:(\d+)").group(1))
    except TimeoutError:
        proc.kill()
        raise
    stack = TlsStack(proc, out, port, instance, client_ssl=client_context(cert))
    stack.wait_healthy()
    return stack


PICKUP = {"lat": 38.5598, "lon": 68.7870}
DROPOFF = {"lat": 38.5750, "lon": 68.7950}


async def drive_ride(d: AppClient, p: AppClient) -> int:
    """With the driver online: the passenger asks, the driver accepts and drives to the end; the order id."""
    await p.send({"type": "ride_request", "id": "r1", "pickup": PICKUP, "dropoff": DROPOFF})
    order: int = (await p.expect("ack", id="r1"))["order_id"]
    await d.expect("new_order", order_id=order)
    for step, status in (("order_accept", "accepted"), ("order_arrived", "arrived"), ("trip_start", "started"),
                         ("trip_complete", "completed")):
        await d.send({"type": step, "order_id": order, "id": step})
        await d.expect("ack", id=step)
        await p.expect("order_update", order_id=order, status=status)
    return order


async def open_app(base_url: str, path: str, ctx: ssl.SSLContext | None, **kw: Any) -> AppClient:
    """An app connection over wss:// (a `websockets` client) trusting what `ctx` trusts; waits for the welcome."""
    app = await AppClient.open(f"{base_url}{path}", ssl=ctx, **kw)
    await app.expect("welcome")
    return app


def wait_until(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Polls `check()` (another process's state, read over HTTP: nothing to await) until true."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} never held")
        time.sleep(0.05)
