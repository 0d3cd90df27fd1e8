"""What an app must know beyond each message's fields, as docs/protocol.md states it, against the real
stack: in what order answers come, what a retried `ride_request` brings back, what a reconnect does to
an offer, what `ts` a replayed message carries, and when `arriving` is skipped.

Where the server's own order decides (a local refusal goes out before the engine's answer to an
earlier command in the same read), both messages go out in one TCP write, so that the server reads
them together; no test waits on a timer.
"""

from __future__ import annotations

import json
from typing import Any

from connect import ws_url
from docschema import markdown
from rides import DROPOFF, NEAR, PICKUP, accept, online_driver, passenger, request_ride
from wsclient import AppClient


def md() -> str:
    return " ".join(markdown().split())


async def send_together(c: AppClient, *messages: dict[str, Any]) -> None:
    """Text frames for `messages`, written to the socket in one write (the server reads them together)."""
    for m in messages:
        c.ws.protocol.send_text(json.dumps(m).encode())
    c.ws.transport.write(b"".join(c.ws.protocol.data_to_send()))


async def barrier(c: AppClient, tag: str) -> None:
    """Everything the engine sent this app for its earlier commands has arrived: the engine answers in
    order, so the answer to a later command comes after them (`not_found` for an order that never was)."""
    await c.send({"type": "order_cancel", "order_id": 424242, "id": tag})
    await c.expect("error", code="not_found", id=tag)


async def test_answers_come_as_they_are_ready_and_an_ack_before_the_update_it_caused(stack) -> None:
    text = md()
    assert "Answers come in the order they are ready, not in the order of your messages" in text
    assert "the `ack` of a command comes before the `order_update`s it causes" in text
    p = await passenger(stack, "p1")
    try:
        await send_together(
            p,
            {"type": "ride_request", "id": "r1", "pickup": PICKUP, "dropoff": DROPOFF},
            {"type": "ride_request", "id": "r2", "pickup": {"lat": 91, "lon": 0}, "dropoff": DROPOFF},
        )
        first = await p.recv()
        assert (first["type"], first["id"], first["code"]) == ("error", "r2", "bad_message")  # refused at once
        ack = await p.recv()
        assert (ack["type"], ack["id"]) == ("ack", "r1")
        update = await p.recv()
        assert (update["type"], update["order_id"], update["status"]) == ("order_update", ack["order_id"], "searching")
    finally:
        await p.close()


async def test_a_driver_command_is_acked_before_its_order_update(stack) -> None:
    d = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack, "p1")
    try:
        order = await request_ride(p)
        await d.expect("new_order", order_id=order)
        for i, (command, status) in enumerate(
            (
                ("order_accept", "accepted"),
                ("order_arrived", "arrived"),
                ("trip_start", "started"),
                ("trip_complete", "completed"),
            )
        ):
            await d.send({"type": command, "order_id": order, "id": i})
            got = [await d.recv(), await d.recv()]
            assert [(m["type"], m.get("id"), m.get("status")) for m in got] == [
                ("ack", i, None),
                ("order_update", None, status),
            ], got
    finally:
        await d.close()
        await p.close()


async def test_a_retried_ride_request_brings_its_ack_alone_and_ids_are_the_passengers_own(stack) -> None:
    text = md()
    assert "the retry is answered by its `ack` alone" in text
    assert "Ids are each passenger's own" in text
    assert "The server does not limit a passenger to one live order" in text
    p = await passenger(stack, "p1")
    q = await passenger(stack, "p2")
    try:
        order = await request_ride(p, rid="r1")
        await p.send({"type": "ride_request", "id": "r1", "pickup": PICKUP, "dropoff": DROPOFF})
        assert (await p.expect("ack", id="r1"))["order_id"] == order
        await barrier(p, "b1")
        assert len([m for m in p.seen if m["type"] == "order_update"]) == 1  # the first `searching` only
        assert await request_ride(q, rid="r1") != order  # another passenger's r1: another order
        by_int = await request_ride(p, rid=1)  # type: ignore[arg-type]
        assert await request_ride(p, rid="1") not in (by_int, order)
        for live in (order, by_int):  # all three orders are live at once: each can still be canceled
            await p.send({"type": "order_cancel", "order_id": live, "id": f"c{live}"})
            await p.expect("ack", id=f"c{live}")
    finally:
        await p.close()
        await q.close()


