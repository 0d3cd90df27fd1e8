"""Liveness: a hung engine (SIGSTOP) keeps its control socket open, so only its heartbeat tells.

The real engine and the real sidecar, the sidecar with a short --engine-timeout-s: a stopped
engine must turn /healthz 503, commands must be refused at once with engine_unavailable, admins
must see it (system_stats and a log line); after SIGCONT all of it comes back by itself, and a
command queued just before the stop is answered once, by the engine.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from test_engine_death import DROPOFF, PICKUP, start_split, stop_split
from wsclient import AppClient

TIMEOUT_S = 0.5


async def admin_message(admin: AppClient, type_: str, pred, timeout: float = 10.0) -> dict:
    """The next admin message of `type_` for which `pred` holds."""
    deadline = time.monotonic() + timeout
    while True:
        m = await admin.expect(type_, timeout=max(0.01, deadline - time.monotonic()))
        if pred(m):
            return m


async def test_a_stopped_engine_is_unavailable_within_the_timeout_and_recovers_by_itself(engine_bin: Path) -> None:
    s = start_split(engine_bin, sidecar_args=("--engine-timeout-s", str(TIMEOUT_S)))
    assert s.engine is not None
    try:
        admin = await AppClient.open(f"{s.url}/ws/admin")
        await admin.expect("welcome")
        await admin.send({"type": "subscribe", "topics": ["system_stats", "log"], "id": "sub"})
        await admin.expect("ack", id="sub")
        passenger = await AppClient.open(f"{s.url}/ws/passenger/live1")
        await passenger.expect("welcome")
        await passenger.send({"type": "ride_request", "id": "before", "pickup": PICKUP, "dropoff": DROPOFF})
        await passenger.expect("ack", id="before")
        # An idle engine beats on its own (no traffic from here until the stop): still healthy
        # after several timeouts' worth of silence on the rings.
        t_idle = time.monotonic()
        while time.monotonic() - t_idle < 4 * TIMEOUT_S:
            assert s.healthz() == 200
            time.sleep(0.05)  # sampling /healthz over a span of time is the point here

        s.engine.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        # Taken by the sidecar before it can know: it waits in the ring for the engine.
        await passenger.send({"type": "ride_request", "id": "queued", "pickup": PICKUP, "dropoff": DROPOFF})
        s.wait_health(503, timeout=20 * TIMEOUT_S)
        since_stop = time.monotonic() - stopped_at
        print(f"/healthz 503 {since_stop * 1000:.0f} ms after SIGSTOP (timeout {TIMEOUT_S * 1000:.0f} ms)")
        # Not before the timeout: the last beat came at most one heartbeat period before the stop.
        assert since_stop >= TIMEOUT_S - 0.15, "unavailable before the engine could have missed its beats"

        t0 = time.monotonic()
        await passenger.send({"type": "ride_request", "id": "refused", "pickup": PICKUP, "dropoff": DROPOFF})
        err = await passenger.expect("error", id="refused", timeout=5)
        assert err["code"] == "engine_unavailable", err
        assert s.engine.poll() is None and s.healthz() == 503  # answered while the engine was still stopped
        print(f"refused in {(time.monotonic() - t0) * 1000:.1f} ms")
        await admin_message(admin, "log", lambda m: m["level"] == "error" and "silent" in m["message"])
        stats = await admin_message(admin, "system_stats", lambda m: not m["engine_available"])
        assert stats["engine_attached"] is True  # its socket is open: hung, not gone
        assert stats["engine_heartbeat_age_ms"] >= TIMEOUT_S * 1000
        assert not [m for m in passenger.seen if m.get("id") == "queued"], "the queued command was answered"

        s.engine.send_signal(signal.SIGCONT)
        s.wait_health(200, timeout=10)
        await admin_message(admin, "log", lambda m: "beats again" in m["message"])
        await admin_message(admin, "system_stats", lambda m: m["engine_available"] is True)
        queued = await passenger.expect("ack", id="queued", timeout=10)
        await passenger.send({"type": "ride_request", "id": "after", "pickup": PICKUP, "dropoff": DROPOFF})
        after = await passenger.expect("ack", id="after", timeout=10)
        assert queued["order_id"] != after["order_id"]
        await passenger.send({"type": "ping", "id": "sync"})
        await passenger.expect("pong", id="sync")
        answers = [m for m in passenger.seen if m.get("id") in ("queued", "refused") and m["type"] in ("ack", "error")]
        assert len(answers) == 2, answers  # each command answered exactly once
        await passenger.close()
        await admin.close()
    finally:
        s.engine.send_signal(signal.SIGCONT)
        stop_split(s)
