"""The built-in demo: simulated drivers and passengers in Dushanbe over the public protocol.

    python -m dgdo_apps.demo --url ws://127.0.0.1:8765 --drivers 20 [--rate 2] [--duration 0]

Everything goes through real WebSockets and the public JSON protocol (DESIGN §4),
exactly as an app would speak it, so the demo exercises the whole stack:
sidecar, rings and engine. One process, one uvloop event loop; every
connection is an app client (client.py, on picows) and every simulated person a task.

* Drivers `d-NNN` go online, wander at ~30 km/h and report their position
  every second. An offer (`new_order`) is accepted ~90% of the time after a
  short think; the driver then drives to the pickup and to the dropoff in
  compressed time (seconds, not minutes) so that rides complete quickly.
* Passengers `p-NNN` arrive at a steady rate, request a ride between two random
  points, follow `order_update` until the order ends, and hang up.

Every 5 s a `[demo]` status line goes to stdout; at exit, a `[demo] done ...`
summary. SIGINT/SIGTERM or `--duration` end the run: passengers cancel open
rides, drivers end started trips and go offline (so a server that outlives the
demo is left with nobody stuck on a trip), all sockets are closed, and the
process exits 0 (1 only if the server could never be reached). With
DGDO_JWT_SECRET set, each connection carries a minted `?token=`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import uvloop

from dgdo_apps import client
from dgdo_apps.client import CONNECT_RETRY_S, Link, Refused, Unreachable, open_link
from sidecar.shell import lifetime

log = logging.getLogger("dgdo.demo")

# ---- the city --------------------------------------------------------------------------

CENTER_LAT, CENTER_LON = 38.56, 68.78
CITY_HALF_SIZE_M = 5_000.0  # the city is ~10 km across
EARTH_RADIUS_M = 6_371_000.0
M_PER_DEG_LAT = math.pi * EARTH_RADIUS_M / 180.0

# ---- pacing (seconds unless named otherwise) -------------------------------------------

IDLE_REPORT_S = 1.0  # position reports while wandering
TRIP_REPORT_S = 0.5  # position reports while on a job
CRUISE_KMH = 30.0
THINK_S = (0.2, 1.0)  # before answering an offer
TO_PICKUP_S = (2.0, 4.0)  # compressed drive to the pickup
TO_DROPOFF_S = (3.0, 5.0)  # compressed drive to the dropoff
BOARDING_S = 0.3  # between `order_arrived` and `trip_start`
ACCEPT_PROBABILITY = 0.9
PASSENGER_PATIENCE_S = 120.0  # after this a passenger cancels and leaves (a stalled engine)
STATUS_EVERY_S = 5.0
SHUTDOWN_GRACE_S = 1.5  # the whole shutdown must fit in 2 s

TERMINAL_STATUSES = frozenset({"completed", "canceled", "no_driver"})
MATCHED_STATUSES = frozenset({"accepted", "arriving", "arrived", "started", "completed"})
TRIP_STATUSES = frozenset({"accepted", "arriving", "arrived", "started"})  # a driver bound to its order


# ---- geometry (pure) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CityBox:
    """The rectangle the simulation stays in, in degrees."""

    lat_min: float
    lat_max: float
    lon_min: float
    lon_max: float

    @classmethod
    def around(cls, lat: float, lon: float, half_size_m: float) -> CityBox:
        dlat = half_size_m / M_PER_DEG_LAT
        dlon = half_size_m / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
        return cls(lat - dlat, lat + dlat, lon - dlon, lon + dlon)

    def contains(self, lat: float, lon: float) -> bool:
        return self.lat_min <= lat <= self.lat_max and self.lon_min <= lon <= self.lon_max

    def random_point(self, rng: random.Random) -> tuple[float, float]:
        return rng.uniform(self.lat_min, self.lat_max), rng.uniform(self.lon_min, self.lon_max)


DUSHANBE = CityBox.around(CENTER_LAT, CENTER_LON, CITY_HALF_SIZE_M)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial compass bearing from point 1 to point 2, in [0, 360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    x = math.sin(dl) * math.cos(p2)
    y = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(x, y)) % 360.0


def step(lat: float, lon: float, heading: float, meters: float) -> tuple[float, float]:
    """Moves `meters` along `heading`; a flat-earth step is exact enough at city scale."""
    h = math.radians(heading)
    dlat = meters * math.cos(h) / M_PER_DEG_LAT
    dlon = meters * math.sin(h) / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


def wander(lat: float, lon: float, heading: float, meters: float, box: CityBox,
           rng: random.Random) -> tuple[float, float, float]:
    """One random-walk step: drift the heading a little, turn back at the city edge.

    Returns (lat, lon, heading).
    """
    heading = (heading + rng.gauss(0.0, 25.0)) % 360.0
    nlat, nlon = step(lat, lon, heading, meters)
    if not box.contains(nlat, nlon):
        # Head for the center (with some spread) rather than bouncing off the edge forever.
        center_lat = (box.lat_min + box.lat_max) / 2
        center_lon = (box.lon_min + box.lon_max) / 2
        heading = (bearing_deg(lat, lon, center_lat, center_lon) + rng.uniform(-45.0, 45.0)) % 360.0
        nlat, nlon = step(lat, lon, heading, meters)
    return nlat, nlon, heading


def route_points(start: tuple[float, float], end: tuple[float, float], n: int) -> list[tuple[float, float]]:
    """`n` evenly spaced points after `start`, the last one exactly `end` (straight line)."""
    n = max(1, n)
    (lat0, lon0), (lat1, lon1) = start, end
    return [(lat0 + (lat1 - lat0) * i / n, lon0 + (lon1 - lon0) * i / n) for i in range(1, n + 1)]


# ---- counters --------------------------------------------------------------------------------


@dataclass(slots=True)
class Counters:
    """What the demo has seen, for the status lines and the final summary."""

    requested: int = 0
    accepted: int = 0
    completed: int = 0
    no_driver: int = 0
    canceled: int = 0
    errors: int = 0
    gave_up: int = 0  # passengers that waited PASSENGER_PATIENCE_S and canceled
    throttled: int = 0  # passenger arrivals skipped because too many were active
    offers: int = 0
    rejected: int = 0
    positions_seen: int = 0  # driver_location pushes received by passengers
    estimates_seen: int = 0  # estimate_update pushes received by passengers
    drivers_online: int = 0
    passengers_active: int = 0

    def error(self, _reply: dict[str, Any]) -> None:
        self.errors += 1

    def status_line(self, elapsed_s: float) -> str:
        return (f"[demo] t={elapsed_s:.0f}s drivers_online={self.drivers_online} "
                f"requested={self.requested} accepted={self.accepted} completed={self.completed} "
                f"no_driver={self.no_driver} canceled={self.canceled} errors={self.errors} "
                f"active={self.passengers_active} offers={self.offers} rejected={self.rejected} "
                f"positions={self.positions_seen} estimates={self.estimates_seen}"
                + (f" throttled={self.throttled}" if self.throttled else "")
                + (f" gave_up={self.gave_up}" if self.gave_up else ""))

    def summary_line(self) -> str:
        return (f"[demo] done requested={self.requested} accepted={self.accepted} "
                f"completed={self.completed} no_driver={self.no_driver} errors={self.errors}")


# ---- one connection ---------------------------------------------------------------------------


# ---- drivers -------------------------------------------------------------------------------------


class DemoDriver:
    """A driver who wanders until offered a ride, then (usually) takes it to completion."""

    def __init__(self, driver_id: str, url: str, counters: Counters, rng: random.Random,
                 box: CityBox = DUSHANBE) -> None:
        self.id = driver_id
        self.url = url
        self.counters = counters
        self.rng = rng
        self.box = box
        self.lat, self.lon = box.random_point(rng)
        self.heading = rng.uniform(0.0, 360.0)
        self.link: Link | None = None
        self.order_id: int | None = None  # the offer or trip this driver is busy with
        self.job: asyncio.Task[None] | None = None
        self.riding: int | None = None  # the order whose trip has started (passenger on board)
        self.last_offer: dict[str, Any] = {}  # the latest new_order: where a trip resumed after a reconnect goes
        self.online = asyncio.Event()  # set once the first `online` was acknowledged

    async def run(self) -> None:
        """Stays connected for the whole demo, reconnecting if the server drops the socket."""
        try:
            while True:
                try:
                    self.link = await open_link(self.url, "driver", self.id, self._on_push, self.counters.error)
                except Unreachable as e:
                    log.warning("%s: giving up: %s", self.id, e)
                    return
                try:
                    await self._session(self.link)
                except (ConnectionError, TimeoutError, Refused) as e:
                    log.debug("%s: session ended: %s", self.id, e)
                self._drop_job()
                if self.link.close_code in client.NO_RECONNECT:
                    # Another app signed in as this driver (4001): taking the id back would close it in
                    # turn, and the two would replace each other for good. Leave the field to it.
                    log.warning("%s: closed %s by the server; not reconnecting", self.id, self.link.close_code)
                    return
                if self.link.close_code == client.CLOSE_TOKEN_EXPIRED:
                    log.info("%s: token expired; reconnecting with a fresh one", self.id)
                    continue  # the server is up: open_link mints a new token
                await asyncio.sleep(0.5)  # the server went away; let it come back
        finally:
            riding = self.riding
            self._drop_job()
            if self.link is not None:
                # Say goodbye properly, so a server that outlives the demo has no driver stuck on a
                # trip: a started trip cannot be canceled, so drop the passenger off here and now.
                # CLOSE follows on the same stream, so the server sees these first.
                if riding is not None:
                    self.link.send({"type": "trip_complete", "order_id": riding})
                self.link.send({"type": "driver_status", "status": "offline"})
                await self.link.close()

    async def _session(self, link: Link) -> None:
        await link.request({"type": "driver_status", "status": "online"})
        self.counters.drivers_online += 1
        self.online.set()
        try:
            while not link.closed.is_set():
                if self.order_id is None:  # on a job, the job reports positions itself
                    self.lat, self.lon, self.heading = wander(
                        self.lat, self.lon, self.heading, CRUISE_KMH / 3.6 * IDLE_REPORT_S, self.box, self.rng)
                    self._report(CRUISE_KMH)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.closed.wait(), IDLE_REPORT_S)
        finally:
            self.counters.drivers_online -= 1

    def _report(self, speed_kmh: float) -> None:
        if self.link is not None:
            self.link.send({"type": "driver_location", "lat": round(self.lat, 6), "lon": round(self.lon, 6),
                            "heading": round(self.heading, 1), "speed_kmh": round(speed_kmh, 1)})

    # -- pushes from the server --

    def _on_push(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "new_order":
            self._offered(msg)
        elif _withdraws(msg) and msg.get("order_id") == self.order_id:
            log.debug("%s: order %s withdrawn (%s)", self.id, self.order_id, msg.get("reason"))
            self._drop_job()
        elif kind == "order_update" and msg.get("status") in TRIP_STATUSES and self.order_id is None:
            # Back after a dropped socket (the job went with it): the welcome's snapshot says which
            # trip the engine still holds for this driver, and where it stands. Carry on from there.
            self._resume_trip(msg)

    def _offered(self, offer: dict[str, Any]) -> None:
        self.counters.offers += 1
        order_id = offer.get("order_id")
        if not isinstance(order_id, int):
            return
        self.last_offer = offer
        if self.order_id is not None:
            # The engine gives a driver one offer/trip at a time, so this is a race at the
            # end of a trip; decline rather than juggle two jobs.
            self._reply_soon("order_reject", order_id)
            return
        self.order_id = order_id
        self.job = asyncio.get_running_loop().create_task(self._do_job(order_id, offer))
        self.job.add_done_callback(self._job_done)

    def _resume_trip(self, update: dict[str, Any]) -> None:
        order_id = update.get("order_id")
        if not isinstance(order_id, int):
            return
        offer = self.last_offer if self.last_offer.get("order_id") == order_id else {}
        log.debug("%s: resuming order %s at %s", self.id, order_id, update["status"])
        self.order_id = order_id
        self.job = asyncio.get_running_loop().create_task(self._do_job(order_id, offer, update["status"]))
        self.job.add_done_callback(self._job_done)

    def _live(self) -> Link:
        if self.link is None:
            raise ConnectionError(f"{self.id}: not connected")
        return self.link

    def _reply_soon(self, action: str, order_id: int) -> None:
        if self.link is not None:
            self.link.send({"type": action, "order_id": order_id})

    def _job_done(self, task: asyncio.Task[None]) -> None:
        if self.job is task:
            self.job = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: job failed: %r", self.id, exc)

    def _drop_job(self) -> None:
        self.order_id = None
        if self.job is not None:
            self.job.cancel()
            self.job = None

    # -- one offer, start to finish --

    async def _do_job(self, order_id: int, offer: dict[str, Any], status: str = "offered") -> None:
        """An offer taken from `status` on: "offered" (answer it) or a trip's status (one resumed after
        a reconnect, `offer` possibly unknown: then the driver stays where it is). Each command goes
        over the driver's link of the moment: a resumed job starts while its link is being opened."""
        here = (self.lat, self.lon)
        try:
            pickup = _point(offer["pickup"]) if "pickup" in offer else here
            dropoff = _point(offer["dropoff"]) if "dropoff" in offer else here
            if status == "offered":
                await asyncio.sleep(self.rng.uniform(*THINK_S))
                if self.rng.random() >= ACCEPT_PROBABILITY:
                    self.counters.rejected += 1
                    self.order_id = None
                    await self._live().request({"type": "order_reject", "order_id": order_id})
                    return
                await self._live().command({"type": "order_accept", "order_id": order_id})
            if status in ("offered", "accepted", "arriving"):
                await self._drive_to(pickup, self.rng.uniform(*TO_PICKUP_S))
                await self._live().command({"type": "order_arrived", "order_id": order_id})
            if status != "started":
                await asyncio.sleep(BOARDING_S)
                await self._live().command({"type": "trip_start", "order_id": order_id})
            self.riding = order_id
            await self._drive_to(dropoff, self.rng.uniform(*TO_DROPOFF_S))
            # Free before the ack: the engine may offer the next ride in the same batch as the ack.
            self.order_id = self.riding = None
            await self._live().command({"type": "trip_complete", "order_id": order_id})
        except (Refused, TimeoutError, ConnectionError, KeyError, TypeError) as e:
            # An expired or withdrawn offer, a passenger who canceled, a dropped socket:
            # all normal in a busy city. Back to wandering.
            log.debug("%s: order %s abandoned: %s", self.id, order_id, e)
        finally:
            if self.order_id == order_id:
                self.order_id = None
            if self.riding == order_id:
                self.riding = None

    async def _drive_to(self, target: tuple[float, float], seconds: float) -> None:
        """Straight-line drive reporting every TRIP_REPORT_S, compressed into `seconds`."""
        n = max(1, round(seconds / TRIP_REPORT_S))
        if distance_m(self.lat, self.lon, *target) > 1.0:
            self.heading = bearing_deg(self.lat, self.lon, *target)
        # Time is compressed, so the true speed would be absurd; report a plausible city speed.
        speed = self.rng.uniform(25.0, 50.0)
        for lat, lon in route_points((self.lat, self.lon), target, n):
            await asyncio.sleep(TRIP_REPORT_S)
            self.lat, self.lon = lat, lon
            self._report(speed)