async def test_an_offer_across_a_reconnect_within_the_grace(stack) -> None:
    text = md()
    assert "a resume from its `seq` or later brings nothing more" in text
    assert "Key your view of an order by `order_id`, not by `seq`" in text
    d = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack, "p1")
    again = None
    try:
        order = await request_ride(p)
        offer = await d.expect("new_order", order_id=order)
        await d.close()
        d = await AppClient.open(ws_url(stack, "driver", "d1", last_seq=offer["seq"]))
        welcome = await d.expect("welcome")
        assert (welcome["resumed"], welcome["seq"]) == (True, offer["seq"])
        await barrier(d, "b1")
        assert [m["type"] for m in d.seen] == ["welcome", "error"]  # the offer is not sent again
        again = await AppClient.open(ws_url(stack, "driver", "d1"))  # no last_seq: the snapshot (and 4001 for d)
        welcome = await again.expect("welcome")
        snap = await again.expect("new_order", order_id=order)
        assert welcome["resumed"] is False and snap["seq"] == welcome["seq"] + 1 > offer["seq"]
        assert snap["expires_in_s"] <= offer["expires_in_s"]
        await again.send({"type": "order_accept", "order_id": order, "id": "a"})
        await again.expect("ack", id="a")
    finally:
        for c in (d, p, again):
            if c is not None:
                await c.close()


async def test_a_message_missed_while_away_is_replayed_with_the_time_of_its_change(stack) -> None:
    assert "A replayed or snapshot message carries the `ts` of the change it reports" in md()
    d = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack, "p1")
    back = None
    try:
        order = await request_ride(p)
        await d.expect("new_order", order_id=order)
        n = (await accept(d, order, p))["seq"]
        await p.close()  # away when the driver arrives: the passenger's copy is never sent live
        await d.send({"type": "order_arrived", "order_id": order, "id": "arr"})
        await d.expect("ack", id="arr")
        live = await d.expect("order_update", order_id=order, status="arrived")  # the driver's, published with it
        back = await AppClient.open(ws_url(stack, "passenger", "p1", last_seq=n))
        assert (await back.expect("welcome"))["resumed"] is True
        replayed = await back.expect("order_update", order_id=order, status="arrived")
        assert replayed["seq"] == n + 1
        assert replayed["ts"] == live["ts"]  # when the driver arrived, not when the passenger came back
    finally:
        for c in (d, p, back):
            if c is not None:
                await c.close()


async def test_arriving_comes_with_the_drivers_first_position_after_the_accept_or_not_at_all(stack) -> None:
    assert "a driver that reports `order_arrived` before any position after the accept skips it" in md()
    d = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack, "p1")
    try:
        order = await request_ride(p)
        await d.expect("new_order", order_id=order)
        await accept(d, order, p)
        await d.send({"type": "order_arrived", "order_id": order, "id": "arr"})
        await d.expect("ack", id="arr")
        await p.expect("order_update", order_id=order, status="arrived")
        assert [m["status"] for m in p.seen if m["type"] == "order_update"] == ["searching", "accepted", "arrived"]
    finally:
        await d.close()
        await p.close()


async def test_only_a_ride_request_is_deduplicated_by_its_id_a_repeated_command_gets_conflict(stack) -> None:
    text = md()
    assert "Only `ride_request` is deduplicated by its `id`" in text
    d = await online_driver(stack, "d1", NEAR)
    p = await passenger(stack, "p1")
    try:
        order = await request_ride(p)
        await d.expect("new_order", order_id=order)
        await accept(d, order, p, rid="a1")
        await d.send({"type": "order_accept", "order_id": order, "id": "a1"})  # the same command, the same id
        again = await d.expect("error", id="a1")
        assert (again["code"], again["order_id"]) == ("conflict", order)
        await p.send({"type": "order_cancel", "order_id": order, "id": "c1"})
        await p.expect("ack", id="c1")
        await p.send({"type": "order_cancel", "order_id": order, "id": "c1"})
        assert (await p.expect("error", id="c1"))["code"] == "conflict"
    finally:
        await d.close()
        await p.close()
