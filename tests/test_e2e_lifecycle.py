"""The order lifecycle and every cancellation path, end to end through the real sidecar and engine."""

from __future__ import annotations

import os

import pytest
from conftest import Stack, start_stack
from rides import FAR, NEAR, accept, accepted_ride, online_driver, passenger, request_ride
from wsclient import AppClient


async def test_passenger_cancel_while_searching_ends_the_order(stack: Stack) -> None:
    p = await passenger(stack)
    order_id = await request_ride(p)  # nobody is online: the order stays searching
    await p.send({"type": "order_cancel", "order_id": order_id, "id": "c"})
    await p.expect("ack", id="c")
    update = await p.expect("order_update", order_id=order_id)
    assert (update["status"], update["reason"]) == ("canceled", "passenger_canceled")


async def test_passenger_cancel_while_offered_withdraws_the_offer(stack: Stack) -> None:
    d1 = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack)
    order_id = await request_ride(p)
    await d1.expect("new_order", order_id=order_id)
    await p.send({"type": "order_cancel", "order_id": order_id, "id": "c"})
    await p.expect("ack", id="c")
    assert (await p.expect("order_update", order_id=order_id))["status"] == "canceled"
    cancel = await d1.expect("cancel_order", order_id=order_id)
    assert cancel["reason"] == "passenger_canceled"
    # The offer is gone: accepting it now is a conflict.
    await d1.send({"type": "order_accept", "order_id": order_id, "id": "late"})
    assert (await d1.expect("error", id="late"))["code"] == "conflict"


async def test_passenger_cancel_after_accept_tells_the_driver(stack: Stack) -> None:
    d1, p, order_id, _ = await accepted_ride(stack)
    await p.send({"type": "order_cancel", "order_id": order_id, "reason": "changed my mind", "id": "c"})
    await p.expect("ack", id="c")
    assert (await p.expect("order_update", order_id=order_id))["status"] == "canceled"
    cancel = await d1.expect("cancel_order", order_id=order_id)
    assert cancel["reason"] == "passenger_canceled"


async def test_driver_cancel_after_accept_puts_the_order_back_into_search_for_another_driver(stack: Stack) -> None:
    d1 = await online_driver(stack, "d1", NEAR)
    d2 = await online_driver(stack, "d2", FAR)
    p = await passenger(stack)
    order_id = await request_ride(p)
    await d1.expect("new_order", order_id=order_id)
    await accept(d1, order_id, p)
    await d1.send({"type": "order_cancel", "order_id": order_id, "id": "c"})
    await d1.expect("ack", id="c")
    again = await p.expect("order_update", order_id=order_id)
    assert (again["status"], again["reason"]) == ("searching", "driver_canceled")
    offer = await d2.expect("new_order", order_id=order_id)
    assert 800 < offer["distance_m"] < 1500
    await accept(d2, order_id, p)
    assert p.seen[-1]["driver_id"] == "d2"


async def test_reject_sends_the_offer_to_the_next_driver(stack: Stack) -> None:
    d1 = await online_driver(stack, "d1", NEAR)
    d2 = await online_driver(stack, "d2", FAR)
    p = await passenger(stack)
    order_id = await request_ride(p)
    await d1.expect("new_order", order_id=order_id)
    await d1.send({"type": "order_reject", "order_id": order_id, "id": "rj"})
    await d1.expect("ack", id="rj")
    await d2.expect("new_order", order_id=order_id)
    # d1 is out of this order for good.
    await d1.send({"type": "order_accept", "order_id": order_id, "id": "late"})
    assert (await d1.expect("error", id="late"))["code"] == "conflict"


async def test_invalid_transitions_are_conflicts_and_change_nothing(stack: Stack) -> None:
    d1 = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack)
    order_id = await request_ride(p)
    await d1.expect("new_order", order_id=order_id)
    for step in ("order_arrived", "trip_start", "trip_complete"):  # none is legal before the accept
        await d1.send({"type": step, "order_id": order_id, "id": step})
        assert (await d1.expect("error", id=step))["code"] == "conflict"
    await accept(d1, order_id, p)  # the order was untouched: the accept still works
    await d1.send({"type": "trip_complete", "order_id": order_id, "id": "early"})
    assert (await d1.expect("error", id="early"))["code"] == "conflict"