def _withdraws(msg: dict[str, Any]) -> bool:
    """An offer withdrawn or a trip canceled under the driver."""
    kind = msg.get("type")
    return kind == "cancel_order" or (kind == "order_update" and msg.get("status") == "canceled")


def _point(p: Any) -> tuple[float, float]:
    return float(p["lat"]), float(p["lon"])


# ---- passengers ------------------------------------------------------------------------------


class DemoPassenger:
    """Requests one ride, follows it to its end, and hangs up."""

    def __init__(self, passenger_id: str, request_id: str, url: str, counters: Counters,
                 rng: random.Random, box: CityBox = DUSHANBE) -> None:
        self.id = passenger_id
        self.request_id = request_id
        self.url = url
        self.counters = counters
        self.pickup = box.random_point(rng)
        self.dropoff = box.random_point(rng)
        # Rides shorter than ~1 km are not worth a taxi; pick another dropoff.
        while distance_m(*self.pickup, *self.dropoff) < 1000.0:
            self.dropoff = box.random_point(rng)
        self.status: str | None = None
        self.order_id: int | None = None
        self.matched = False
        self.ended = asyncio.Event()

    async def run(self) -> None:
        link: Link | None = None
        self.counters.passengers_active += 1
        try:
            link = await open_link(self.url, "passenger", self.id, self._on_push, self.counters.error)
            self.counters.requested += 1
            ack = await link.command({
                "type": "ride_request",
                "pickup": {"lat": round(self.pickup[0], 6), "lon": round(self.pickup[1], 6)},
                "dropoff": {"lat": round(self.dropoff[0], 6), "lon": round(self.dropoff[1], 6)},
            }, request_id=self.request_id)
            if isinstance(ack.get("order_id"), int):
                self.order_id = ack["order_id"]
            try:
                await asyncio.wait_for(self._until_ended(link), PASSENGER_PATIENCE_S)
            except TimeoutError:
                self.counters.gave_up += 1
        except (Unreachable, Refused, TimeoutError, ConnectionError) as e:
            log.debug("%s: %s", self.id, e)
        finally:
            self.counters.passengers_active -= 1
            if link is not None:
                # Leaving (out of patience, or the demo is stopping) with a ride still open:
                # cancel it, so its driver is freed rather than stuck on a trip nobody ends.
                # (A started trip cannot be canceled; its driver ends it instead.)
                # Not waiting for the ack: a server that is itself shutting down may never send it,
                # and the CLOSE that follows on the same stream is only handled after the cancel.
                if self.order_id is not None and not self.ended.is_set() and self.status != "started":
                    link.send({"type": "order_cancel", "order_id": self.order_id, "reason": "passenger left"})
                await link.close()

    async def _until_ended(self, link: Link) -> None:
        ended = asyncio.ensure_future(self.ended.wait())
        gone = asyncio.ensure_future(link.closed.wait())
        try:
            await asyncio.wait({ended, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            gone.cancel()

    def _on_push(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "order_update":
            if self.order_id is None and isinstance(msg.get("order_id"), int):
                self.order_id = msg["order_id"]  # the update may beat the ack
            self._update(str(msg.get("status")))
        elif kind == "driver_location":
            self.counters.positions_seen += 1
        elif kind == "estimate_update":
            self.counters.estimates_seen += 1

    def _update(self, status: str) -> None:
        if self.ended.is_set():
            return
        self.status = status
        if status in MATCHED_STATUSES and not self.matched:
            self.matched = True
            self.counters.accepted += 1
        if status == "completed":
            self.counters.completed += 1
        elif status == "canceled":
            self.counters.canceled += 1
        elif status == "no_driver":
            self.counters.no_driver += 1
        if status in TERMINAL_STATUSES:
            self.ended.set()


# ---- the fleet -------------------------------------------------------------------------------


@dataclass(slots=True)
class DemoConfig:
    url: str = "ws://127.0.0.1:8765"
    drivers: int = 20
    rate: float = 2.0  # passengers per second
    duration: float = 0.0  # 0 = until signaled
    seed: int | None = None
    quiet: bool = False
    max_passengers: int = 0  # 0 = 4 x drivers (at least 8)
    status_every: float = STATUS_EVERY_S

    @property
    def passenger_cap(self) -> int:
        return self.max_passengers or max(8, 4 * self.drivers)


@dataclass
class Fleet:
    """Runs the drivers, feeds passengers at a steady rate, and reports."""

    config: DemoConfig
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        # Request ids are unique per run, even with --seed, so a second demo against the same
        # server does not get the first one's orders back (ride_request is idempotent per id).
        self.run_tag = os.urandom(4).hex()
        self.drivers = [
            DemoDriver(f"d-{i:03d}", self.config.url, self.counters, random.Random(self.rng.getrandbits(64)))
            for i in range(1, self.config.drivers + 1)
        ]
        self.passengers: set[asyncio.Task[None]] = set()
        self.started = time.monotonic()

    async def run(self, stop: asyncio.Event) -> int:
        """Runs until `stop` is set (or `--duration` passes); returns the exit status."""
        loop = asyncio.get_running_loop()
        driver_tasks = [loop.create_task(d.run()) for d in self.drivers]
        background = [loop.create_task(self._feed_passengers())]
        if not self.config.quiet and self.config.status_every > 0:
            background.append(loop.create_task(self._report()))
        timeout = self.config.duration or None
        unreachable = loop.create_task(self._all_drivers_gave_up(driver_tasks))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_first(stop.wait(), unreachable), timeout)
        failed = unreachable.done() and not unreachable.cancelled() and unreachable.result()
        unreachable.cancel()
        await self._shutdown(driver_tasks + background)
        print(self.counters.summary_line(), flush=True)
        if failed:
            print(f"[demo] could not connect to {self.config.url}", file=sys.stderr, flush=True)
            return 1
        return 0

    async def _all_drivers_gave_up(self, tasks: list[asyncio.Task[None]]) -> bool:
        """True when every driver task ended without ever going online (the server is not there)."""
        if not tasks:
            await asyncio.Future()  # no drivers: nothing to watch
        await asyncio.gather(*tasks, return_exceptions=True)
        return not any(d.online.is_set() for d in self.drivers)

    async def _feed_passengers(self) -> None:
        # Let the drivers get online first, or the first riders would all get no_driver.
        deadline = time.monotonic() + CONNECT_RETRY_S
        while not all(d.online.is_set() for d in self.drivers) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.config.rate <= 0:
            return
        interval = 1.0 / self.config.rate
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for n in itertools.count(1):
            # An absolute schedule keeps the rate steady however long each spawn takes.
            next_at += interval
            if len(self.passengers) >= self.config.passenger_cap:
                self.counters.throttled += 1  # a stalled engine must not grow tasks without bound
            else:
                p = DemoPassenger(f"p-{n:03d}", f"ride-{self.run_tag}-{n}", self.config.url,
                                  self.counters, self.rng)
                task = loop.create_task(p.run())
                self.passengers.add(task)
                task.add_done_callback(self.passengers.discard)
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_every)
            print(self.counters.status_line(time.monotonic() - self.started), flush=True)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        """Cancels everyone; each client closes its socket on the way out."""
        everything = tasks + list(self.passengers)
        for t in everything:
            t.cancel()
        if everything:
            _done, pending = await asyncio.wait(everything, timeout=SHUTDOWN_GRACE_S)
            if pending:
                log.warning("%d clients did not close in time", len(pending))
        # Any socket left behind by a client that ran out of time is closed when the process exits.


async def _first(*aws: Any) -> None:
    """Waits for the first of `aws` to finish and cancels the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()


# ---- CLI --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dgdo_apps.demo",
                                description="Simulated Dushanbe drivers and passengers for DG Do.")
    p.add_argument("--url", default="ws://127.0.0.1:8765", help="the sidecar's base WebSocket URL")
    p.add_argument("--drivers", type=int, default=20, metavar="N", help="simulated drivers (default 20)")
    p.add_argument("--rate", type=float, default=2.0, metavar="R",
                   help="passenger ride requests per second (default 2, i.e. one every 0.5 s)")
    p.add_argument("--duration", type=float, default=0.0, metavar="S",
                   help="stop after S seconds (0 = run until signaled)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible positions and choices")
    p.add_argument("--max-passengers", type=int, default=0, metavar="M",
                   help="cap on concurrently active passengers (default 4 x drivers)")
    p.add_argument("--quiet", action="store_true", help="no periodic status lines (the summary is still printed)")
    p.add_argument("--log-level", default="WARNING", help="logging level (DEBUG shows every error reply)")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--cafile", default=None, metavar="PEM",
                       help="wss://: verify the server against these CA certificates (default: the system's)")
    trust.add_argument("--pin-cert", default=None, metavar="PEM",
                       help="wss://: trust exactly this certificate (the server's own, e.g. self-signed), "
                            "whatever host name it names")
    return p


def parse_config(argv: list[str] | None = None) -> tuple[DemoConfig, str]:
    args = build_parser().parse_args(argv)
    if args.drivers < 0 or args.rate < 0 or args.duration < 0 or args.max_passengers < 0:
        build_parser().error("--drivers, --rate, --duration and --max-passengers must not be negative")
    config = DemoConfig(url=args.url, drivers=args.drivers, rate=args.rate, duration=args.duration,
                        seed=args.seed, quiet=args.quiet, max_passengers=args.max_passengers)
    try:
        if args.cafile:
            client.use_tls(client.cafile_context(args.cafile))
        elif args.pin_cert:
            client.use_tls(client.pinned_context(args.pin_cert))
    except (OSError, ValueError) as e:
        build_parser().error(f"cannot use the certificate: {e}")
    return config, args.log_level


async def amain(config: DemoConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if not config.quiet:
        print(f"[demo] {config.drivers} drivers, {config.rate:g} passengers/s against {config.url}", flush=True)
    return await Fleet(config).run(stop)


def main(argv: list[str] | None = None) -> int:
    lifetime.die_with_parent_from_env()  # started by `dgdo run`: end with it, even after its kill -9
    config, level = parse_config(argv)
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("picows").setLevel(logging.WARNING)  # it logs every connect at INFO
    return uvloop.run(amain(config))


if __name__ == "__main__":
    sys.exit(main())
