"""/ws/admin: topics carry what the engine and the sidecar already know."""

from __future__ import annotations

import json
from typing import Any

from conftest import Stack, mint
from picowsclient import PicowsClient
from wsclient import AppClient

PICKUP = {"lat": 38.5598, "lon": 68.7870}
DROPOFF = {"lat": 38.5750, "lon": 68.7950}


async def test_system_stats_arrive_on_subscribe_and_about_once_a_second(stack: Stack) -> None:
    admin = await AppClient.open(f"{stack.url}/ws/admin", subprotocol="dgdo.v1.msgpack")
    await admin.expect("welcome")
    await admin.send({"type": "subscribe", "topics": ["system_stats"], "id": "s"})
    await admin.expect("ack", id="s")
    first = await admin.expect("system_stats", timeout=1)  # at once, not a tick later
    second = await admin.expect("system_stats", timeout=3)
    assert 500 <= second["ts"] - first["ts"] <= 2500
    for field in ("matching_latency_us", "push_latency_us", "orders_per_min", "order_rates", "drivers_online",
                  "drivers_available", "drivers_by_state", "active_orders", "live_orders", "connections",
                  "connections_by_role", "ring_depths"):
        assert field in second, field
    assert second["connections"] >= 1 and second["engine_attached"] is True
    assert second["connections_by_role"] == {"driver": 0, "passenger": 0, "admin": 1}
    assert set(second["push_latency_us"]) == set(second["matching_latency_us"]) == {"p50", "p99"}
    assert set(second["order_rates"]) == {"requested", "matched", "completed", "no_driver"}
    assert set(second["ring_depths"]) == {"in_bytes", "in_backlog_bytes", "out_bytes"}
    await admin.close()


async def test_drivers_assignments_active_orders_and_log_topics(stack: Stack) -> None:
    admin = await PicowsClient.open(f"{stack.url}/ws/admin")
    await admin.expect("welcome")
    admin.send({"type": "subscribe", "topics": ["drivers", "assignments", "active_orders", "log"], "id": "s"})
    await admin.expect("ack", id="s")

    d = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await d.expect("welcome")
    await d.send({"type": "driver_status", "status": "online", "id": "on"})
    await d.send({"type": "driver_location", "lat": 38.5610, "lon": 68.7800, "id": "loc"})
    await d.expect("ack", id="loc")
    assert (await admin.expect("driver_status", driver_id="d1"))["status"] == "online"

    p = await AppClient.open(f"{stack.url}/ws/passenger/p1")
    await p.send({"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r"})
    order = (await p.expect("ack", id="r"))["order_id"]
    searching = await admin.expect("active_orders", order_id=order)
    assert (searching["status"], searching["passenger_id"]) == ("searching", "p1")
    await d.expect("new_order", order_id=order)
    await d.send({"type": "order_accept", "order_id": order, "id": "a"})
    accepted = await admin.expect("active_orders", order_id=order)
    assert (accepted["status"], accepted["driver_id"]) == ("accepted", "d1")
    assignment = await admin.expect("assignment", order_id=order)  # right after the change it comes from
    assert (assignment["driver_id"], assignment["passenger_id"]) == ("d1", "p1")

    # A second connection as d1 replaces the first: logged for admins, and d1 stays connected.
    d_again = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await d_again.expect("welcome")
    assert "4001" in (await admin.expect("log"))["message"]
    await d.close()
    await d_again.close()
    assert (await admin.expect("driver_status", driver_id="d1", status="disconnected"))["ts"] > 0
    await p.close()
    await admin.close()


async def test_admins_without_a_topic_get_nothing_unasked(stack: Stack) -> None:
    admin = await AppClient.open(f"{stack.url}/ws/admin")
    await admin.expect("welcome")
    d = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await d.send({"type": "driver_status", "status": "online", "id": "on"})
    await d.expect("ack", id="on")
    await admin.send({"type": "ping", "id": "p"})
    assert (await admin.recv())["type"] == "pong"  # no driver_status before it
    await d.close()
    await admin.close()


# ---- the fleet topic: the dashboard's map -----------------------------------------------------


