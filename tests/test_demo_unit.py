"""The demo's pure parts: geometry, counters, the passenger's status bookkeeping, the CLI."""

from __future__ import annotations

import math
import random

import pytest

from dgdo_apps import demo
from dgdo_apps.demo import DUSHANBE, CityBox, Counters, DemoPassenger


def test_city_box_is_about_ten_km_across_around_dushanbe() -> None:
    width = demo.distance_m(demo.CENTER_LAT, DUSHANBE.lon_min, demo.CENTER_LAT, DUSHANBE.lon_max)
    height = demo.distance_m(DUSHANBE.lat_min, demo.CENTER_LON, DUSHANBE.lat_max, demo.CENTER_LON)
    assert 9_900 < width < 10_100
    assert 9_900 < height < 10_100
    assert DUSHANBE.contains(38.56, 68.78)
    assert not DUSHANBE.contains(38.70, 68.78)


def test_random_points_stay_in_the_box() -> None:
    rng = random.Random(1)
    assert all(DUSHANBE.contains(*DUSHANBE.random_point(rng)) for _ in range(1000))


def test_step_moves_the_distance_along_the_heading() -> None:
    for heading in (0.0, 45.0, 90.0, 200.0, 359.0):
        lat, lon = demo.step(38.56, 68.78, heading, 500.0)
        assert demo.distance_m(38.56, 68.78, lat, lon) == pytest.approx(500.0, rel=1e-3)
        assert demo.bearing_deg(38.56, 68.78, lat, lon) == pytest.approx(heading, abs=0.1)


def test_bearing_points_the_right_way() -> None:
    assert demo.bearing_deg(38.56, 68.78, 38.57, 68.78) == pytest.approx(0.0, abs=1e-6)
    assert demo.bearing_deg(38.56, 68.78, 38.56, 68.79) == pytest.approx(90.0, abs=0.01)
    assert demo.bearing_deg(38.56, 68.78, 38.55, 68.78) == pytest.approx(180.0, abs=1e-6)
    assert 0.0 <= demo.bearing_deg(38.56, 68.78, 38.56, 68.77) < 360.0


def test_a_long_random_walk_never_leaves_the_city() -> None:
    rng = random.Random(7)
    box = CityBox.around(38.56, 68.78, 1_000.0)  # small, so the walk hits the edges often
    lat, lon, heading = 38.56, 68.78, 0.0
    for _ in range(20_000):
        lat, lon, heading = demo.wander(lat, lon, heading, 30 / 3.6, box, rng)
        assert box.contains(lat, lon)
        assert 0.0 <= heading < 360.0


def test_route_points_end_exactly_at_the_target() -> None:
    pts = demo.route_points((38.55, 68.77), (38.57, 68.79), 4)
    assert len(pts) == 4
    assert pts[-1] == (38.57, 68.79)
    assert pts[1] == pytest.approx((38.56, 68.78))
    assert demo.route_points((0.0, 0.0), (1.0, 1.0), 0) == [(1.0, 1.0)]


def test_summary_line_has_the_documented_shape() -> None:
    c = Counters(requested=5, accepted=4, completed=3, no_driver=1, errors=2)
    assert c.summary_line() == "[demo] done requested=5 accepted=4 completed=3 no_driver=1 errors=2"
    line = c.status_line(12.3)
    assert line.startswith("[demo] t=12s ")
    for part in ("requested=5", "accepted=4", "completed=3", "no_driver=1", "errors=2"):
        assert part in line
    assert "throttled" not in line


async def test_passenger_counts_each_order_once_through_its_lifecycle() -> None:
    c = Counters()
    p = DemoPassenger("p-001", "ride-x-1", "ws://unused", c, random.Random(3))
    assert demo.distance_m(*p.pickup, *p.dropoff) >= 1000.0
    for status in ("searching", "accepted", "arriving", "arrived", "started", "completed", "completed"):
        p._on_push({"type": "order_update", "order_id": 7, "status": status})
    p._on_push({"type": "driver_location", "lat": 38.5, "lon": 68.7})
    p._on_push({"type": "estimate_update", "order_id": 7, "eta_s": 30, "distance_m": 100})
    assert (c.accepted, c.completed, c.no_driver, c.canceled) == (1, 1, 0, 0)
    assert (c.positions_seen, c.estimates_seen) == (1, 1)
    assert p.ended.is_set() and p.order_id == 7


async def test_passenger_without_a_driver_ends_on_no_driver() -> None:
    c = Counters()
    p = DemoPassenger("p-002", "ride-x-2", "ws://unused", c, random.Random(4))
    p._on_push({"type": "order_update", "order_id": 8, "status": "searching"})
    assert not p.ended.is_set()
    p._on_push({"type": "order_update", "order_id": 8, "status": "no_driver"})
    assert p.ended.is_set()
    assert (c.accepted, c.no_driver) == (0, 1)


def test_withdrawal_messages() -> None:
    assert demo._withdraws({"type": "cancel_order", "order_id": 1, "reason": "offer_expired"})
    assert demo._withdraws({"type": "order_update", "order_id": 1, "status": "canceled"})
    assert not demo._withdraws({"type": "order_update", "order_id": 1, "status": "started"})


def test_cli_defaults_and_flags() -> None:
    config, level = demo.parse_config([])
    assert (config.url, config.drivers, config.rate, config.duration, config.quiet) == (
        "ws://127.0.0.1:8765", 20, 2.0, 0.0, False)
    assert config.passenger_cap == 80 and level == "WARNING"
    config, _ = demo.parse_config(["--url", "ws://h:1", "--drivers", "3", "--rate", "0.5", "--duration", "4",
                                   "--seed", "9", "--quiet", "--max-passengers", "6"])
    assert (config.url, config.drivers, config.rate, config.duration, config.seed, config.quiet) == (
        "ws://h:1", 3, 0.5, 4.0, 9, True)
    assert config.passenger_cap == 6
    with pytest.raises(SystemExit):
        demo.parse_config(["--drivers", "-1"])


def test_each_driver_starts_somewhere_in_the_city() -> None:
    fleet = demo.Fleet(demo.DemoConfig(drivers=12, seed=5))
    assert [d.id for d in fleet.drivers][:2] == ["d-001", "d-002"]
    assert all(DUSHANBE.contains(d.lat, d.lon) for d in fleet.drivers)
    assert len({(d.lat, d.lon) for d in fleet.drivers}) == 12
    assert all(not math.isnan(d.heading) for d in fleet.drivers)
