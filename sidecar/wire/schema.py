"""The public protocol's message shapes as data: wire fields per message type, both directions.

`messages.SCHEMAS` says which client messages exist and who may send them, and
their msgspec Structs validate them; this module restates their wire fields
as a table beside the shape of every server -> client message (typed in
pushes.py when made from an engine record, else maps built in session/core.py),
so that both directions
read alike. docs/protocol.md and docs/asyncapi.yaml are checked against
these tables by tests/test_docs.py, and the tables are checked against the
Structs, the decoder and a live session, so none can drift.

The envelope fields are not listed per message: every message has `type`;
a client message may carry `id`; every server message carries `ts`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.wire.messages import ADMIN, DRIVER, PASSENGER, Role

ALL_ROLES = frozenset({DRIVER, PASSENGER, ADMIN})


@dataclass(frozen=True, slots=True)
class Shape:
    """One message type on the wire.

    Attributes:
        type: the `type` value.
        roles: who may send it (client messages) or who receives it (server messages).
        required: fields always present (server) / that must be present (client).
        optional: fields that may be present.
        reliable: numbered with `seq` per recipient and replayed on resume.
    """

    type: str
    roles: frozenset[Role]
    required: frozenset[str]
    optional: frozenset[str] = frozenset()
    reliable: bool = False

    @property
    def fields(self) -> frozenset[str]:
        return self.required | self.optional


def _s(type_: str, roles: frozenset[Role] | set[Role], required: str = "", optional: str = "",
       reliable: bool = False) -> Shape:
    return Shape(type_, frozenset(roles), frozenset(required.split()), frozenset(optional.split()), reliable)


_ORDER_ACTIONS = ("order_accept", "order_reject", "order_arrived", "trip_start", "trip_complete")

CLIENT_MESSAGES: dict[str, Shape] = {
    s.type: s
    for s in (
        _s("driver_location", {DRIVER}, "lat lon", "heading speed_kmh accuracy_m driver_id"),
        _s("driver_status", {DRIVER}, "status"),
        *(_s(t, {DRIVER}, "order_id") for t in _ORDER_ACTIONS),
        _s("order_cancel", {DRIVER, PASSENGER, ADMIN}, "order_id", "reason"),
        _s("ride_request", {PASSENGER}, "pickup dropoff"),
        _s("nearby_subscribe", {PASSENGER}, "lat lon", "radius_m"),
        _s("nearby_unsubscribe", {PASSENGER}, "", "lat lon radius_m"),
        _s("subscribe", {ADMIN}, "topics"),
        _s("ping", ALL_ROLES),
    )
}
"""Client -> server messages by type (envelope `type`/`id` not listed)."""

SERVER_MESSAGES: dict[str, Shape] = {
    s.type: s
    for s in (
        _s("welcome", ALL_ROLES, "role id resumed seq ts"),
        _s("ack", ALL_ROLES, "id ts", "order_id topics"),
        _s("error", ALL_ROLES, "code message ts", "id order_id"),
        _s("pong", ALL_ROLES, "ts", "id"),
        _s("order_update", {DRIVER, PASSENGER}, "order_id status seq ts", "driver_id passenger_id reason",
           reliable=True),
        _s("new_order", {DRIVER}, "order_id passenger_id pickup dropoff distance_m eta_s expires_in_s seq ts",
           reliable=True),
        _s("cancel_order", {DRIVER}, "order_id reason seq ts", reliable=True),
        _s("driver_location", {PASSENGER}, "order_id driver_id lat lon ts", "heading speed_kmh"),
        _s("estimate_update", {PASSENGER}, "order_id eta_s distance_m ts"),
        _s("nearby_drivers", {PASSENGER}, "drivers ts"),
        # /ws/admin, by topic (subscribe): system_stats -> system_stats, active_orders -> active_orders,
        # assignments -> assignment, drivers -> driver_status, log -> log, fleet -> fleet.
        _s("system_stats", {ADMIN},
           "matching_latency_us push_latency_us orders_per_min order_rates orders drivers_online drivers_available"
           " drivers_by_state active_orders live_orders connections connections_by_role paused_connections"
           " engine_attached engine_available ring_depths worker workers ts",
           "engine_heartbeat_age_ms engine_hold"),
        _s("active_orders", {ADMIN}, "order_id status passenger_id active ts", "driver_id reason"),
        _s("assignment", {ADMIN}, "order_id driver_id passenger_id ts"),
        _s("driver_status", {ADMIN}, "driver_id status ts"),
        _s("log", {ADMIN}, "level message ts"),
        _s("fleet", {ADMIN}, "full drivers gone orders ts"),
    )
}
"""Server -> client messages by type (every one carries `ts`, listed in `required`)."""

ADMIN_TOPIC_MESSAGES: dict[str, str] = {
    "system_stats": "system_stats",
    "active_orders": "active_orders",
    "drivers": "driver_status",
    "assignments": "assignment",
    "log": "log",
    "fleet": "fleet",
}
"""Admin `subscribe` topic -> the message type it brings."""
