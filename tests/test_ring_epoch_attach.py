"""What a sidecar attaches to, and what it refuses.

A live EngineLink never attaches to a segment whose epoch differs from the attach reply: a fake
engine answers the hello with a correct reply whose epoch is not the one its segments carry (as a
leftover of an earlier run would), and the link must refuse them. An engine and a sidecar of
different releases (another control version, include/dgdo/control.h) refuse each other at attach
and say which versions met, rather than misread each other's records.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import LineReader, engine_cmd
from fakeengine import FakeEngine

from sidecar.engine import ring
from sidecar.engine.link import ATTACH, CTL_MAGIC, CTL_VERSION, HELLO, EngineLink, socket_address


@pytest.mark.parametrize("reply_epoch", [222, 111])
async def test_link_refuses_segments_of_another_epoch(reply_epoch: int) -> None:
    engine = FakeEngine(epoch=111, reply_epoch=reply_epoch)
    link = EngineLink(engine.path, 1, lambda c, n: None)
    try:
        if reply_epoch == 111:  # control case: the same fake engine with a matching epoch is accepted
            await link.attach(timeout=5)
            assert link.attached and link.epoch == 111
        else:
            with pytest.raises(ring.RingError, match="stale"):
                await link.attach(timeout=5)
            assert not link.attached
    finally:
        link.close()
        engine.close()


async def test_link_refuses_an_engine_of_another_release_and_says_which() -> None:
    engine = FakeEngine(version=CTL_VERSION - 1)
    link = EngineLink(engine.path, 1, lambda c, n: None)
    try:
        expected = (f"engine speaks control version {CTL_VERSION - 1}, this sidecar {CTL_VERSION}: "
                    "run an engine and sidecars of one release")
        with pytest.raises(ConnectionError, match=expected):
            await link.attach(timeout=5)
        assert not link.attached
    finally:
        link.close()
        engine.close()


def test_the_engine_refuses_a_sidecar_of_another_release_and_says_which(engine_bin: Path) -> None:
    control = f"@dgdo-test-{uuid.uuid4().hex[:8]}"
    engine = subprocess.Popen(engine_cmd(engine_bin, control), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert engine.stdout is not None and engine.stdout.readline().startswith(b"dgdo-engine ready")
        err = LineReader(engine.stderr)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(10)
            sock.connect(socket_address(control))
            sock.send(HELLO.pack(CTL_MAGIC, CTL_VERSION - 1, 7, os.getpid(), 0))
            data, fds, _flags, _addr = socket.recv_fds(sock, ATTACH.size, 4)
            magic, version, _worker, _pid, status, _epoch, _in_cap, _out_cap = ATTACH.unpack(data)
            assert (magic, version, status, fds) == (CTL_MAGIC, CTL_VERSION, -71, [])  # -EPROTO, no rings
            assert sock.recv(16) == b""  # and the connection closed
        err.wait_for(rf"worker 7 \(pid {os.getpid()}\) refused: it speaks control version {CTL_VERSION - 1}, "
                     rf"this engine {CTL_VERSION} \(run an engine and sidecars of one release\)", timeout=10)
        # It goes on serving: a sidecar of its own release attaches.
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(10)
            sock.connect(socket_address(control))
            sock.send(HELLO.pack(CTL_MAGIC, CTL_VERSION, 7, os.getpid(), 0))
            data, fds, _flags, _addr = socket.recv_fds(sock, ATTACH.size, 4)
            for fd in fds:
                os.close(fd)
            assert ATTACH.unpack(data)[4] == 0 and len(fds) == 4
    finally:
        engine.terminate()
        assert engine.wait(10) == 0
