"""The dashboard's fleet feed, sans-I/O: inputs as plain calls, `fleet` messages out, time passed in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from docschema import ROOT

from sidecar.session.admin_feed import AdminFeed, RateWindow
from sidecar.session.core import SessionCore
from sidecar.wire.codec import JSON
from sidecar.wire.messages import Role

PICKUP = (38.5598, 68.787)
DROPOFF = (38.575, 68.795)
TS = 1_764_090_000_000


@dataclass
class Fix:
    lat: float
    lon: float


def rows(message: dict[str, Any] | None) -> dict[str, tuple]:
    assert message is not None
    return {r[0]: tuple(r) for r in message["drivers"]}


def orders(message: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    assert message is not None
    return {o["order_id"]: o for o in message["orders"]}


def state(feed: AdminFeed, driver_id: str) -> str:
    return rows(feed.snapshot(TS))[driver_id][3]


def test_many_fixes_between_ticks_become_one_row_with_the_latest() -> None:
    feed = AdminFeed()
    for i in range(10):
        feed.position("d1", Fix(38.56 + i * 0.001, 68.78))
    delta = feed.tick(0.0, TS)
    assert delta is not None and delta["type"] == "fleet" and delta["full"] is False
    assert rows(delta) == {"d1": ("d1", 38.569, 68.78, "available", None)}
    assert feed.tick(0.5, TS) is None  # nothing new: no message at all


def test_a_tick_is_bounded_by_the_fleet_not_by_the_fix_rate() -> None:
    feed = AdminFeed()
    for _ in range(5):
        for i in range(10_000):
            feed.position(f"d{i}", Fix(38.56, 68.78 + i * 1e-5))
    delta = feed.tick(0.0, TS)
    assert len(delta["drivers"]) == 10_000


def test_coordinates_are_rounded_to_about_a_metre() -> None:
    feed = AdminFeed()
    feed.position("d1", Fix(38.561234567, 68.781234567))
    assert rows(feed.tick(0.0, TS))["d1"][1:3] == (38.56123, 68.78123)


def test_a_ride_moves_the_driver_through_offered_on_trip_and_back_to_available() -> None:
    feed = AdminFeed()
    feed.position("d1", Fix(38.56, 68.78))
    feed.tick(0.0, TS)
    feed.ride_requested(7, "p1", PICKUP, DROPOFF)
    feed.request_answered(7, 1001, 0.1, TS)
    feed.order_update(1001, "searching", "p1", "", 0.1, TS)
    searching = orders(feed.tick(0.5, TS))[1001]
    assert searching["status"] == "searching" and searching["passenger_id"] == "p1"
    assert searching["pickup"] == {"lat": PICKUP[0], "lon": PICKUP[1]}
    assert searching["dropoff"] == {"lat": DROPOFF[0], "lon": DROPOFF[1]}

    feed.offer("d1", 1001, PICKUP, DROPOFF, 95.0, 15.0, 0.6, TS)
    delta = feed.tick(1.0, TS)
    assert rows(delta)["d1"][3:] == ("offered", 1001)  # a state change alone brings the driver's row
    assert orders(delta)[1001]["offered_to"] == "d1"

    feed.order_update(1001, "accepted", "p1", "d1", 1.1, TS)  # the passenger's copy of the change
    feed.order_update(1001, "accepted", "p1", "d1", 1.1, TS)  # and the driver's
    delta = feed.tick(1.5, TS)
    assert rows(delta)["d1"][3:] == ("on_trip", 1001)
    accepted = orders(delta)[1001]
    assert accepted["driver_id"] == "d1" and "offered_to" not in accepted

    feed.estimate(1001, 42.0)
    assert orders(feed.tick(2.0, TS))[1001]["eta_s"] == 42.0
    for status in ("arriving", "arrived", "started"):
        feed.order_update(1001, status, "p1", "d1", 2.1, TS)
        assert state(feed, "d1") == "on_trip"
    feed.order_update(1001, "completed", "p1", "d1", 2.2, TS)
    delta = feed.tick(2.5, TS)
    assert rows(delta)["d1"][3:] == ("available", None)
    assert orders(delta)[1001]["status"] == "completed"  # its last word goes out once...
    assert feed.snapshot(TS)["orders"] == []  # ...and then it is no longer live
    assert feed.counts == {"requested": 1, "matched": 1, "completed": 1, "no_driver": 0}


@pytest.mark.parametrize("how", ["cancel_order", "reject", "expiry", "offered_elsewhere", "no_driver"])
def test_an_offer_that_ends_frees_the_driver(how: str) -> None:
    feed = AdminFeed()
    feed.position("d1", Fix(38.56, 68.78))
    feed.order_update(1001, "searching", "p1", "", 0.0, TS)
    feed.offer("d1", 1001, PICKUP, DROPOFF, 60.0, 15.0, 0.0, TS)
    feed.tick(0.5, TS)
    assert state(feed, "d1") == "offered"
    now = 1.0
    if how in ("cancel_order", "reject"):
        feed.offer_ended("d1", 1001)
    elif how == "expiry":
        now = 15.5
    elif how == "offered_elsewhere":
        feed.offer("d2", 1001, PICKUP, DROPOFF, 60.0, 15.0, 1.0, TS)
    else:
        feed.order_update(1001, "no_driver", "p1", "", 1.0, TS)
    delta = feed.tick(now, TS)
    assert rows(delta)["d1"][3:] == ("available", None)


def test_a_driver_who_gives_up_a_trip_is_free_and_the_order_searches_again() -> None:
    feed = AdminFeed()
    feed.position("d1", Fix(38.56, 68.78))
    feed.order_update(1001, "accepted", "p1", "d1", 0.0, TS)
    feed.tick(0.0, TS)
    feed.order_update(1001, "searching", "p1", "", 0.1, TS)  # the engine's update after a driver cancel
    delta = feed.tick(0.5, TS)
    assert rows(delta)["d1"][3] == "available"
    assert "driver_id" not in orders(delta)[1001]


def test_offline_status_and_disconnect() -> None:
    feed = AdminFeed()
    feed.position("d1", Fix(38.56, 68.78))
    feed.position("d2", Fix(38.57, 68.79))
    feed.tick(0.0, TS)
    feed.driver_status("d1", online=False)
    assert rows(feed.tick(0.5, TS))["d1"][3] == "offline"
    feed.driver_gone("d2")
    delta = feed.tick(1.0, TS)
    assert delta["gone"] == ["d2"] and delta["drivers"] == []
    assert set(rows(feed.snapshot(TS))) == {"d1"}
    feed.position("d2", Fix(38.57, 68.79))  # back: on the map again, not gone
    delta = feed.tick(1.5, TS)
    assert set(rows(delta)) == {"d2"} and delta["gone"] == []


def test_snapshot_is_everything_with_a_position_and_every_live_order() -> None:
    feed = AdminFeed()
    feed.position("d1", Fix(38.56, 68.78))
    feed.driver_status("d3", online=True)  # no position yet: not on the map
    feed.order_update(5, "searching", "p5", "", 0.0, TS)
    feed.order_update(6, "started", "p6", "d1", 0.0, TS)
    feed.tick(0.0, TS)
    snap = feed.snapshot(TS + 1)
    assert snap["full"] is True and snap["gone"] == [] and snap["ts"] == TS + 1
    assert rows(snap) == {"d1": ("d1", 38.56, 68.78, "on_trip", 6)}
    assert set(orders(snap)) == {5, 6}
    assert feed.driver_counts() == {"available": 1, "offered": 0, "on_trip": 1, "offline": 0}
    assert feed.live_orders() == {"searching": 1, "accepted": 0, "arriving": 0, "arrived": 0, "started": 1}


def test_without_listeners_the_model_stays_current_and_no_message_is_built() -> None:
    feed = AdminFeed()
    feed.position("d1", Fix(38.56, 68.78))
    feed.order_update(5, "completed", "p5", "", 0.0, TS)
    assert feed.tick(0.0, TS, want=False) is None
    assert rows(feed.snapshot(TS)) == {"d1": ("d1", 38.56, 68.78, "available", None)}
    assert feed.snapshot(TS)["orders"] == []


def test_each_outcome_counts_once_per_order() -> None:
    feed = AdminFeed()
    for status in ("searching", "searching", "no_driver", "no_driver"):
        feed.order_update(9, status, "p9", "", 0.0, TS)
    assert feed.counts == {"requested": 1, "matched": 0, "completed": 0, "no_driver": 1}


def test_an_answer_for_a_refused_or_unknown_command_leaves_no_order() -> None:
    feed = AdminFeed()
    feed.ride_requested(1, "p1", PICKUP, DROPOFF)
    feed.request_answered(1, 0, 0.0, TS)  # refused
    feed.request_answered(2, 77, 0.0, TS)  # an order command's answer, not a ride request
    assert feed.tick(0.0, TS) is None and feed.snapshot(TS)["orders"] == []


def test_orders_with_no_news_for_long_are_dropped() -> None:
    feed = AdminFeed(full_every_s=10.0, stale_order_s=60.0)
    feed.order_update(5, "searching", "p5", "", 0.0, TS)
    feed.tick(0.0, TS)
    feed.tick(30.0, TS)
    assert len(feed.snapshot(TS)["orders"]) == 1
    feed.tick(70.0, TS)
    assert feed.snapshot(TS)["orders"] == []


def test_a_full_snapshot_is_due_periodically_not_at_once() -> None:
    feed = AdminFeed(full_every_s=30.0)
    assert feed.full_due(100.0) is False  # the first subscriber got one on subscribe
    assert feed.full_due(129.0) is False
    assert feed.full_due(130.0) is True
    assert feed.full_due(131.0) is False


def test_rates_per_minute_over_a_sliding_window() -> None:
    w = RateWindow(window_s=60.0)
    assert w.per_min(0.0, (0, 0)) == (0.0, 0.0)
    assert w.per_min(0.5, (5, 1)) == (0.0, 0.0)  # under a second: no rate yet
    assert w.per_min(30.0, (10, 2)) == (20.0, 4.0)
    w.per_min(60.0, (30, 2))
    assert w.per_min(90.0, (30, 2)) == (20.0, 0.0)  # (30 - 10) over the minute since the 30 s sample


# ---- the core's feed tick: who gets a delta, who a snapshot ------------------------------


class Recorder:
    """What the core queued for one session (the flush decision is what is under test, not sockets)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []


