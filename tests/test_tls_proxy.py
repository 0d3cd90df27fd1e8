"""TLS at a reverse proxy: Debian's nginx, run by the test with docs/nginx.conf (its ports and paths
replaced), terminating wss:// in front of two sidecar workers of one engine, each on a port of its
own (`dgdo sidecar --worker 1` and `--worker 2`). `websockets` clients trust a certificate made at
test time, host name checked.

Through the proxy: a driver on one worker and a passenger on the other complete a ride; a passenger
whose connection silently died reconnects with `last_seq`, lands on the other worker, and resumes
(the engine holds delivery state per app id); an idle client outlives the proxy's timeouts because
the workers' pings cross it; /healthz answers the proxy's checks, /metrics stays private; no
token reaches nginx's access log.
nginx is stopped and its directory removed at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, LineReader, engine_cmd, mint, stack_env
from tlsstack import DROPOFF, PICKUP, client_context, drive_ride, https_get, open_app, self_signed, wait_until

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
DOC = ROOT / "docs" / "nginx.conf"
# Timeouts the test gives nginx, and pings the workers send: the doc's 75 s against 30 + 15 s, scaled
# down so that an idle client can outlive the proxy's timeout twice over within a few seconds.
PROXY_TIMEOUT_S = 3
PING_IDLE_S, PING_REPLY_S = 1.0, 1.0

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed (scripts/install-deps.sh installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(doc: str, https_port: int, http_port: int, workers: list[int], cert: Path, key: Path,
           logs: Path) -> str:
    """docs/nginx.conf with this test's ports, certificate, timeouts and log directory. Every
    replacement must hit: a doc that drifts from what this test expects fails here rather than
    testing something else."""
    doc = doc.replace("/var/log/nginx/", f"{logs}/")  # each server's access_log, wherever it is set
    swaps = [
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("listen [::]:443 ssl;", ""),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen [::]:80;", ""),
        # The doc's one line (workers sharing 8765), as one line per worker on a port of its own.
        ("    server 127.0.0.1:8765 max_fails=1 fail_timeout=5s;\n",
         "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in workers)),
        ("/etc/letsencrypt/live/dispatch.example.com/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/dispatch.example.com/privkey.pem", str(key)),
        ("proxy_read_timeout 75s;", f"proxy_read_timeout {PROXY_TIMEOUT_S}s;"),
        ("proxy_send_timeout 75s;", f"proxy_send_timeout {PROXY_TIMEOUT_S}s;"),
    ]
    for old, new in swaps:
        assert doc.count(old) == 1, f"docs/nginx.conf: expected one {old!r}"
        doc = doc.replace(old, new)
    return doc


def main_conf(d: Path) -> str:
    """The nginx.conf around the doc's file (Debian's /etc/nginx/nginx.conf plays this part): every
    path in the test's directory, one worker process (least_conn's counts are per process)."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "\n".join(f"    {kind}_temp_path {d / kind};" for kind in kinds)
    return (f"worker_processes 1;\npid {d / 'nginx.pid'};\nerror_log {d / 'error.log'} info;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n    access_log {d / 'access.log'};\n{temp}\n    include {d / 'dgdo.conf'};\n}}\n")


@dataclass
class Proxied:
    url: str  # wss:// at nginx
    https: str
    http_port: int
    ctx: ssl.SSLContext
    workers: list[int]  # the workers' own (plain, loopback) ports
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    outs: list[LineReader] = field(default_factory=list)
    nginx_dir: Path | None = None

    def connections(self) -> list[int]:
        """Open WebSocket connections per worker, from each worker's own /metrics."""
        counts = []
        for port in self.workers:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                m = re.search(r"^dgdo_connections(?:\{[^}]*\})? (\d+)", r.read().decode(), re.M)
                assert m is not None
                counts.append(int(m.group(1)))
        return counts

    def wait_connections(self, want: list[int]) -> None:
        wait_until(lambda: self.connections() == want, what=f"connections per worker {want} (now {self.connections()})")


def _die_with_us() -> None:  # nginx is no program of ours: the kernel ends it with pytest, even after a kill -9
    _libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


_libc = ctypes.CDLL(None, use_errno=True)


