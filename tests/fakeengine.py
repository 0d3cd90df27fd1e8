"""A stand-in for the engine's control socket: hands an EngineLink two segments and two doorbells.

Tests then play the engine's side of the rings themselves (or with dgdo-ringpeer) while the
sidecar's real attach, doorbell and park code runs against them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import uuid

from sidecar import ring
from sidecar.engine_link import ATTACH, CTL_MAGIC, CTL_VERSION, HELLO


class FakeEngine:
    def __init__(self, capacity: int = 4096, epoch: int = 1, reply_epoch: int | None = None) -> None:
        tag = uuid.uuid4().hex[:8]
        self.in_name, self.out_name = f"/dgdo.fake{tag}.w1.in", f"/dgdo.fake{tag}.w1.out"
        self.in_seg = ring.Segment(self.in_name, create_capacity=capacity, epoch=epoch)
        self.out_seg = ring.Segment(self.out_name, create_capacity=capacity, epoch=epoch)
        self.engine_bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.worker_bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.capacity, self.reply_epoch = capacity, epoch if reply_epoch is None else reply_epoch
        self.path = os.path.join(tempfile.mkdtemp(prefix="dgdo-fake-"), "c.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(self.path)
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            HELLO.unpack(conn.recv(HELLO.size))
            reply = ATTACH.pack(CTL_MAGIC, CTL_VERSION, 1, os.getpid(), 0, self.reply_epoch, self.capacity,
                                self.capacity, self.in_name.encode(), self.out_name.encode())
            socket.send_fds(conn, [reply], [self.engine_bell, self.worker_bell])
            with contextlib.suppress(OSError):
                conn.recv(16)  # silent until the link lets go (EOF), as the engine's control socket is

    def close(self) -> None:
        self._listener.close()
        self._thread.join(5)
        for seg in (self.in_seg, self.out_seg):
            seg.close()
            seg.unlink()
        for fd in (self.engine_bell, self.worker_bell):
            os.close(fd)
        shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)
