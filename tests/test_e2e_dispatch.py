"""Dispatch rules end to end (DESIGN §5, issue 5): offer expiry, lost drivers, racing accepts,
batched matching and nearby snapshots, through the real sidecar process and the real engine.

Every wait is on a message with a deadline. Where a test must show that something does *not*
happen, it waits for that message for a bounded time and expects the wait to time out.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Stack, start_stack
from rides import FAR, NEAR, PICKUP, accept, accepted_ride, online_driver, passenger, request_ride
from wsclient import AppClient

KM_LAT = 1 / 111.195  # degrees of latitude per km


# ---- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def make_stack(engine_bin: Path) -> Iterator[Callable[..., Stack]]:
    """Starts stacks with extra `dgdo run` flags; each is stopped and checked for shm leftovers."""
    started: list[Stack] = []

    def make(*flags: str) -> Stack:
        s = start_stack(*flags)
        started.append(s)
        return s

    yield make
    for s in started:
        assert s.stop() == 0
        assert [f for f in os.listdir("/dev/shm") if s.instance in f] == [], "shared memory left behind"


def config_file(tmp_path: Path, **settings: float | str) -> str:
    """A `--config` file whose [engine] table has settings `dgdo run` has no flag for."""
    path = tmp_path / "dgdo.toml"
    path.write_text("# written by test_e2e_dispatch\n[engine]\n" +
                    "".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    return str(path)


_barriers = 0


async def passenger_barrier(p: AppClient) -> None:
    """Returns once every message the engine produced for `p` before now has reached it.

    An engine-answered command (unsubscribing from nothing changes nothing) is acked on the same
    ring and connection as the passenger's earlier messages, so the ack comes after all of them.
    """
    global _barriers
    _barriers += 1
    rid = f"sync{_barriers}"
    await p.send({"type": "nearby_unsubscribe", "id": rid})
    await p.expect("ack", id=rid)


def statuses(p: AppClient, order_id: int) -> list[str]:
    return [m["status"] for m in p.seen if m.get("type") == "order_update" and m.get("order_id") == order_id]


async def nothing(client: AppClient, type_: str, seconds: float, **fields: Any) -> None:
    """Asserts that no `type_` message matching `fields` reaches `client` for `seconds`."""
    try:
        m = await client.expect(type_, timeout=seconds, **fields)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected {m}")


# ---- 1. offer timeout -> next candidate --------------------------------------------------------


async def test_an_ignored_offer_expires_and_goes_to_the_next_driver(make_stack) -> None:
    stack = make_stack("--offer-timeout-s", "1")
    loop = asyncio.get_running_loop()
    d1 = await online_driver(stack, "d1", NEAR)
    d2 = await online_driver(stack, "d2", FAR)
    p = await passenger(stack)
    order_id = await request_ride(p)

    first = await d1.expect("new_order", order_id=order_id)
    offered_at = loop.time()
    assert 0 < first["expires_in_s"] <= 1.0
    # d1 says nothing.
    expired = await d1.expect("cancel_order", order_id=order_id, timeout=6)
    assert expired["reason"] == "offer_expired"
    second = await d2.expect("new_order", order_id=order_id, timeout=6)
    assert loop.time() - offered_at >= 0.9, "re-offered before the offer timeout ran out"
    assert 800 < second["distance_m"] < 1500 and 0 < second["expires_in_s"] <= 1.0

    # The expired holder is out of this order; the new one gets it.
    await d1.send({"type": "order_accept", "order_id": order_id, "id": "late"})
    assert (await d1.expect("error", id="late"))["code"] == "conflict"
    accepted = await accept(d2, order_id, p)
    assert accepted["driver_id"] == "d2"
    await passenger_barrier(p)
    assert statuses(p, order_id) == ["searching", "accepted"]


# ---- 2. connection closes while holding an offer -----------------------------------------------


async def test_a_disconnected_driver_loses_its_offer_after_the_grace(make_stack, tmp_path: Path) -> None:
    stack = make_stack("--config", config_file(tmp_path, grace_s=1, offer_timeout_s=30))
    loop = asyncio.get_running_loop()
    d1 = await online_driver(stack, "d1", NEAR)
    d2 = await online_driver(stack, "d2", FAR)
    p = await passenger(stack)
    order_id = await request_ride(p)
    offer = await d1.expect("new_order", order_id=order_id)
    await d1.close()
    closed_at = loop.time()

    await d2.expect("new_order", order_id=order_id, timeout=8)
    assert loop.time() - closed_at >= 0.9, "re-offered before the grace ran out"
    accepted = await accept(d2, order_id, p)
    assert accepted["driver_id"] == "d2"
    await passenger_barrier(p)
    # The passenger saw one search, never a no_driver, then the new driver.
    assert statuses(p, order_id) == ["searching", "accepted"]

    # d1 comes back and resumes: the withdrawal it missed is delivered, and the order is gone for it.
    back = await AppClient.open(f"{stack.url}/ws/driver/d1?last_seq={offer['seq']}")
    assert (await back.expect("welcome", id="d1"))["resumed"] is True
    withdrawn = await back.expect("cancel_order", order_id=order_id)
    assert withdrawn["reason"] == "driver_disconnected" and withdrawn["seq"] == offer["seq"] + 1
    await back.send({"type": "order_accept", "order_id": order_id, "id": "late"})
    assert (await back.expect("error", id="late"))["code"] == "conflict"


async def test_a_driver_that_reconnects_within_the_grace_keeps_its_offer(make_stack, tmp_path: Path) -> None:
    grace = 2.0
    stack = make_stack("--config", config_file(tmp_path, grace_s=grace, offer_timeout_s=30))
    d1 = await online_driver(stack, "d1", NEAR)
    d2 = await online_driver(stack, "d2", FAR)
    p = await passenger(stack)
    order_id = await request_ride(p)
    offer = await d1.expect("new_order", order_id=order_id)
    await d1.close()

    # Back at once without ?last_seq: the engine sends the offer it still holds, with the time left.
    back = await AppClient.open(f"{stack.url}/ws/driver/d1")
    assert (await back.expect("welcome", id="d1"))["resumed"] is False
    again = await back.expect("new_order", order_id=order_id)
    assert 0 < again["expires_in_s"] <= offer["expires_in_s"]  # engine time moves in 100 ms ticks

    # Past the grace: the offer was neither withdrawn from d1 nor given to d2.
    await asyncio.gather(nothing(back, "cancel_order", grace + 1.5), nothing(d2, "new_order", grace + 1.5))
    accepted = await accept(back, order_id, p)
    assert accepted["driver_id"] == "d1"
    await passenger_barrier(p)
    assert statuses(p, order_id) == ["searching", "accepted"]


# ---- 3. driver goes offline while holding an offer ---------------------------------------------


async def test_going_offline_withdraws_the_offer_and_reoffers_it(stack: Stack) -> None:
    # The default 15 s offer timeout: a re-offer well before it can only come from the offline.
    loop = asyncio.get_running_loop()
    d1 = await online_driver(stack, "d1", NEAR)
    d2 = await online_driver(stack, "d2", FAR)
    p = await passenger(stack)
    order_id = await request_ride(p)
    await d1.expect("new_order", order_id=order_id)
    t0 = loop.time()
    await d1.send({"type": "driver_status", "status": "offline", "id": "off"})
    await d1.expect("ack", id="off")
    withdrawn = await d1.expect("cancel_order", order_id=order_id, timeout=5)
    assert withdrawn["reason"] == "driver_offline"
    await d2.expect("new_order", order_id=order_id, timeout=5)
    assert loop.time() - t0 < 5
    accepted = await accept(d2, order_id, p)
    assert accepted["driver_id"] == "d2"
    await passenger_barrier(p)
    assert statuses(p, order_id) == ["searching", "accepted"]
    await d1.send({"type": "order_accept", "order_id": order_id, "id": "late"})
    assert (await d1.expect("error", id="late"))["code"] == "conflict"


# ---- 4. passenger cancels while the driver is on the way / at the pickup -----------------------


@pytest.mark.parametrize("stage", ["arriving", "arrived"])
async def test_passenger_cancel_on_the_way_frees_the_driver_for_a_new_order(stack: Stack, stage: str) -> None:
    d1, p, order_id, _ = await accepted_ride(stack)
    await d1.send({"type": "driver_location", "lat": 38.5605, "lon": 68.7865})  # the first move: arriving
    await p.expect("order_update", order_id=order_id, status="arriving")
    if stage == "arrived":
        await d1.send({"type": "order_arrived", "order_id": order_id, "id": "arr"})
        await d1.expect("ack", id="arr")
        await p.expect("order_update", order_id=order_id, status="arrived")

    await p.send({"type": "order_cancel", "order_id": order_id, "reason": "found another car", "id": "c"})
    await p.expect("ack", id="c")
    update = await p.expect("order_update", order_id=order_id, status="canceled")
    assert update["reason"] == "passenger_canceled"
    cancel = await d1.expect("cancel_order", order_id=order_id)
    assert cancel["reason"] == "passenger_canceled"
    await d1.send({"type": "trip_start", "order_id": order_id, "id": "start"})
    assert (await d1.expect("error", id="start"))["code"] == "conflict"

    # The driver is available again: the next request nearby is offered to it and can be accepted.
    p2 = await passenger(stack, "p2")
    next_id = await request_ride(p2)
    assert next_id != order_id
    await d1.expect("new_order", order_id=next_id)
    assert (await accept(d1, next_id, p2))["driver_id"] == "d1"


async def test_passenger_cannot_cancel_a_started_trip(stack: Stack) -> None:
    d1, p, order_id, _ = await accepted_ride(stack)
    for step in ("order_arrived", "trip_start"):
        await d1.send({"type": step, "order_id": order_id, "id": step})
        await d1.expect("ack", id=step)
    await p.expect("order_update", order_id=order_id, status="started")
    await p.send({"type": "order_cancel", "order_id": order_id, "id": "c"})
    assert (await p.expect("error", id="c"))["code"] == "conflict"
    await d1.send({"type": "trip_complete", "order_id": order_id, "id": "done"})
    await d1.expect("ack", id="done")
    await p.expect("order_update", order_id=order_id, status="completed")
    assert "canceled" not in statuses(p, order_id)


# ---- 5. racing accepts -------------------------------------------------------------------------


async def test_racing_accept_from_a_driver_without_the_offer_is_refused(stack: Stack) -> None:
    d1 = await online_driver(stack, "d1", NEAR)
    d2 = await online_driver(stack, "d2", FAR)
    p = await passenger(stack)
    order_id = await request_ride(p)
    await d1.expect("new_order", order_id=order_id)  # d1 holds the offer; d2 never had it

    await asyncio.gather(
        d1.send({"type": "order_accept", "order_id": order_id, "id": "a1"}),
        d2.send({"type": "order_accept", "order_id": order_id, "id": "a2"}),
    )
    await d1.expect("ack", id="a1")
    refused = await d2.expect("error", id="a2")
    # The engine treats a driver the order was never offered to as no party to it.
    assert refused["code"] == "forbidden" and refused["order_id"] == order_id
    await passenger_barrier(p)
    accepted = [m for m in p.seen if m.get("type") == "order_update" and m.get("status") == "accepted"]
    assert [(m["order_id"], m["driver_id"]) for m in accepted] == [(order_id, "d1")]
    # d2 got neither the trip nor an update about it.
    await d2.send({"type": "order_arrived", "order_id": order_id, "id": "arr"})
    assert (await d2.expect("error", id="arr"))["code"] == "forbidden"
    assert not [m for m in d2.seen if m.get("type") == "order_update"]


async def test_racing_accepts_after_a_reoffer_give_the_order_to_the_current_holder(make_stack) -> None:
    stack = make_stack("--offer-timeout-s", "1")
    d1 = await online_driver(stack, "d1", NEAR)
    d2 = await online_driver(stack, "d2", FAR)
    p = await passenger(stack)
    order_id = await request_ride(p)
    await d1.expect("new_order", order_id=order_id)
    await d2.expect("new_order", order_id=order_id, timeout=6)  # d1's offer expired

    # d1 (late, its offer expired) and d2 (the holder) accept at the same moment.
    await asyncio.gather(
        d1.send({"type": "order_accept", "order_id": order_id, "id": "a1"}),
        d2.send({"type": "order_accept", "order_id": order_id, "id": "a2"}),
    )
    assert (await d1.expect("error", id="a1"))["code"] == "conflict"
    await d2.expect("ack", id="a2")
    await passenger_barrier(p)
    accepted = [m for m in p.seen if m.get("type") == "order_update" and m.get("status") == "accepted"]
    assert [(m["order_id"], m["driver_id"]) for m in accepted] == [(order_id, "d2")]


# ---- 6. batched matching -----------------------------------------------------------------------


def _north(km: float) -> dict[str, float]:
    return {"lat": round(PICKUP["lat"] + km * KM_LAT, 6), "lon": PICKUP["lon"]}


async def test_batched_mode_assigns_a_window_of_requests_at_least_total_distance(make_stack) -> None:
    # On one north-south line (km from PICKUP): orders A 0, B 1.0, C 3.0; drivers d1 0.4, d2 -0.6, d3 3.2.
    # Greedy, A first, gives A-d1 B-d2 C-d3 (2.2 km); the min-cost assignment is A-d2 B-d1 C-d3 (1.4 km).
    stack = make_stack("--matching", "batched", "--batch-window-s", "1")
    drivers = {}
    for name, km in (("d1", 0.4), ("d2", -0.6), ("d3", 3.2)):
        at = _north(km)
        drivers[name] = await online_driver(stack, name, (at["lat"], at["lon"]))
    pa, pb, pc = [await passenger(stack, f"p{x}") for x in "abc"]

    a = await request_ride(pa, _north(0.0), "ra")  # A is in before B and C: greedy would settle it now
    b, c = await asyncio.gather(request_ride(pb, _north(1.0), "rb"), request_ride(pc, _north(3.0), "rc"))

    offers = await asyncio.gather(*(d.expect("new_order", timeout=8) for d in drivers.values()))
    got = {name: o["order_id"] for name, o in zip(drivers, offers, strict=True)}
    assert got == {"d1": b, "d2": a, "d3": c}, f"orders a={a} b={b} c={c}, offers {got}"

    for (name, d), (order_id, pax) in zip(drivers.items(), ((b, pb), (a, pa), (c, pc)), strict=True):
        assert (await accept(d, order_id, pax))["driver_id"] == name


# ---- 7. nearby drivers -------------------------------------------------------------------------


async def test_nearby_snapshots_repeat_about_every_second_and_follow_moves(stack: Stack) -> None:
    loop = asyncio.get_running_loop()
    d1 = await online_driver(stack, "d1", NEAR)
    await online_driver(stack, "d9", (38.6500, 68.7870))  # ~10 km away: outside the radius
    p = await passenger(stack)
    await p.send({"type": "nearby_subscribe", "lat": PICKUP["lat"], "lon": PICKUP["lon"], "radius_m": 2000,
                  "id": "sub"})
    await p.expect("ack", id="sub")
    first = await p.expect("nearby_drivers")
    t1 = loop.time()
    assert [(x["driver_id"], x["lat"], x["lon"]) for x in first["drivers"]] == [("d1", *NEAR)]

    moved = (38.5650, 68.7900)
    await d1.send({"type": "driver_location", "lat": moved[0], "lon": moved[1], "id": "mv"})
    await d1.expect("ack", id="mv")
    while True:  # a periodic snapshot may still show the old position; the next must show the new one
        snap = await p.expect("nearby_drivers", timeout=max(0.01, t1 + 2.5 - loop.time()))
        if [(x["driver_id"], x["lat"], x["lon"]) for x in snap["drivers"]] == [("d1", *moved)]:
            break
        assert [x["driver_id"] for x in snap["drivers"]] == ["d1"]
    assert loop.time() - t1 <= 2.5

    # Unsubscribed: the snapshots stop.
    await p.send({"type": "nearby_unsubscribe", "id": "unsub"})
    await p.expect("ack", id="unsub")
    await nothing(p, "nearby_drivers", 2.0)
