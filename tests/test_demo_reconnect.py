"""The demo's driver against the real stack: a socket dropped mid-trip does not strand the trip.

After a reconnect the welcome's snapshot names the trip the engine still holds for the driver
(docs/protocol.md §1); the demo driver must carry on from there, or its passenger waits forever
(a started trip cannot be canceled) and the driver, bound to the trip, is never offered another.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from conftest import JWT_SECRET, Stack
from rides import PICKUP, passenger, request_ride
from wsclient import AppClient

from dgdo_apps import client, demo
from dgdo_apps.demo import CityBox, Counters, DemoDriver


@pytest.fixture
def quick_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGDO_JWT_SECRET", JWT_SECRET)  # open_link mints its token with it
    monkeypatch.setattr(demo, "ACCEPT_PROBABILITY", 1.0)
    monkeypatch.setattr(demo, "THINK_S", (0.0, 0.0))
    monkeypatch.setattr(demo, "TRIP_REPORT_S", 0.1)
    monkeypatch.setattr(demo, "BOARDING_S", 0.05)
    monkeypatch.setattr(demo, "TO_PICKUP_S", (1.0, 1.0))
    monkeypatch.setattr(demo, "TO_DROPOFF_S", (1.0, 1.0))


@pytest.mark.parametrize("drop_at", ["accepted", "started"])
async def test_a_demo_driver_whose_socket_drops_mid_trip_finishes_the_trip(stack: Stack, quick_demo: None,
                                                                           drop_at: str) -> None:
    near_pickup = CityBox.around(PICKUP["lat"], PICKUP["lon"], 200.0)
    driver = DemoDriver("d-001", stack.url, Counters(), random.Random(1), box=near_pickup)
    task = asyncio.get_running_loop().create_task(driver.run())
    p = await passenger(stack, "p1")
    try:
        await asyncio.wait_for(driver.online.wait(), 10)
        order = await request_ride(p)
        await p.expect("order_update", order_id=order, status=drop_at)
        first = driver.link
        assert first is not None and first.transport is not None
        first.transport.disconnect()  # the socket drops (a tunnel, a lost network): the demo reconnects
        await p.expect("order_update", order_id=order, status="completed", timeout=20)
        assert driver.link is not first
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await p.close()


async def test_a_demo_driver_replaced_by_another_connection_does_not_take_it_back(stack: Stack,
                                                                                   quick_demo: None) -> None:
    """protocol.md: do not reconnect automatically on 4001, another instance of the app took over.
    A demo driver that did would replace that instance in turn, and the two would flap for good."""
    driver = DemoDriver("d-001", stack.url, Counters(), random.Random(1))
    task = asyncio.get_running_loop().create_task(driver.run())
    other = None
    try:
        await asyncio.wait_for(driver.online.wait(), 10)
        other = await AppClient.open(f"{stack.url}/ws/driver/d-001")  # the same driver, elsewhere
        await other.expect("welcome")
        await asyncio.wait_for(task, 10)  # the demo driver leaves the field to it
        await other.send({"type": "ping", "id": "still"})
        await other.expect("pong", id="still")
        assert other.ws.close_code is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if other is not None:
            await other.close()


async def test_a_demo_driver_whose_token_expires_reconnects_with_a_fresh_one(
        stack: Stack, quick_demo: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sidecar closes a connection whose token expired (4401); each link mints its own token,
    so the demo driver comes straight back, as an app that refreshed its token would."""
    # exp 3 s ago: the upgrade still takes it (5 s of clock skew allowed), and it expires 2 s later.
    monkeypatch.setattr(client, "TOKEN_TTL_S", -3)
    driver = DemoDriver("d-001", stack.url, Counters(), random.Random(1))
    task = asyncio.get_running_loop().create_task(driver.run())
    try:
        await asyncio.wait_for(driver.online.wait(), 10)
        first = driver.link
        assert first is not None
        await asyncio.wait_for(first.closed.wait(), 10)
        # (Woken with the driver: its reconnect has network round trips ahead before it is online again.)
        driver.online.clear()
        assert first.close_code == 4401
        monkeypatch.setattr(client, "TOKEN_TTL_S", 3600)
        await asyncio.wait_for(driver.online.wait(), 10)
        assert driver.link is not first and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
