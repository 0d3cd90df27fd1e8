"""One ride end to end: websockets clients -> real sidecar process -> shm rings -> real engine."""

from __future__ import annotations

from conftest import Stack
from wsclient import AppClient

DUSHANBE = {"lat": 38.5598, "lon": 68.7870}


async def online_driver(stack: Stack, driver_id: str, lat: float, lon: float) -> AppClient:
    d = await AppClient.open(f"{stack.url}/ws/driver/{driver_id}")
    welcome = await d.expect("welcome")
    assert welcome["role"] == "driver" and welcome["id"] == driver_id and welcome["resumed"] is False
    await d.send({"type": "driver_status", "status": "online", "id": "s1"})
    await d.expect("ack", id="s1")
    await d.send({"type": "driver_location", "lat": lat, "lon": lon, "heading": 90, "id": "l1"})
    await d.expect("ack", id="l1")  # the engine has the position before any ride is requested
    return d


def counter(stack: Stack, name: str) -> float:
    """One counter of the sidecar's /metrics."""
    status, body = stack.http_get("/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith((f"{name}_total ", f"{name}_total{{")):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def test_one_ride_walks_every_step_in_order(stack: Stack) -> None:
    driver = await online_driver(stack, "d1", 38.5610, 68.7800)
    passenger = await AppClient.open(f"{stack.url}/ws/passenger/p1")
    await passenger.expect("welcome", role="passenger", id="p1")

    await passenger.send({"type": "ride_request", "id": "r1", "pickup": DUSHANBE,
                          "dropoff": {"lat": 38.5750, "lon": 68.7950}})
    ack = await passenger.expect("ack", id="r1")
    order_id = ack["order_id"]
    assert isinstance(order_id, int) and order_id > 0
    searching = await passenger.expect("order_update")
    assert (searching["order_id"], searching["status"]) == (order_id, "searching")

    offer = await driver.expect("new_order", order_id=order_id)
    assert offer["passenger_id"] == "p1"
    assert offer["pickup"] == DUSHANBE
    assert 0 < offer["distance_m"] < 3000 and offer["eta_s"] > 30 and offer["expires_in_s"] > 0
    assert offer["seq"] >= 1

    await driver.send({"type": "order_accept", "order_id": order_id, "id": "a1"})
    await driver.expect("ack", id="a1")
    accepted = await passenger.expect("order_update", order_id=order_id)
    assert accepted["status"] == "accepted" and accepted["driver_id"] == "d1"

    spins = counter(stack, "dgdo_reply_spins")
    await driver.send({"type": "driver_location", "lat": 38.5605, "lon": 68.7840, "heading": 80})
    pos = await passenger.expect("driver_location")
    assert (pos["driver_id"], pos["lat"], pos["lon"]) == ("d1", 38.5605, 68.7840)
    # Its passenger is on this worker: the engine forwards the position through it at once, so the
    # link waited for that answer (a spin) instead of parking as it does for any other position.
    assert counter(stack, "dgdo_reply_spins") == spins + 1

    statuses = []
    for step in ("order_arrived", "trip_start", "trip_complete"):
        await driver.send({"type": step, "order_id": order_id, "id": step})
        await driver.expect("ack", id=step)
        update = await passenger.expect("order_update", order_id=order_id)
        statuses.append(update["status"])
    assert statuses == ["arrived", "started", "completed"]

    seqs = [m["seq"] for m in passenger.seen if m["type"] == "order_update"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    await driver.close()
    await passenger.close()


async def test_invalid_transition_is_refused_and_connection_stays(stack: Stack) -> None:
    driver = await online_driver(stack, "d2", 38.5610, 68.7800)
    await driver.send({"type": "trip_start", "order_id": 999_999, "id": "x"})
    err = await driver.expect("error", id="x")
    assert err["code"] == "not_found"
    await driver.send({"type": "ping", "id": "still-here"})
    assert (await driver.expect("pong"))["id"] == "still-here"
    await driver.close()


async def test_healthz_is_200_with_the_engine_attached(stack: Stack) -> None:
    status, body = stack.http_get("/healthz")
    assert (status, body) == (200, b"ok")
    assert stack.http_get("/nope")[0] == 404