def admin(core: SessionCore, name: str, topics: frozenset[str] = frozenset({"fleet"})) -> tuple[Any, Recorder]:
    session = core.new_session(Role.ADMIN, name, JSON)
    core.open(session)
    session.topics = topics
    session.io = Recorder()
    return session, session.io


def flush_feed(core: SessionCore, now: float, ts_ms: int) -> None:
    core.feed_tick(now, ts_ms)
    for session, data in core.data_to_send():
        session.io.sent.append(orjson.loads(data))


def test_a_paused_admin_is_skipped_then_gets_one_full_snapshot_instead_of_what_it_missed() -> None:
    core = SessionCore(1)
    _fast, fast_rec = admin(core, "fast")
    slow, slow_rec = admin(core, "slow")
    _other, other_rec = admin(core, "other", frozenset({"log"}))
    feed = core.feed
    feed.position("d1", Fix(38.56, 68.78))
    flush_feed(core, 0.0, TS)
    assert [m["full"] for m in fast_rec.sent] == [False] and [m["full"] for m in slow_rec.sent] == [False]
    assert other_rec.sent == []  # not subscribed to fleet

    slow.paused = True  # its write buffer is full: nothing is queued for it
    for i in range(3):
        feed.position("d1", Fix(38.56 + i * 0.001, 68.78))
        feed.position(f"n{i}", Fix(38.57, 68.79))
        flush_feed(core, 0.5 + i * 0.5, TS)
    assert len(fast_rec.sent) == 4 and len(slow_rec.sent) == 1
    assert slow.outbox is None or len(slow.outbox) == 0

    slow.paused = False
    flush_feed(core, 2.0, TS)  # nothing changed since: the slow one still gets its snapshot
    last = slow_rec.sent[-1]
    assert last["full"] is True and set(rows(last)) == {"d1", "n0", "n1", "n2"}
    assert len(fast_rec.sent) == 4  # no delta: nothing changed
    feed.position("d1", Fix(38.6, 68.78))
    flush_feed(core, 2.5, TS)
    assert slow_rec.sent[-1]["full"] is False and fast_rec.sent[-1]["full"] is False


