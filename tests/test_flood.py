"""A flood costs the flooder, not everyone else (issue 9).

One client floods at full speed (tests/flooder.py: a raw socket in its own process, as an
attacker would write it) with the protocol's pings, then another with WebSocket PINGs, then
another with garbage, then one with pings at 72,000/s. Each is closed with 1008 within 2 s,
while a bystander on the same sidecar keeps a median ping round trip under 50 ms. The flooders
are told `rate_limited` only a few times (refusals past the first few a second go unanswered).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, mint, start_stack
from wsclient import AppClient

from sidecar.session.limits import ABUSE_AFTER, ANSWERED_REFUSALS, MESSAGES_RATE

FLOODER = ROOT / "tests" / "flooder.py"


async def flood(url: str, kind: str, rate: int, app_id: str) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(FLOODER), "--url", f"{url}/ws/driver/{app_id}?token={mint('driver', app_id)}",
        "--kind", kind, "--rate", str(rate), "--seconds", "10", stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    return json.loads(out)


async def ping_forever(c: AppClient, rtts: list[float]) -> None:
    i = 0
    while True:
        i += 1
        t0 = time.perf_counter()
        await c.send({"type": "ping", "id": i})
        await c.expect("pong", id=i, timeout=30)
        rtts.append(time.perf_counter() - t0)
        await asyncio.sleep(0.01)


@pytest.mark.timeout(120)
async def test_flooders_are_closed_1008_within_2s_and_a_bystander_barely_notices(engine_bin: Path) -> None:
    s = start_stack()
    try:
        bystander = await AppClient.open(f"{s.url}/ws/passenger/calm")
        await bystander.expect("welcome")
        rtts: list[float] = []
        pinger = asyncio.create_task(ping_forever(bystander, rtts))
        results = {}
        # Full speed, and the 72,000/s: slow enough that the refill admits a message every
        # ~36 refusals, which "100 refusals in a row" never saw as abuse.
        for n, (kind, rate) in enumerate((("ping", 0), ("wsping", 0), ("garbage", 0), ("ping", 72_000))):
            before = len(rtts)
            results[kind, rate] = r = await flood(s.url, kind, rate, f"flood-{n}")
            assert r["close_code"] == 1008, (kind, r)
            assert r["close_after_s"] < 2.0, (kind, r)
            assert r["frames_sent"] > MESSAGES_RATE.burst + ABUSE_AFTER, (kind, r)  # it did flood
            # Answered: at most the burst's worth of admitted messages and a few refusals, not one per frame.
            assert r["rate_limited"] <= ANSWERED_REFUSALS, (kind, r)
            assert r["replies"] <= MESSAGES_RATE.burst + MESSAGES_RATE.per_s * r["close_after_s"] + ANSWERED_REFUSALS
            assert len(rtts) > before, f"the bystander got no pong during the {kind} flood"
        pinger.cancel()
        print(f"bystander rtt median {statistics.median(rtts) * 1e3:.2f} ms max {max(rtts) * 1e3:.1f} ms; {results}")
        assert statistics.median(rtts) < 0.050, (statistics.median(rtts), max(rtts), results)
        status, body = s.http_get("/metrics")
        assert status == 200 and b'dgdo_closed_total{reason="abuse",worker="1"} 4.0' in body, body.decode()[-2000:]
        await bystander.close()
    finally:
        assert s.stop() == 0
