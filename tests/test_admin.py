"""/ws/admin: topics carry what the engine and the sidecar already know."""

from __future__ import annotations

from conftest import Stack
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
    for field in ("matching_latency_us", "push_latency_us", "orders_per_min", "drivers_online",
                  "drivers_available", "active_orders", "connections", "ring_depths"):
        assert field in second, field
    assert second["connections"] >= 1 and second["engine_attached"] is True
    assert set(second["push_latency_us"]) == {"p50", "p99"}
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
