"""Steps of a ride that the end-to-end tests share: a driver online at a point, a passenger, a request, an accept."""

from __future__ import annotations

from typing import Any

from conftest import Stack
from wsclient import AppClient

PICKUP = {"lat": 38.5598, "lon": 68.7870}
DROPOFF = {"lat": 38.5750, "lon": 68.7950}
NEAR = (38.5610, 68.7860)  # ~150 m from the pickup
FAR = (38.5700, 68.7870)  # ~1.1 km from the pickup


async def online_driver(stack: Stack, driver_id: str, where: tuple[float, float]) -> AppClient:
    d = await AppClient.open(f"{stack.url}/ws/driver/{driver_id}")
    await d.expect("welcome", role="driver", id=driver_id)
    await d.send({"type": "driver_location", "lat": where[0], "lon": where[1], "id": "l0"})
    await d.expect("ack", id="l0")
    await d.send({"type": "driver_status", "status": "online", "id": "s0"})
    await d.expect("ack", id="s0")
    return d


async def passenger(stack: Stack, passenger_id: str = "p1") -> AppClient:
    p = await AppClient.open(f"{stack.url}/ws/passenger/{passenger_id}")
    await p.expect("welcome", role="passenger", id=passenger_id)
    return p


async def request_ride(p: AppClient, pickup: dict[str, float] = PICKUP, rid: str = "r1") -> int:
    await p.send({"type": "ride_request", "id": rid, "pickup": pickup, "dropoff": DROPOFF})
    order_id = (await p.expect("ack", id=rid))["order_id"]
    await p.expect("order_update", order_id=order_id, status="searching")
    return order_id


async def accept(driver: AppClient, order_id: int, pax: AppClient, rid: str = "acc") -> dict[str, Any]:
    """The driver accepts; returns the passenger's `accepted` update."""
    await driver.send({"type": "order_accept", "order_id": order_id, "id": rid})
    await driver.expect("ack", id=rid)
    return await pax.expect("order_update", order_id=order_id, status="accepted")


async def accepted_ride(stack: Stack) -> tuple[AppClient, AppClient, int, dict[str, Any]]:
    """Driver d1 online near the pickup, passenger p1 requests a ride, d1 is offered it and accepts.

    Returns (the driver, the passenger, the order id, the passenger's `accepted` update)."""
    d = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack, "p1")
    order = await request_ride(p)
    await d.expect("new_order", order_id=order)
    return d, p, order, await accept(d, order, p)
