"""A live EngineLink never attaches to a segment whose epoch differs from the attach reply.

A fake engine answers the hello with a correct reply whose epoch is not the one its
segments carry (as a leftover of an earlier run would): the link must refuse them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid

import pytest

from sidecar import ring
from sidecar.engine_link import ATTACH, CTL_MAGIC, CTL_VERSION, HELLO, EngineLink


def _serve_once(listener: socket.socket, reply_epoch: int, names: tuple[str, str]) -> None:
    conn, _ = listener.accept()
    with conn:
        HELLO.unpack(conn.recv(HELLO.size))
        bells = [os.eventfd(0), os.eventfd(0)]
        body = ATTACH.pack(CTL_MAGIC, CTL_VERSION, 1, os.getpid(), 0, reply_epoch, 4096, 4096,
                           names[0].encode(), names[1].encode())
        socket.send_fds(conn, [body], bells)
        for fd in bells:
            os.close(fd)
        conn.recv(16)  # hold the connection until the link lets go


@pytest.mark.parametrize("reply_epoch", [222, 111])
async def test_link_refuses_segments_of_another_epoch(reply_epoch: int) -> None:
    tag = uuid.uuid4().hex[:8]
    names = (f"/dgdo.ep{tag}.w1.in", f"/dgdo.ep{tag}.w1.out")
    segs = [ring.Segment(n, create_capacity=4096, epoch=111) for n in names]
    path = os.path.join(tempfile.mkdtemp(prefix="dgdo-ep-"), "c.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)
    server = asyncio.get_running_loop().run_in_executor(None, _serve_once, listener, reply_epoch, names)
    link = EngineLink(path, 1, lambda c, n: None)
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
        await asyncio.wait_for(server, 5)
        listener.close()
        for s in segs:
            s.close()
            s.unlink()
        shutil.rmtree(os.path.dirname(path))
