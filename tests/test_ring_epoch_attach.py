"""A live EngineLink never attaches to a segment whose epoch differs from the attach reply.

A fake engine answers the hello with a correct reply whose epoch is not the one its
segments carry (as a leftover of an earlier run would): the link must refuse them.
"""

from __future__ import annotations

import pytest
from fakeengine import FakeEngine

from sidecar.engine import ring
from sidecar.engine.link import EngineLink


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