def test_every_subscriber_gets_a_periodic_full_snapshot() -> None:
    core = SessionCore(1)
    _a, rec = admin(core, "a")
    core.feed.position("d1", Fix(38.56, 68.78))
    flush_feed(core, 0.0, TS)
    flush_feed(core, 29.0, TS)
    flush_feed(core, 31.0, TS)
    assert [m["full"] for m in rec.sent] == [False, True]


def test_another_workers_full_relay_repeats_no_status_change_to_the_admins() -> None:
    """Each worker passes its drivers on again every `full_every_s` (heals a lost relay): a status
    repeated there is no news, or every admin of the `drivers` topic on the other workers would get
    every offline driver's `driver_status` again each period."""
    here, there = AdminFeed(full_every_s=5.0), AdminFeed(full_every_s=5.0)
    here.position("d1", Fix(38.56, 68.78))
    here.driver_status("d1", online=False)
    here.position("d2", Fix(38.57, 68.79))
    here.driver_status("d2", online=True)
    here.tick(0.0, TS)
    assert sorted(there.remote(1, here.relay(), 0.0)) == [("d1", "offline"), ("d2", "online")]
    here.tick(6.0, TS)  # a full relay: every driver again, status included
    again = here.relay()
    assert {(d, kind) for d, _, _, kind in again} >= {("d1", 3), ("d1", 1), ("d2", 1)}
    assert there.remote(1, again, 6.0) == []
    here.driver_status("d1", online=True)
    here.tick(6.5, TS)
    assert there.remote(1, here.relay(), 6.5) == [("d1", "online")]
    there.tick(7.0, TS)
    assert {r[0]: r[3] for r in there.snapshot(TS)["drivers"]} == {"d1": "available", "d2": "available"}


def test_a_snapshot_before_the_next_tick_carries_an_ended_order_and_the_delta_brings_it_again() -> None:
    """protocol.md `fleet`: an app drops an ended order whichever message brings it."""
    md = " ".join((ROOT / "docs" / "protocol.md").read_text().split())
    assert "a snapshot taken between its end and the next delta carries it too, with that status" in md
    feed = AdminFeed()
    feed.ride_requested(7, "p1", PICKUP, DROPOFF)
    feed.request_answered(7, 1001, 0.1, TS)
    feed.order_update(1001, "searching", "p1", "", 0.1, TS)
    feed.tick(0.5, TS)
    feed.order_update(1001, "canceled", "p1", "", 0.6, TS)
    assert orders(feed.snapshot(TS))[1001]["status"] == "canceled"  # a subscribe right now
    assert orders(feed.tick(1.0, TS))[1001]["status"] == "canceled"  # the delta: once more
    assert feed.snapshot(TS)["orders"] == []
