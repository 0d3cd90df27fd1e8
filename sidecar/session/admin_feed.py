"""The operator's live picture, sans-I/O: where every driver is, what it is doing, which orders are live.

The dashboard at /admin draws a map of every online driver and live order. Sending it one
message per GPS fix would cost as much as the fleet's whole ingest (10,000 drivers at 1 fix/s
is 10,000 messages a second per admin tab); instead this module folds what passes through the
sidecar into a small model and, at a fixed rate, says what changed:

* inputs, each a few dict operations, fed by the sidecar as traffic passes (`position()` runs
  for every `driver_location`, so it only stores the message object: no tuple, no copy);
* `tick(now)`, called at the feed rate (default twice a second), folds the inputs in, expires
  offers whose time ran out and returns the `fleet` delta: drivers that moved or changed state,
  drivers that went away, orders that changed. Whatever the fix rate, a driver appears at most
  once per tick, so the bytes an admin receives are bounded by (drivers x ticks per second);
* `snapshot()` is the same message with everything (`full: true`): for an admin that just
  subscribed, one that missed deltas while its socket was full, and periodically for safety.

No clock, no socket, no event loop: callers pass `now` (monotonic seconds) and `ts_ms`, and
send what comes back.

Several workers behind one port: every worker's feed shows the whole fleet. Orders, offers and
trips come from the engine's records, which the engine also hands to every other worker (fed
here, delivered to nobody). Positions, online/offline and disconnects are only seen by the
worker a driver is connected to: each tick that worker passes them on (`relay()`: the latest
fix per driver, status changes, disconnects, and every local driver again every `full_every_s`
and at every attach) in a FLEET record the engine relays to the others, which fold them in with
`remote()`; what no engine could take waits for the next one (`hold()`), but for positions. A remote
driver leaves the map when the engine says its worker detached (`worker_left()`), or, as a last
resort, when not heard of for `3 x full_every_s`.

Driver state, as derived here from what passes through; online or not is the engine's word at
each welcome (SESSION_STATE's `online`: an app open off shift is offline until it says `online`),
then the driver's `driver_status`:

    (`online`, or no word yet)  --new_order-->  offered  --accepted..started-->  on_trip
          available  <--cancel_order / rejected / offer expired / offered elsewhere--'
          available  <--completed / canceled / no_driver / back to searching-- on_trip
    `offline` status: offline (still connected, not dispatched); disconnect: gone
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class DriverState(StrEnum):
    AVAILABLE = "available"
    OFFERED = "offered"
    ON_TRIP = "on_trip"
    OFFLINE = "offline"


AVAILABLE, OFFERED, ON_TRIP, OFFLINE = DriverState.AVAILABLE, DriverState.OFFERED, DriverState.ON_TRIP, \
    DriverState.OFFLINE

LIVE_STATUSES = ("searching", "accepted", "arriving", "arrived", "started")
TRIP_STATUSES = frozenset({"accepted", "arriving", "arrived", "started"})
TERMINAL_STATUSES = frozenset({"completed", "canceled", "no_driver"})
RATE_KINDS = ("requested", "matched", "completed", "no_driver")
RATE_KIND_OF = {"searching": "requested", "accepted": "matched", "completed": "completed", "no_driver": "no_driver"}

# FLEET entry kinds (include/dgdo/events.h enum dgdo_fleet_kind; sidecar/engine/records.py FleetKind)
FLEET_MOVED, FLEET_ONLINE, FLEET_OFFLINE, FLEET_GONE = 1, 2, 3, 4

FEED_INTERVAL_S = 0.5  # deltas twice a second: smooth enough for a map, bounded for 10k drivers
FULL_EVERY_S = 30.0  # a full snapshot now and then heals anything a client's model got wrong
RATE_WINDOW_S = 60.0  # orders per minute over the last minute
STALE_ORDER_S = 3600.0  # an order with no news for this long is dropped (its end went to another worker)
MAX_PENDING_REQUESTS = 10_000  # ride requests awaiting the engine's order id (bounded: answers can be lost)
COORD_DIGITS = 5  # ~1 m: finer is noise on a map, and every digit costs bytes per driver per tick


class Position(Protocol):
    """Anything with a latitude and a longitude (the decoded `driver_location` is one)."""

    @property
    def lat(self) -> float: ...

    @property
    def lon(self) -> float: ...


@dataclass(slots=True)
class _Driver:
    lat: float | None = None
    lon: float | None = None
    online: bool = True  # until told otherwise (a driver's welcome says it at once): see the module doc
    offer: int = 0  # order id offered to it, 0 = none
    offer_until: float = 0.0  # monotonic s
    trip: int = 0  # order id of its trip, 0 = none

    @property
    def state(self) -> DriverState:
        if self.trip:
            return ON_TRIP
        if self.offer:
            return OFFERED
        return AVAILABLE if self.online else OFFLINE

    def row(self, driver_id: str) -> tuple[str, float, float, str, int | None]:
        assert self.lat is not None and self.lon is not None
        order = self.trip or self.offer or None
        return (driver_id, round(self.lat, COORD_DIGITS), round(self.lon, COORD_DIGITS), self.state.value, order)


@dataclass(slots=True)
class _Order:
    order_id: int
    status: str
    passenger_id: str = ""
    driver_id: str = ""  # assigned driver (accepted and later)
    offered_to: str = ""  # the driver holding the offer while searching
    pickup: tuple[float, float] | None = None
    dropoff: tuple[float, float] | None = None
    eta_s: float | None = None
    created_ms: int = 0
    changed_ms: int = 0
    seen_at: float = 0.0  # monotonic s of the last news, for pruning
    announced: bool = False  # an order_update for it has been seen (not only the request or an offer)
    counted: tuple[str, ...] = ()  # RATE_KINDS already counted for it: each counts once per order

    def as_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"order_id": self.order_id, "status": self.status, "created_ts": self.created_ms,
                             "changed_ts": self.changed_ms}
        if self.passenger_id:
            m["passenger_id"] = self.passenger_id
        if self.driver_id:
            m["driver_id"] = self.driver_id
        if self.offered_to:
            m["offered_to"] = self.offered_to
        if self.pickup is not None:
            m["pickup"] = {"lat": self.pickup[0], "lon": self.pickup[1]}
        if self.dropoff is not None:
            m["dropoff"] = {"lat": self.dropoff[0], "lon": self.dropoff[1]}
        if self.eta_s is not None:
            m["eta_s"] = round(self.eta_s, 1)
        return m


class RateWindow:
    """Per-minute rates of monotonic counters over a sliding window (sans-I/O: `now` is passed in)."""

    __slots__ = ("_samples", "window_s")

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque()

    def per_min(self, now: float, counters: tuple[int, ...]) -> tuple[float, ...]:
        """Records `counters` at `now`; returns each one's rate per minute over the window.

        Zeros until the window spans a second: a rate from a few milliseconds would be noise.
        A counter below its previous value was reset (an engine restarted without a journal
        counts from 0 again): the window starts over, rather than show a negative rate.
        """
        samples = self._samples
        if samples and any(c < c0 for c, c0 in zip(counters, samples[-1][1], strict=True)):
            samples.clear()
        samples.append((now, counters))
        while len(samples) > 1 and now - samples[0][0] > self.window_s:
            samples.popleft()
        t0, first = samples[0]
        span = now - t0
        if span < 1.0:
            return tuple(0.0 for _ in counters)
        return tuple(round((c - c0) * 60.0 / span, 1) for c, c0 in zip(counters, first, strict=True))


class AdminFeed:
    """Drivers and live orders as the sidecar sees them pass, folded into `fleet` messages."""

    def __init__(self, full_every_s: float = FULL_EVERY_S, stale_order_s: float = STALE_ORDER_S) -> None:
        self.full_every_s = full_every_s
        self.stale_order_s = stale_order_s
        self._drivers: dict[str, _Driver] = {}
        # Read by the core's push path too: it skips `order_update()` for a change the model has already
        # (session/core.py `_order_update`), so that test and the one order_update() starts with must agree.
        self.orders: dict[int, _Order] = {}
        # Positions since the last tick, the latest per driver. Public: the core's driver_location
        # path stores here itself (position()'s one line, without the call).
        self.moved: dict[str, Position] = {}
        self._dirty: set[str] = set()  # drivers whose state changed since the last tick
        self._gone: set[str] = set()
        self._orders_dirty: set[int] = set()
        self._offers: dict[str, float] = {}  # offered driver -> its offer's deadline (monotonic s)
        self._requests: dict[int, tuple[str, tuple[float, float], tuple[float, float]]] = {}
        self._last_full: float | None = None
        self._last_prune = 0.0
        # several workers (module doc): what to pass on, and the drivers another worker reported
        self._relay: list[tuple[str, float, float, int]] = []  # (driver, lat, lon, FleetKind) since the last tick
        self._held: dict[str, tuple[str, float, float, int]] = {}  # status changes made while no engine was attached
        self._last_relay_full = 0.0
        self._remote: dict[str, tuple[int, float]] = {}  # driver -> (its worker, monotonic s last heard of)
        self._remote_moved: dict[str, tuple[float, float]] = {}
        self.counts = dict.fromkeys(RATE_KINDS, 0)  # order events seen, for the per-minute rates

    # ---- inputs: what passes through the sidecar ------------------------------------

    def position(self, driver_id: str, pos: Position) -> None:
        """A driver's fix: one dict store, folded in at tick (the core's driver_location path makes
        this store itself, without the call)."""
        self.moved[driver_id] = pos

    def driver_status(self, driver_id: str, online: bool, relay: bool = True) -> bool:
        """The driver's `online` / `offline`, as it said or as the engine had it at its welcome;
        True when that is news: a driver not known here before, or a change."""
        if relay:
            self._relay.append((driver_id, 0.0, 0.0, FLEET_ONLINE if online else FLEET_OFFLINE))
        d = self._drivers.get(driver_id)
        if d is None:
            d = self._driver(driver_id)
        elif d.online == online:
            return False
        d.online = online
        self._dirty.add(driver_id)
        return True

    def driver_gone(self, driver_id: str, relay: bool = True) -> None:
        """The driver's connection closed: off the map (the engine keeps its trip; it may come back)."""
        if relay:
            self._relay.append((driver_id, 0.0, 0.0, FLEET_GONE))
        self._remote.pop(driver_id, None)
        self._remote_moved.pop(driver_id, None)
        self.moved.pop(driver_id, None)
        self._offers.pop(driver_id, None)
        if self._drivers.pop(driver_id, None) is not None:
            self._gone.add(driver_id)
            self._dirty.discard(driver_id)

    def ride_requested(self, corr: int, passenger_id: str, pickup: tuple[float, float],
                       dropoff: tuple[float, float]) -> None:
        """A ride_request went to the engine as command `corr`; its answer names the order."""
        if len(self._requests) >= MAX_PENDING_REQUESTS:
            self._requests.pop(next(iter(self._requests)))  # the oldest: its answer is long overdue
        self._requests[corr] = (passenger_id, pickup, dropoff)

    def request_answered(self, corr: int, order_id: int, now: float, ts_ms: int) -> None:
        """The engine's answer to command `corr` (order_id 0: refused, or not a ride request)."""
        req = self._requests.pop(corr, None)
        if req is None or not order_id:
            return
        passenger_id, pickup, dropoff = req
        o = self._order(order_id, now, ts_ms)
        o.passenger_id = o.passenger_id or passenger_id
        o.pickup, o.dropoff = pickup, dropoff

    def offer(self, driver_id: str, order_id: int, pickup: tuple[float, float], dropoff: tuple[float, float],
              eta_s: float, expires_in_s: float, now: float, ts_ms: int) -> None:
        """A `new_order` went to `driver_id`."""
        o = self._order(order_id, now, ts_ms)
        if o.offered_to and o.offered_to != driver_id:
            self.offer_ended(o.offered_to, order_id)  # its reject or expiry was not seen here
        o.offered_to = driver_id
        o.pickup = o.pickup or pickup
        o.dropoff = o.dropoff or dropoff
        o.eta_s = eta_s
        d = self._driver(driver_id)
        d.offer = order_id
        d.offer_until = now + expires_in_s
        self._offers[driver_id] = d.offer_until
        self._dirty.add(driver_id)

    def offer_ended(self, driver_id: str, order_id: int) -> None:
        """The driver no longer holds `order_id`: rejected, withdrawn, expired or canceled (cancel_order)."""
        d = self._drivers.get(driver_id)
        if d is not None:
            if d.offer == order_id:
                d.offer = 0
                self._offers.pop(driver_id, None)
                self._dirty.add(driver_id)
            if d.trip == order_id:
                d.trip = 0
                self._dirty.add(driver_id)
        o = self.orders.get(order_id)
        if o is not None and o.offered_to == driver_id:
            o.offered_to = ""
            self._orders_dirty.add(order_id)

    def order_update(self, order_id: int, status: str, passenger_id: str, driver_id: str, now: float,
                     ts_ms: int) -> None:
        """An `order_update` delivered to a party of the order; the second copy of a change is a no-op
        (which the core does not even call for: `orders`)."""
        known = self.orders.get(order_id)
        if known is not None and known.announced and known.status == status and known.driver_id == driver_id:
            return
        o = self._order(order_id, now, ts_ms)
        o.announced = True
        kind = RATE_KIND_OF.get(status)
        if kind is not None and kind not in o.counted:
            o.counted += (kind,)
            self.counts[kind] += 1
        previous_driver = o.driver_id or o.offered_to
        o.status, o.changed_ms = status, ts_ms
        o.passenger_id = o.passenger_id or passenger_id
        if status in TRIP_STATUSES and driver_id:
            o.driver_id, o.offered_to = driver_id, ""
            d = self._driver(driver_id)
            if d.trip != order_id or d.offer:
                d.trip = order_id
                if d.offer == order_id:
                    d.offer = 0
                    self._offers.pop(driver_id, None)
                self._dirty.add(driver_id)
        elif status == "searching":  # back to search: its driver gave the trip up
            o.driver_id = ""
        if previous_driver and (status in TERMINAL_STATUSES or status == "searching"):
            self.offer_ended(previous_driver, order_id)
        if status in TERMINAL_STATUSES and driver_id and driver_id != previous_driver:
            self.offer_ended(driver_id, order_id)

    def estimate(self, order_id: int, eta_s: float) -> None:
        """A fresh ETA (to the pickup, then to the dropoff) for a live order."""
        o = self.orders.get(order_id)
        if o is not None and o.status not in TERMINAL_STATUSES:
            o.eta_s = eta_s
            self._orders_dirty.add(order_id)

    def remote(self, worker: int, entries: list[tuple[str, float, float, int]], now: float) -> list[tuple[str, str]]:
        """What another worker said about its drivers (a FLEET record), for drivers not connected here.

        A disconnect counts only from the worker the driver was last reported on: the driver may
        have moved to a third one meanwhile. Returns the status changes taken, as the `drivers`
        topic names them: (driver, "online" | "offline" | "disconnected").
        """
        changes = []
        for driver_id, lat, lon, kind in entries:
            if kind == FLEET_GONE:
                if self._remote.get(driver_id, (0, 0.0))[0] == worker:
                    self.driver_gone(driver_id, relay=False)
                    changes.append((driver_id, "disconnected"))
                continue
            self._remote[driver_id] = (worker, now)
            if kind == FLEET_MOVED:
                self._remote_moved[driver_id] = (lat, lon)
            elif self.driver_status(driver_id, kind == FLEET_ONLINE, relay=False):  # (a full relay repeats it)
                changes.append((driver_id, "online" if kind == FLEET_ONLINE else "offline"))
        return changes

    def worker_left(self, worker: int) -> list[str]:
        """Worker `worker` detached from the engine: the drivers it reported leave the map; returns them."""
        gone = [driver_id for driver_id, (w, _heard) in self._remote.items() if w == worker]
        for driver_id in gone:
            self.driver_gone(driver_id, relay=False)
        return gone

    def relay_everything(self) -> None:
        """At the next tick, pass on every local driver (another worker just joined)."""
        self._last_relay_full = -math.inf

    def relay(self) -> list[tuple[str, float, float, int]]:
        """What the other workers' feeds need from this one since the last call (see `remote()`)."""
        out, self._relay = self._relay, []
        if self._held:
            out[:0] = self._held.values()
            self._held = {}
        return out

    def hold(self, entries: list[tuple[str, float, float, int]]) -> None:
        """`relay()`'s entries that no engine could take (none attached): the status changes among
        them go out with the next relay(), the latest per driver (at most one each). Positions need
        not wait: the full relay at the next attach (`relay_everything()`) says where each driver is,
        but not that one left or went online or offline meanwhile, which the others would not learn."""
        for entry in entries:
            if entry[3] != FLEET_MOVED:
                self._held.pop(entry[0], None)  # (moved to the end: the latest is last)
                self._held[entry[0]] = entry

    # ---- outputs --------------------------------------------------------------------

    def tick(self, now: float, ts_ms: int, want: bool = True) -> dict[str, Any] | None:
        """Folds in what arrived since the last tick; returns the `fleet` delta, None if nothing changed.

        Args:
            now: monotonic seconds (offer expiry, pruning).
            ts_ms: wall-clock ms for the message's `ts`.
            want: False when no admin listens: the model is kept current, no message is built.
        Returns:
            A `fleet` message with `full: false`, or None. Call `full_due()` to learn whether a
            periodic snapshot should go out instead.
        """
        for driver_id, until in list(self._offers.items()):
            if until <= now:  # the engine expired it; the record that says so went elsewhere or was missed
                d = self._drivers.get(driver_id)
                if d is not None:
                    self.offer_ended(driver_id, d.offer)
                self._offers.pop(driver_id, None)
        if now - self._last_prune >= self.full_every_s:
            self._last_prune = now
            self._prune(now)
        drivers = self._drivers
        rows = []
        moved, self.moved = self.moved, {}
        remote = self._remote
        relay = self._relay
        if remote:  # (drivers that moved here are ours now)
            for driver_id in moved:
                remote.pop(driver_id, None)
        for driver_id, pos in moved.items():
            d = drivers.get(driver_id)
            if d is None:
                d = drivers[driver_id] = _Driver()
                self._gone.discard(driver_id)
            d.lat, d.lon = pos.lat, pos.lon
            relay.append((driver_id, d.lat, d.lon, FLEET_MOVED))
            if want:
                rows.append(d.row(driver_id))
        remote_moved, self._remote_moved = self._remote_moved, {}
        for driver_id, (lat, lon) in remote_moved.items():
            if driver_id in moved:
                continue
            d = drivers.get(driver_id)
            if d is None:
                d = drivers[driver_id] = _Driver()
                self._gone.discard(driver_id)
            d.lat, d.lon = lat, lon
            if want:
                rows.append(d.row(driver_id))
        if now - self._last_relay_full >= self.full_every_s:  # every local driver again: heals a lost relay
            self._last_relay_full = now
            for driver_id, d in drivers.items():
                if driver_id not in remote and driver_id not in moved and d.lat is not None:
                    relay.append((driver_id, d.lat, d.lon, FLEET_MOVED))
                    relay.append((driver_id, 0.0, 0.0, FLEET_ONLINE if d.online else FLEET_OFFLINE))
        dirty, self._dirty = self._dirty, set()
        if want:
            for driver_id in dirty:
                d = drivers.get(driver_id)
                if d is not None and d.lat is not None and driver_id not in moved:
                    rows.append(d.row(driver_id))
        gone, self._gone = self._gone, set()
        orders_dirty, self._orders_dirty = self._orders_dirty, set()
        orders = []
        for order_id in orders_dirty:
            o = self.orders.get(order_id)
            if o is None:
                continue
            if want:
                orders.append(o.as_map())
            if o.status in TERMINAL_STATUSES:
                del self.orders[order_id]  # its last word goes out in this delta
        if not want or not (rows or gone or orders):
            return None
        return {"type": "fleet", "full": False, "drivers": rows, "gone": sorted(gone), "orders": orders,
                "ts": ts_ms}

    def full_due(self, now: float) -> bool:
        """Whether a periodic full snapshot is due (and, if so, counts it as sent).

        The first call only starts the period: a new subscriber got its snapshot on subscribing.
        """
        if self._last_full is None:
            self._last_full = now
            return False
        if now - self._last_full >= self.full_every_s:
            self._last_full = now
            return True
        return False

    def snapshot(self, ts_ms: int) -> dict[str, Any]:
        """Everything, as one `fleet` message with `full: true` (replaces the client's model).

        Positions not yet folded in are included (and still go out in the next delta: a row
        repeated is harmless, a driver missing until it moves again is not).
        """
        for driver_id, pos in self.moved.items():
            d = self._driver(driver_id)
            d.lat, d.lon = pos.lat, pos.lon
        rows = [d.row(i) for i, d in self._drivers.items() if d.lat is not None]
        orders = [o.as_map() for o in self.orders.values()]
        return {"type": "fleet", "full": True, "drivers": rows, "gone": [], "orders": orders, "ts": ts_ms}

    def driver_counts(self) -> dict[str, int]:
        """Connected drivers by state (those with and without a position yet)."""
        out = dict.fromkeys((s.value for s in DriverState), 0)
        for d in self._drivers.values():
            out[d.state.value] += 1
        return out

    def live_orders(self) -> dict[str, int]:
        """Live orders by status."""
        out = dict.fromkeys(LIVE_STATUSES, 0)
        for o in self.orders.values():
            if o.status in out:
                out[o.status] += 1
        return out

    def rate_counters(self) -> tuple[int, ...]:
        return tuple(self.counts[k] for k in RATE_KINDS)

    # ---- internals ------------------------------------------------------------------

    def _driver(self, driver_id: str) -> _Driver:
        d = self._drivers.get(driver_id)
        if d is None:
            d = self._drivers[driver_id] = _Driver()
            self._gone.discard(driver_id)
        return d

    def _order(self, order_id: int, now: float, ts_ms: int) -> _Order:
        o = self.orders.get(order_id)
        if o is None:
            o = self.orders[order_id] = _Order(order_id, "searching", created_ms=ts_ms, changed_ms=ts_ms)
        o.seen_at = now
        self._orders_dirty.add(order_id)
        return o

    def _prune(self, now: float) -> None:
        stale = [i for i, o in self.orders.items() if now - o.seen_at > self.stale_order_s]
        for order_id in stale:
            del self.orders[order_id]
        self._orders_dirty.difference_update(stale)
        silent = [i for i, (_w, heard) in self._remote.items() if now - heard > 3 * self.full_every_s]
        for driver_id in silent:  # its worker stopped reporting it (died): nobody else will say it left
            self.driver_gone(driver_id, relay=False)

    def __len__(self) -> int:
        return len(self._drivers)