def start_worker(control: str, worker: int) -> tuple[subprocess.Popen[bytes], LineReader, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "sidecar", "--control", control, "--worker", str(worker), "--port", "0",
         "--status-interval", "0", "--ping-idle-s", str(PING_IDLE_S), "--ping-reply-s", str(PING_REPLY_S)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=stack_env())
    out = LineReader(proc.stdout)
    port = int(out.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)").group(1))
    return proc, out, port


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="module")
def proxied(engine_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    cert, key = self_signed(tmp_path_factory.mktemp("proxy-tls"))
    instance = f"t{uuid.uuid4().hex[:8]}"
    control = f"@dgdo-test-{instance}"
    engine = subprocess.Popen(engine_cmd(engine_bin, control, "--instance", instance),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    nginx_dir = Path(tmp_path_factory.mktemp("nginx"))
    p = Proxied("", "", 0, client_context(cert), [], [engine], nginx_dir=nginx_dir)
    nginx: subprocess.Popen[bytes] | None = None
    try:
        assert engine.stdout is not None and engine.stdout.readline().startswith(b"dgdo-engine ready")
        for worker in (1, 2):
            proc, out, port = start_worker(control, worker)
            p.procs.append(proc)
            p.outs.append(out)
            p.workers.append(port)
        https_port, p.http_port = free_port(), free_port()
        (nginx_dir / "dgdo.conf").write_text(render(DOC.read_text(), https_port, p.http_port, p.workers, cert, key,
                                                             nginx_dir))
        (nginx_dir / "nginx.conf").write_text(main_conf(nginx_dir))
        assert NGINX is not None
        nginx = subprocess.Popen([NGINX, "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf"),
                                  "-e", str(nginx_dir / "error.log"), "-g", "daemon off;"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_us)
        p.url, p.https = f"wss://127.0.0.1:{https_port}", f"https://127.0.0.1:{https_port}"

        def healthy() -> bool:
            assert nginx is not None and nginx.poll() is None, (nginx_dir / "error.log").read_text()
            with contextlib.suppress(OSError):
                return https_get(f"{p.https}/healthz", p.ctx)[0] == 200
            return False

        wait_until(healthy, timeout=20, what="/healthz 200 through nginx")
        yield p
    finally:
        if nginx is not None:
            stop(nginx)  # SIGTERM: nginx's fast shutdown, its worker process with it
        codes = [stop(proc) for proc in p.procs[1:]]
        stop(engine)
        shutil.rmtree(nginx_dir, ignore_errors=True)
    assert codes == [0, 0]
    assert not nginx_dir.exists()


async def test_a_ride_completes_through_nginx_with_the_driver_and_passenger_on_different_workers(
        proxied: Proxied) -> None:
    d = await open_app(proxied.url, "/ws/driver/d1", proxied.ctx)
    await d.send({"type": "driver_location", "lat": 38.5610, "lon": 68.7860, "id": "l0"})
    await d.expect("ack", id="l0")
    await d.send({"type": "driver_status", "status": "online", "id": "s0"})
    await d.expect("ack", id="s0")
    p = await open_app(proxied.url, "/ws/passenger/p1", proxied.ctx)
    proxied.wait_connections([1, 1])  # least_conn: the second connection went to the other worker
    await drive_ride(d, p)
    await p.close()
    await d.close()
    proxied.wait_connections([0, 0])


async def test_a_passenger_reconnects_through_nginx_lands_on_the_other_worker_and_resumes(
        proxied: Proxied) -> None:
    d = await open_app(proxied.url, "/ws/driver/d2", proxied.ctx)
    await d.send({"type": "driver_location", "lat": 38.5610, "lon": 68.7860, "id": "l0"})
    await d.expect("ack", id="l0")
    await d.send({"type": "driver_status", "status": "online", "id": "s0"})
    await d.expect("ack", id="s0")
    wait_until(lambda: sum(proxied.connections()) == 1, what="the driver counted by its worker")
    driver_worker = proxied.connections().index(1)
    lost = await open_app(proxied.url, "/ws/passenger/p2", proxied.ctx)
    proxied.wait_connections([1, 1])  # least_conn: the passenger is on the other worker
    await lost.send({"type": "ride_request", "id": "r1", "pickup": PICKUP, "dropoff": DROPOFF})
    order = (await lost.expect("ack", id="r1"))["order_id"]
    await d.expect("new_order", order_id=order)
    await d.send({"type": "order_accept", "order_id": order, "id": "acc"})
    await d.expect("ack", id="acc")
    accepted = await lost.expect("order_update", order_id=order, status="accepted")
    # Into a tunnel: the phone gives up on that connection without a word; its worker still holds it.
    for step in ("order_arrived", "trip_start", "trip_complete"):
        await d.send({"type": step, "order_id": order, "id": step})
        await d.expect("ack", id=step)
    await d.close()
    counts = [1, 1]
    counts[driver_worker] = 0
    proxied.wait_connections(counts)  # only the lost connection is left, on the passenger's worker

    # Out of the tunnel: a new connection through the proxy, with the last seq the app processed.
    back = await open_app(proxied.url, f"/ws/passenger/p2?last_seq={accepted['seq']}", proxied.ctx)
    welcome = next(m for m in back.seen if m["type"] == "welcome")
    assert welcome["resumed"] is True and welcome["seq"] == accepted["seq"] + 3
    missed = [await back.expect("order_update", order_id=order) for _ in range(3)]
    assert [(m["status"], m["seq"]) for m in missed] == [
        ("arrived", accepted["seq"] + 1), ("started", accepted["seq"] + 2), ("completed", accepted["seq"] + 3)]
    counts = proxied.connections()
    assert counts[driver_worker] == 1, f"the reconnect should have landed on the other worker: {counts}"
    await back.close()
    with contextlib.suppress(Exception):
        await lost.close()
    proxied.wait_connections([0, 0])


async def test_an_idle_client_outlives_the_proxys_timeouts_because_pings_cross_it(proxied: Proxied) -> None:
    a = await open_app(proxied.url, "/ws/passenger/idle", proxied.ctx)
    await asyncio.sleep(2.5 * PROXY_TIMEOUT_S)  # the point is the passing of time: silence, as an app in a pocket
    await a.send({"type": "ping", "id": "still-there"})
    await a.expect("pong")
    await a.close()


def test_healthz_through_nginx_and_metrics_kept_private(proxied: Proxied) -> None:
    assert https_get(f"{proxied.https}/healthz", proxied.ctx) == (200, b"ok")
    assert https_get(f"{proxied.https}/metrics", proxied.ctx)[0] == 404
    for port in proxied.workers:  # each worker still answers its own checks on loopback
        assert https_get(f"http://127.0.0.1:{port}/healthz", None) == (200, b"ok")
    # Plain http:// to the proxy: sent to https://.
    req = urllib.request.Request(f"http://127.0.0.1:{proxied.http_port}/ws/driver/d1")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        opener.open(req, timeout=5)
        raise AssertionError("no redirect")
    except urllib.error.HTTPError as e:
        assert e.code == 301 and e.headers["Location"].startswith("https://127.0.0.1/ws/driver/d1")


async def test_no_token_is_kept_in_nginxs_access_log(proxied: Proxied) -> None:
    """Apps and the dashboard link carry their token as `?token=` (a browser cannot set a header on a
    WebSocket); nginx's default log line ("combined") would keep every one in the access log."""
    assert proxied.nginx_dir is not None
    access_log = proxied.nginx_dir / "access.log"
    admin, driver = mint("admin", "ops"), mint("driver", "leaky")
    assert https_get(f"{proxied.https}/admin/whoami?token={admin}", proxied.ctx)[0] == 200
    app = await open_app(proxied.url, f"/ws/driver/leaky?token={driver}", proxied.ctx)
    await app.close()
    with contextlib.suppress(urllib.error.HTTPError):  # plain http://: the redirect, 301
        urllib.request.build_opener(_NoRedirect).open(
            f"http://127.0.0.1:{proxied.http_port}/ws/driver/leaky?token={driver}", timeout=5)
    # nginx writes a request's line when it ends: the WebSocket's when its connection closed.
    wait_until(lambda: access_log.read_text().count("/ws/driver/leaky") >= 2, what="the requests in the access log")
    logged = access_log.read_text()
    assert "/admin/whoami" in logged
    assert admin not in logged and driver not in logged and "token=" not in logged


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None
