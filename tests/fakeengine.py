"""A stand-in for the engine's control socket: hands an EngineLink two ring memfds and two doorbells.

Tests then play the engine's side of the rings themselves (or with dgdo-ringpeer) while the
sidecar's real attach, doorbell and park code runs against them. Like the engine, it listens on
an abstract socket name and beats the out ring's producer heartbeat: it leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid

from sidecar.engine import ring
from sidecar.engine.link import (
    ATTACH,
    CTL_MAGIC,
    CTL_NFDS,
    CTL_VERSION,
    FD_ENGINE_BELL,
    FD_IN_RING,
    FD_OUT_RING,
    FD_WORKER_BELL,
    HEARTBEAT_S,
    HELLO,
    socket_address,
)


class FakeEngine:
    def __init__(self, capacity: int = 4096, epoch: int = 1, reply_epoch: int | None = None,
                 version: int = CTL_VERSION) -> None:
        tag = uuid.uuid4().hex[:8]
        self.in_seg = ring.Segment.create(capacity, epoch=epoch, label=f"dgdo.fake{tag}.w1.in")
        self.out_seg = ring.Segment.create(capacity, epoch=epoch, label=f"dgdo.fake{tag}.w1.out")
        self.engine_bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.worker_bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.capacity, self.reply_epoch = capacity, epoch if reply_epoch is None else reply_epoch
        self.version = version  # what its attach reply says it speaks
        self.path = f"@dgdo-fake-{tag}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(socket_address(self.path))
        self._listener.listen(1)
        self._closed = threading.Event()
        self._beat = ring.Producer(self.out_seg)  # only its heartbeat: tests write through their own
        self._threads = [threading.Thread(target=self._serve, daemon=True),
                         threading.Thread(target=self._beat_forever, daemon=True)]
        for t in self._threads:
            t.start()

    def _beat_forever(self) -> None:
        while not self._closed.wait(HEARTBEAT_S):
            self._beat.heartbeat(time.monotonic_ns())

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            HELLO.unpack(conn.recv(HELLO.size))
            reply = ATTACH.pack(CTL_MAGIC, self.version, 1, os.getpid(), 0, self.reply_epoch, self.capacity,
                                self.capacity)
            fds = [0] * CTL_NFDS
            fds[FD_ENGINE_BELL], fds[FD_WORKER_BELL] = self.engine_bell, self.worker_bell
            fds[FD_IN_RING], fds[FD_OUT_RING] = self.in_seg.fd, self.out_seg.fd
            self._beat.heartbeat(time.monotonic_ns())  # as the engine does at attach
            socket.send_fds(conn, [reply], fds)
            with contextlib.suppress(OSError):
                conn.recv(16)  # silent until the link lets go (EOF), as the engine's control socket is

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() nobody answered
        self._listener.close()
        for t in self._threads:
            t.join(5)
        for seg in (self.in_seg, self.out_seg):
            seg.close()
        for fd in (self.engine_bell, self.worker_bell):
            os.close(fd)