async def next_fleet(admin: AppClient, until: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The next `fleet` message for which `until(message)` holds (deltas come twice a second)."""
    while True:
        m = await admin.expect("fleet", timeout=timeout)
        if until(m):
            return m


def row(m: dict[str, Any], driver_id: str) -> list[Any] | None:
    return next((r for r in m["drivers"] if r[0] == driver_id), None)


async def test_fleet_gives_a_snapshot_on_subscribe_then_batched_deltas_through_a_ride(stack: Stack) -> None:
    d = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await d.expect("welcome")
    await d.send({"type": "driver_status", "status": "online", "id": "on"})
    await d.send({"type": "driver_location", "lat": 38.5610, "lon": 68.7800, "id": "loc"})
    await d.expect("ack", id="loc")

    admin = await AppClient.open(f"{stack.url}/ws/admin")
    await admin.expect("welcome")
    await admin.send({"type": "subscribe", "topics": ["fleet"], "id": "s"})
    await admin.expect("ack", id="s")
    snap = await admin.expect("fleet", timeout=1)  # at once, not a tick later
    assert snap["full"] is True and snap["gone"] == []
    assert row(snap, "d1") == ["d1", 38.561, 68.78, "available", None]

    # Fifteen fixes in a burst (the positions bucket holds 20): the admin gets the last, in one row.
    for i in range(15):
        await d.send({"type": "driver_location", "lat": 38.5610 + i * 0.0001, "lon": 68.7800})
    await d.send({"type": "ping", "id": "sync"})
    await d.expect("pong", id="sync")
    moved = await next_fleet(admin, lambda m: (r := row(m, "d1")) is not None and r[1] == 38.5624)
    assert sum(1 for r in moved["drivers"] if r[0] == "d1") == 1
    deltas_with_d1 = [m for m in admin.seen if m.get("type") == "fleet" and not m["full"] and row(m, "d1")]
    assert len(deltas_with_d1) <= 2, "one row per tick, not one message per fix"

    p = await AppClient.open(f"{stack.url}/ws/passenger/p1")
    await p.expect("welcome")
    await p.send({"type": "ride_request", "pickup": PICKUP, "dropoff": DROPOFF, "id": "r"})
    order = (await p.expect("ack", id="r"))["order_id"]
    await d.expect("new_order", order_id=order)
    offered = await next_fleet(admin, lambda m: (r := row(m, "d1")) is not None and r[3] == "offered")
    assert row(offered, "d1")[4] == order
    versions = [o for m in admin.seen if m.get("type") == "fleet" for o in m["orders"] if o["order_id"] == order]
    assert versions, "the order is on the map once requested"
    live = versions[-1]
    assert (live["status"], live["offered_to"], live["passenger_id"]) == ("searching", "d1", "p1")
    assert live["pickup"] == PICKUP and live["dropoff"] == DROPOFF

    await d.send({"type": "order_accept", "order_id": order, "id": "a"})
    on_trip = await next_fleet(admin, lambda m: (r := row(m, "d1")) is not None and r[3] == "on_trip")
    assert row(on_trip, "d1")[4] == order
    for action in ("order_arrived", "trip_start", "trip_complete"):
        await d.send({"type": action, "order_id": order, "id": action})
        await d.expect("ack", id=action)
    done = await next_fleet(admin, lambda m: any(o["order_id"] == order and o["status"] == "completed"
                                                 for o in m["orders"]))
    assert row(done, "d1")[3:] == ["available", None]

    await admin.send({"type": "subscribe", "topics": ["fleet"], "id": "again"})  # a re-subscribe resyncs
    again = await admin.expect("fleet", full=True)
    assert row(again, "d1")[3] == "available" and all(o["order_id"] != order for o in again["orders"])

    await d.close()
    gone = await next_fleet(admin, lambda m: "d1" in m["gone"])
    assert row(gone, "d1") is None
    await p.close()
    await admin.close()


async def test_the_map_shows_a_driver_as_the_engine_has_it_online_or_not(stack: Stack) -> None:
    """A driver app open off shift (no `online` yet) is never offered a ride: the map and
    `drivers_by_state` call it offline, not available. Back within the grace after `online`, it is
    available again at once, as the engine has it, without saying `online` again."""
    d = await AppClient.open(f"{stack.url}/ws/driver/d1")
    await d.expect("welcome")
    await d.send({"type": "driver_location", "lat": 38.5610, "lon": 68.7800, "id": "loc"})
    await d.expect("ack", id="loc")
    admin = await AppClient.open(f"{stack.url}/ws/admin")
    await admin.expect("welcome")
    await admin.send({"type": "subscribe", "topics": ["fleet", "system_stats"], "id": "s"})
    await admin.expect("ack", id="s")
    snap = await admin.expect("fleet", full=True)
    assert row(snap, "d1") == ["d1", 38.561, 68.78, "offline", None]
    stats = await admin.expect("system_stats")
    assert (stats["drivers_by_state"]["offline"], stats["drivers_by_state"]["available"]) == (1, 0)

    await d.send({"type": "driver_status", "status": "online", "id": "on"})
    await d.expect("ack", id="on")
    await next_fleet(admin, lambda m: (r := row(m, "d1")) is not None and r[3] == "available")
    await d.close()
    await next_fleet(admin, lambda m: "d1" in m["gone"])
    d = await AppClient.open(f"{stack.url}/ws/driver/d1")  # back within the grace (10 s)
    await d.expect("welcome")
    await d.send({"type": "driver_location", "lat": 38.5620, "lon": 68.7800, "id": "loc"})
    await d.expect("ack", id="loc")
    back = await next_fleet(admin, lambda m: row(m, "d1") is not None)
    assert row(back, "d1") == ["d1", 38.562, 68.78, "available", None]
    await d.close()
    await admin.close()


# ---- the page and its token check -------------------------------------------------------------


def test_admin_serves_the_dashboard_page_and_its_files(stack: Stack) -> None:
    status, body = stack.http_get("/admin")
    assert status == 200 and b"<canvas id=\"map\"" in body and b"/admin/dashboard.js" in body
    for path, marker in (("/admin/dashboard.js", b"/ws/admin"), ("/admin/dashboard.css", b"#map")):
        status, body = stack.http_get(path)
        assert status == 200 and marker in body, path
    assert stack.http_get("/admin/nope.js")[0] == 404
    assert stack.http_get("/admin/../sidecar/server.py")[0] == 404


def test_whoami_tells_a_good_token_from_a_missing_bad_expired_or_foreign_one(stack: Stack) -> None:
    status, body = stack.http_get(f"/admin/whoami?token={mint('admin', 'ops')}")
    assert status == 200 and json.loads(body)["sub"] == "ops"
    cases = {
        "": (401, "no token"),
        "?token=garbage": (401, "invalid token"),
        f"?token={mint('admin', 'ops', ttl_s=-60)}": (401, "token expired"),
        f"?token={mint('driver', 'd1')}": (403, "driver token"),
    }
    for query, (want, says) in cases.items():
        status, body = stack.http_get(f"/admin/whoami{query}")
        assert status == want and says in json.loads(body)["error"], (query, status, body)
