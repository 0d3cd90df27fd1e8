"""Server -> client messages of the push path, as types: what the engine's records become.

`order_update`, `new_order`, `cancel_order`, `driver_location` and `estimate_update` are
`msgspec.Struct`s tagged on `"type"`, built field by field from an engine record
(session/core.py) and encoded by msgspec without a map in between: ~0.1-0.2 µs less per
message than a dict, whose keys msgspec hashes and copies on every encode. The rarer server
messages (welcome, ack, error, pong, nearby_drivers, the admin topics) stay plain maps. Their
shapes, both kinds, are in `schema.py` and docs/protocol.md; tests/test_pushes.py checks that
each Struct writes the same bytes as the map the sidecar used to build.

Field order is wire order: the tag first, then the fields as declared. A field left `UNSET`
is not written at all, as a map would leave the key out: `seq` when the message is not
numbered, `heading` when the engine has none.
"""

from __future__ import annotations

from msgspec import UNSET, Struct, UnsetType


class Point(Struct, gc=False):
    lat: float
    lon: float


class Push(Struct, tag_field="type", gc=False):
    """A server message of the push path. Which are latest-wins (only their newest version matters:
    `driver_location`, `estimate_update`) is said by session/limits.py `LATEST_WINS`, by wire type."""


class OrderUpdate(Push, tag="order_update"):
    order_id: int
    status: str
    ts: int
    driver_id: str | UnsetType = UNSET
    passenger_id: str | UnsetType = UNSET
    reason: str | UnsetType = UNSET
    seq: int | UnsetType = UNSET


class NewOrder(Push, tag="new_order"):
    order_id: int
    passenger_id: str
    pickup: Point
    dropoff: Point
    distance_m: float
    eta_s: float
    expires_in_s: float
    ts: int
    seq: int | UnsetType = UNSET


class CancelOrder(Push, tag="cancel_order"):
    order_id: int
    reason: str
    ts: int
    seq: int | UnsetType = UNSET


class DriverPosition(Push, tag="driver_location"):
    """A driver's position as pushed to the passenger of the order (`driver_location` on the wire)."""

    order_id: int
    driver_id: str
    lat: float
    lon: float
    ts: int
    heading: float | UnsetType = UNSET
    speed_kmh: float | UnsetType = UNSET


class EstimateUpdate(Push, tag="estimate_update"):
    order_id: int
    eta_s: float
    distance_m: float
    ts: int


# ---- rounding ---------------------------------------------------------------------------------
#
# round(x, d) with d digits goes through a decimal string and back in CPython (dtoa, snprintf,
# strtod: ~1,300 instructions); a position rounds two numbers, an offer three. round_to gives
# the same double for ~1/4 of that. round(x, d) is m / 10**d, with m the integer nearest to the exact
# value of x * 10**d (ties to even), and `m / 10.0**d` is that same double (IEEE division rounds
# correctly; m and 10**d are exact). y = x * 10**d is within half an ulp of the exact product
# (< 2**-23 for y < 1e9), so when y's fraction is clear of 0.5 by far more than that, its floor
# says which integer is nearest. A near-tie, a value out of range or NaN go to `round` itself;
# zero keeps its sign, as in `round`. tests/test_pushes.py checks it against `round`.


_SCALE = (1.0, 10.0, 100.0, 1000.0)


def round_to(x: float, digits: int) -> float:
    """round(x, digits) for 0 <= digits <= 3, the same double."""
    scale = _SCALE[digits]
    y = x * scale
    if 0.0 < y < 1e9:
        n = y // 1.0
        f = y - n  # exact (Sterbenz)
        if f < 0.499999:
            return n / scale
        if f > 0.500001:
            return (n + 1.0) / scale
    elif y == 0.0:
        return x
    return round(x, digits)
