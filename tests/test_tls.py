"""TLS in the sidecar (`--tls-cert` / `--tls-key`): the real engine and sidecar serving wss:// and
https://, `websockets` clients that trust a certificate made at test time, host name checked.

A ride completes over wss://; a plain ws:// client on the TLS port fails without hurting anyone;
the demo `dgdo run` starts follows the sidecar onto wss://; SIGHUP takes a renewed certificate
without dropping a connection (and keeps the old one when the new files are bad); a certificate
or key that cannot be used is one line and a non-zero exit before anything starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import JWT_SECRET
from test_cli import dgdo, one_line
from test_run_demo import STATUS
from tlsstack import TlsStack, client_context, drive_ride, https_get, open_app, self_signed, start_tls_stack
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidMessage

from dgdo_apps import client as app_client


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls-other"))


@pytest.fixture(scope="module")
def tls_stack(engine_bin: Path, certs: tuple[Path, Path]) -> Iterator[TlsStack]:
    s = start_tls_stack(*certs)
    yield s
    assert s.stop() == 0


async def ride(base_url: str, ctx: ssl.SSLContext | None, driver_id: str, passenger_id: str) -> int:
    """A driver goes online, a passenger asks, the driver accepts and drives to the end; returns the order id."""
    d = await open_app(base_url, f"/ws/driver/{driver_id}", ctx)
    await d.send({"type": "driver_location", "lat": 38.5610, "lon": 68.7860, "id": "l0"})
    await d.expect("ack", id="l0")
    await d.send({"type": "driver_status", "status": "online", "id": "s0"})
    await d.expect("ack", id="s0")
    p = await open_app(base_url, f"/ws/passenger/{passenger_id}", ctx)
    order = await drive_ride(d, p)
    await p.close()
    await d.close()
    return order


async def test_a_ride_completes_over_wss_straight_to_the_sidecar(tls_stack: TlsStack) -> None:
    assert tls_stack.http_get("/healthz") == (200, b"ok")  # https:// on the same port
    order = await ride(tls_stack.url, tls_stack.client_ssl, "d1", "p1")
    assert order > 0
    # What was negotiated: TLS 1.2 at least, a forward-secret AEAD cipher.
    app = await open_app(tls_stack.url, "/ws/admin", tls_stack.client_ssl)
    tls_obj = app.ws.transport.get_extra_info("ssl_object")
    assert tls_obj.version() in ("TLSv1.2", "TLSv1.3")
    assert "GCM" in tls_obj.cipher()[0] or "CHACHA20" in tls_obj.cipher()[0]
    await app.close()


async def test_plain_ws_to_the_tls_port_fails_cleanly_and_hurts_no_one(tls_stack: TlsStack) -> None:
    d = await open_app(tls_stack.url, "/ws/driver/d2", tls_stack.client_ssl)
    plain = tls_stack.url.replace("wss://", "ws://")
    with pytest.raises((InvalidMessage, InvalidHandshake, OSError, EOFError)):
        await asyncio.wait_for(connect(f"{plain}/ws/passenger/p2", open_timeout=5), 10)
    # Neither plain HTTP nor bytes of no protocol at all get anything but a closed socket.
    with pytest.raises(OSError):
        https_get(f"http://127.0.0.1:{tls_stack.port}/healthz", None)
    with socket.create_connection(("127.0.0.1", tls_stack.port), timeout=5) as junk:
        junk.sendall(b"\x16\x03\x01garbage\r\n\r\n" * 10)
        got = b"x"
        with contextlib.suppress(ConnectionResetError):
            while got:  # perhaps a TLS alert, then EOF: never a hang (socket.timeout fails the test)
                got = junk.recv(4096)
    # The connection that was there is untouched, and new ones are served.
    await d.send({"type": "driver_status", "status": "online", "id": "still"})
    await d.expect("ack", id="still")
    p = await open_app(tls_stack.url, "/ws/passenger/p2", tls_stack.client_ssl)
    await p.close()
    await d.close()
    assert tls_stack.http_get("/healthz")[0] == 200
    assert not [line for line in tls_stack.out.all if "Traceback" in line or "ERROR" in line], tls_stack.out.all[-20:]


async def test_the_app_client_trusts_a_pinned_certificate_and_nothing_else(
        tls_stack: TlsStack, certs: tuple[Path, Path], other_certs: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGDO_JWT_SECRET", JWT_SECRET)  # open_link mints its token with it
    link = await app_client.open_link(tls_stack.url, "passenger", "p3", lambda m: None,
                                      ssl_context=app_client.pinned_context(certs[0]))
    await link.close()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(app_client.Unreachable, match="certificate"):
        await app_client.open_link(tls_stack.url, "passenger", "p3", lambda m: None,
                                   ssl_context=app_client.pinned_context(other_certs[0]))
    assert loop.time() - t0 < 5, "an untrusted certificate is final: no retrying for the whole window"


def test_dgdo_run_with_tls_runs_its_demo_over_wss(engine_bin: Path, certs: tuple[Path, Path]) -> None:
    s = start_tls_stack(*certs, "--demo", "4", "--status-interval", "0.5")
    try:
        assert any("dashboard: https://127.0.0.1:" in line for line in s.out.all)
        completed = 0
        while completed == 0:  # each status line awaited; the demo's first trips take a few seconds
            m = s.out.wait_for(STATUS, timeout=60)
            online, requested, matched, completed = (int(g) for g in m.groups()[:4])
        assert online >= 1 and requested >= matched >= completed >= 1
    finally:
        assert s.stop() == 0
    assert not [line for line in s.out.all if "could not connect" in line or "Traceback" in line]


async def test_sighup_takes_a_renewed_certificate_and_keeps_connections(
        engine_bin: Path, tmp_path: Path) -> None:
    live = tmp_path / "live"
    cert, key = self_signed(live)
    s = start_tls_stack(cert, key)
    try:
        old = await open_app(s.url, "/ws/driver/d1", s.client_ssl)
        first = old.ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        new_cert, new_key = self_signed(tmp_path / "renewed")
        shutil.copy(new_cert, cert)
        shutil.copy(new_key, key)
        s.proc.send_signal(signal.SIGHUP)
        s.out.wait_for(r"reloaded the TLS certificate", timeout=10)
        fresh = await open_app(s.url, "/ws/passenger/p1", client_context(new_cert))
        second = fresh.ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert second != first and second == ssl.PEM_cert_to_DER_cert(new_cert.read_text())
        await old.send({"type": "driver_status", "status": "online", "id": "after"})  # still connected
        await old.expect("ack", id="after")

        s.proc.send_signal(signal.SIGHUP)  # nothing renewed (a credential's copy): said, not "reloaded"
        s.out.wait_for(r"the TLS certificate .* is unchanged: still serving the one loaded before", timeout=10)

        key.write_text("not a key\n")  # a botched renewal: the sidecar keeps what it serves
        s.proc.send_signal(signal.SIGHUP)
        s.out.wait_for(r"still serving the certificate loaded before", timeout=10)
        again = await open_app(s.url, "/ws/passenger/p2", client_context(new_cert))
        await again.close()
        await fresh.close()
        await old.close()
    finally:
        assert s.stop() == 0


# ---- a certificate or key that cannot be used: one line, before anything starts --------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path],
              other_certs: tuple[Path, Path]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls-bad")
    encrypted = d / "encrypted.pem"
    subprocess.run(["openssl", "pkey", "-in", str(certs[1]), "-aes256", "-passout", "pass:secret",
                    "-out", str(encrypted)], check=True, capture_output=True)
    junk = d / "junk.pem"
    junk.write_text("hello\n")
    return {"cert": certs[0], "key": certs[1], "other_key": other_certs[1], "encrypted": encrypted, "junk": junk,
            "missing": d / "missing.pem"}


@pytest.mark.parametrize("command", ["sidecar", "run"])
@pytest.mark.parametrize(("cert", "key", "status", "says"), [
    ("cert", None, 2, "tls_cert and tls_key (--tls-cert/--tls-key) go together"),
    (None, "key", 2, "tls_cert and tls_key (--tls-cert/--tls-key) go together"),
    ("missing", "key", 1, "cannot read the TLS certificate"),
    ("cert", "missing", 1, "cannot read the TLS key"),
    ("cert", "other_key", 1, "the key does not belong to the certificate"),
    ("cert", "encrypted", 1, "is encrypted"),
    ("junk", "key", 1, "is not a PEM file"),
    ("key", "key", 1, "holds no certificate"),
    ("cert", "cert", 1, "holds no private key"),
])
def test_an_unusable_certificate_or_key_is_one_line(bad_files: dict[str, Path], command: str, cert: str | None,
                                                    key: str | None, status: int, says: str) -> None:
    args = [command, "--port", "0", "--status-interval", "0"]
    args += ["--control", "@dgdo-test-no-engine"] if command == "sidecar" else ["--no-demo", "--no-journal"]
    if cert:
        args += ["--tls-cert", str(bad_files[cert])]
    if key:
        args += ["--tls-key", str(bad_files[key])]
    out = dgdo(*args, env={"DGDO_JWT_SECRET": JWT_SECRET}, timeout=20)
    assert out.returncode == status, out
    line = one_line(out.stderr)
    assert says in line and line.startswith("dgdo"), line
    assert "engine ready" not in out.stdout  # refused before the engine was started

