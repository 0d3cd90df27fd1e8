"""Full ring on the engine side: a stalled sidecar never loses an order event; positions coalesce.

Two sidecars share one engine: passengers on worker 1, drivers on worker 2. Worker 1 is
SIGSTOPped while its passengers' trips advance and their drivers stream positions through
worker 2, so the engine's out ring to worker 1 (4 KiB here) fills at once and the rest waits
in the engine. After SIGCONT every order_update must arrive, in order, with no seq gap; the
positions must arrive coalesced (fewer than sent) with the newest one last.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from conftest import ROOT, LineReader, Stack, stack_env
from wsclient import AppClient

PICKUP = {"lat": 38.5598, "lon": 68.7870}
DROPOFF = {"lat": 38.5750, "lon": 68.7950}
PAIRS = 3
POSITIONS_PER_LEG = 200  # three legs per trip: before arrived, before started, after started


def _sidecar(control: str, worker: int) -> tuple[subprocess.Popen[bytes], int]:
    p = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "sidecar", "--control", control, "--port", "0", "--status-interval", "0",
         "--worker", str(worker), "--positions-per-s", "100000", "--positions-burst", "100000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=stack_env(),
    )
    out = LineReader(p.stdout)
    port = int(out.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)").group(1))
    # It listens before it has attached; a command sent before then is answered engine_unavailable.
    Stack(p, out, port, instance="").wait_healthy()
    return p, port


async def test_stalled_sidecar_gets_every_order_event_in_order_and_positions_coalesced(engine_bin: Path) -> None:
    control = os.path.join(tempfile.mkdtemp(prefix="dgdo-full-"), "engine.sock")
    instance = f"full{uuid.uuid4().hex[:8]}"
    engine = subprocess.Popen([engine_bin, "--control", control, "--instance", instance, "--ring-capacity", "4096"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert engine.stdout is not None and engine.stdout.readline().startswith(b"dgdo-engine ready")
    side_p, port_p = _sidecar(control, 1)
    side_d, port_d = _sidecar(control, 2)
    try:
        passengers, drivers, orders = [], [], []
        for i in range(PAIRS):  # one pair at a time: the only free driver gets the new order
            d = await AppClient.open(f"ws://127.0.0.1:{port_d}/ws/driver/fd{i}")
            await d.expect("welcome")
            for m in ({"type": "driver_status", "status": "online", "id": "on"},
                      {"type": "driver_location", "lat": 38.5610, "lon": 68.7800, "id": "loc"}):
                await d.send(m)
                await d.expect("ack", id=m["id"], timeout=20)
            p = await AppClient.open(f"ws://127.0.0.1:{port_p}/ws/passenger/fp{i}")
            await p.expect("welcome")
            await p.send({"type": "ride_request", "id": "r", "pickup": PICKUP, "dropoff": DROPOFF})
            order_id = (await p.expect("ack", id="r", timeout=20))["order_id"]
            await d.expect("new_order", order_id=order_id)
            await d.send({"type": "order_accept", "order_id": order_id, "id": "a"})
            await d.expect("ack", id="a")
            await p.expect("order_update", order_id=order_id, status="accepted")
            passengers.append(p)
            drivers.append(d)
            orders.append(order_id)

        side_p.send_signal(signal.SIGSTOP)  # worker 1 stops reading its out ring
        last: dict[int, tuple[float, float]] = {}
        for i, d in enumerate(drivers):
            for leg, step in enumerate(("order_arrived", "trip_start", None)):
                for k in range(POSITIONS_PER_LEG):
                    pos = (round(38.5600 + 0.00001 * (leg * POSITIONS_PER_LEG + k), 6), 68.7800 + 0.001 * i)
                    await d.send({"type": "driver_location", "lat": pos[0], "lon": pos[1]})
                    last[i] = pos
                if step:
                    await d.send({"type": step, "order_id": orders[i], "id": step})
                    await d.expect("ack", id=step, timeout=20)  # the engine took it (and queued its update)
        await drivers[-1].send({"type": "ping", "id": "sync"})
        await drivers[-1].expect("pong", id="sync")
        side_p.send_signal(signal.SIGCONT)

        sent = 3 * POSITIONS_PER_LEG
        for i, p in enumerate(passengers):
            await p.expect("order_update", order_id=orders[i], status="started", timeout=30)
            want = {"lat": last[i][0], "lon": last[i][1]}
            while not any(m["type"] == "driver_location" and {k: m[k] for k in want} == want for m in p.seen):
                await p.recv(timeout=10)
            updates = [m for m in p.seen if m["type"] == "order_update"]
            statuses = [m["status"] for m in updates if m["status"] != "arriving"]  # "arriving" depends on distance
            assert statuses[-3:] == ["accepted", "arrived", "started"], statuses
            seqs = [m["seq"] for m in updates]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"an order event was lost: {seqs}"
            positions = [(m["lat"], m["lon"]) for m in p.seen if m["type"] == "driver_location"]
            assert positions[-1] == last[i], "the newest position must be the last one delivered"
            assert len(positions) < sent, f"{len(positions)} of {sent} positions: nothing was coalesced"
        for c in (*passengers, *drivers):
            await c.close()
    finally:
        side_p.send_signal(signal.SIGCONT)
        for side in (side_p, side_d):
            side.terminate()
            side.wait(20)
        engine.terminate()
        _out, err = engine.communicate(timeout=20)
        for name in os.listdir("/dev/shm"):
            if instance in name:
                os.unlink("/dev/shm/" + name)
        shutil.rmtree(os.path.dirname(control), ignore_errors=True)
    assert b"positions coalesced" in err, err.decode()[-2000:]