async def test_first_position_after_accept_makes_the_order_arriving(stack: Stack) -> None:
    d1, p, order_id, _ = await accepted_ride(stack)
    await d1.send({"type": "driver_location", "lat": 38.5605, "lon": 68.7865})
    assert (await p.expect("order_update", order_id=order_id))["status"] == "arriving"
    pos = await p.expect("driver_location")
    assert pos["driver_id"] == "d1"
    estimate = await p.expect("estimate_update", order_id=order_id)
    assert 0 < estimate["distance_m"] < 200 and estimate["eta_s"] > 30
    for step, status in (("order_arrived", "arrived"), ("trip_start", "started"), ("trip_complete", "completed")):
        await d1.send({"type": step, "order_id": order_id, "id": step})
        await d1.expect("ack", id=step)
        assert (await p.expect("order_update", order_id=order_id))["status"] == status


async def test_an_operator_ends_a_started_trip_whose_driver_is_gone(stack: Stack) -> None:
    """A driver's phone dies mid-trip: nobody else may end a started trip, so an admin cancels it.
    The passenger hears `canceled` with `operator_canceled`, the admin gets its ack and sees the
    order end; the driver, back later, is told too."""
    admin = await AppClient.open(f"{stack.url}/ws/admin")
    await admin.expect("welcome")
    await admin.send({"type": "subscribe", "topics": ["active_orders", "drivers"], "id": "s"})
    await admin.expect("ack", id="s")
    d1, p, order_id, _ = await accepted_ride(stack)
    for step, status in (("order_arrived", "arrived"), ("trip_start", "started")):
        await d1.send({"type": step, "order_id": order_id, "id": step})
        await d1.expect("ack", id=step)
        assert (await p.expect("order_update", order_id=order_id))["status"] == status
    driver_seq = (await d1.expect("order_update", order_id=order_id, status="started"))["seq"]
    await d1.close()
    await admin.expect("driver_status", driver_id="d1", status="disconnected")

    # The apps still cannot: a started trip is the driver's to end, another's order is not yours,
    # and the admin's topics stay the admin's.
    await p.send({"type": "order_cancel", "order_id": order_id, "id": "pc"})
    assert (await p.expect("error", id="pc"))["code"] == "conflict"
    other = await passenger(stack, "p2")
    await other.send({"type": "order_cancel", "order_id": order_id, "id": "oc"})
    assert (await other.expect("error", id="oc"))["code"] == "forbidden"
    await other.send({"type": "subscribe", "topics": ["active_orders"], "id": "os"})
    assert (await other.expect("error", id="os"))["code"] == "forbidden"

    await admin.send({"type": "order_cancel", "order_id": order_id, "reason": "driver unreachable", "id": "k"})
    assert (await admin.expect("ack", id="k"))["order_id"] == order_id
    update = await p.expect("order_update", order_id=order_id)
    assert (update["status"], update["reason"], update["driver_id"]) == ("canceled", "operator_canceled", "d1")
    ended = await admin.expect("active_orders", order_id=order_id, status="canceled")
    assert ended["reason"] == "operator_canceled"

    # Ended: nothing left to cancel. A bad order_id is the admin's own mistake.
    await admin.send({"type": "order_cancel", "order_id": order_id, "id": "k2"})
    assert (await admin.expect("error", id="k2"))["code"] == "not_found"
    await admin.send({"type": "order_cancel", "order_id": "x", "id": "k3"})
    assert (await admin.expect("error", id="k3"))["code"] == "bad_message"

    back = await AppClient.open(f"{stack.url}/ws/driver/d1?last_seq={driver_seq}")
    await back.expect("welcome", resumed=True)
    update = await back.expect("order_update", order_id=order_id)
    assert (update["status"], update["reason"]) == ("canceled", "operator_canceled")
    assert (await back.expect("cancel_order", order_id=order_id))["reason"] == "operator_canceled"
    for c in (admin, p, other, back):
        await c.close()


@pytest.fixture
def impatient_stack(engine_bin) -> Stack:
    s = start_stack("--search-timeout-s", "1")
    yield s
    assert s.stop() == 0
    assert [f for f in os.listdir("/dev/shm") if s.instance in f] == []


async def test_no_driver_when_nobody_accepts_before_the_search_timeout(impatient_stack: Stack) -> None:
    p = await passenger(impatient_stack)
    order_id = await request_ride(p)
    update = await p.expect("order_update", order_id=order_id, timeout=10)
    assert (update["status"], update["reason"]) == ("no_driver", "no_driver")
