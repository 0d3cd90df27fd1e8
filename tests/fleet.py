"""A recording fleet for the fault tests: drivers and passengers that speak the public protocol
like real apps, survive what a crash does to them, and check as they go what a crash must not break.

Every member is one app identity (role + id) on the independent `websockets` client. It keeps
the highest `seq` it has processed across its connections, reconnects with `?last_seq=` after a
drop, and retries a command that got `engine_unavailable` (or no answer) with the same request
id, as an app would. The shared `Ledger` collects violations:

* a reliable message (order_update, new_order, cancel_order) whose seq is not the previous + 1,
  unless a `welcome` with `resumed: false` bridged the gap with a snapshot (counted apart), or
  the engine restarted in between (each restart jumps the numbering RECOVERY_GAP up: a gap of a
  whole number of those is no loss, counted apart);
* a request id answered with two different order ids (a duplicated order);
* an order id acknowledged to two passengers, or an update for an order that is not the
  recipient's (a reused id);
* a driver offered an order or bound to a second one while it holds a trip (double booking).

Drivers accept most offers after a short think, reject some, and then drive the trip through
arrived, started and completed, each step driven by the `order_update` the engine sends back.
Passengers request one ride per connection and wait for its end, reconnecting between rides.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from wsclient import with_token

RECOVERY_GAP = 2**32  # engine/src/core/core.hpp kRecoveryGap: what seqs jump by at each engine restart

RELIABLE = frozenset({"order_update", "new_order", "cancel_order"})
TERMINAL = frozenset({"completed", "canceled", "no_driver"})
RETRYABLE = frozenset({"engine_unavailable", "overloaded"})
REPLY_TIMEOUT_S = 3.0  # a healthy engine answers in microseconds; a dead one never does
RETRY_PAUSE_S = 0.1  # an app's back-off between retries; the stack is expected to be back soon
CENTER = (38.5610, 68.7860)


@dataclass
class Ledger:
    """What the whole fleet saw: violations and the orders' fates."""

    violations: list[str] = field(default_factory=list)
    owner: dict[int, str] = field(default_factory=dict)  # order id -> passenger (from acks)
    by_request: dict[tuple[str, str], int] = field(default_factory=dict)  # (passenger, request id) -> order
    final: dict[int, str] = field(default_factory=dict)  # order id -> terminal status its passenger saw
    completed_trips: int = 0
    bridged: int = 0  # reconnects answered with resumed: false (a snapshot bridged the gap)
    resumed: int = 0  # reconnects answered with resumed: true
    jumped: int = 0  # seqs that skipped an engine restart's jump (never handed out: no loss)
    replayed: int = 0  # reliable messages that reached a member through a resume replay

    def violation(self, text: str) -> None:
        self.violations.append(text)


class Unanswered(Exception):
    """A command got no reply in time, or its connection went away before the reply."""


class Member:
    """One app identity: one connection at a time, its seq bookkeeping across connections."""

    def __init__(self, base_url: str, role: str, app_id: str, ledger: Ledger) -> None:
        self.base_url = base_url
        self.role = role
        self.app_id = app_id
        self.ledger = ledger
        self.last_seq: int | None = None
        self.ws: ClientConnection | None = None
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self._replay_until = 0  # seqs up to this one arrive as a resume replay
        self._connecting = asyncio.Lock()  # one (re)connect at a time, whoever finds the connection gone
        self._sends: set[asyncio.Future[None]] = set()

    @property
    def name(self) -> str:
        return f"{self.role} {self.app_id}"

    async def connect(self, deadline_s: float = 60.0) -> None:
        """Connects (retrying while the sidecar is down) and processes the welcome."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s
        url = f"{self.base_url}/ws/{self.role}/{self.app_id}"
        while True:
            full = with_token(url)
            if self.last_seq is not None:
                full += f"&last_seq={self.last_seq}"
            try:
                ws = await connect(full, open_timeout=5, max_queue=None)
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
                break
            except (OSError, InvalidHandshake, InvalidStatus, ConnectionClosed, TimeoutError):
                if loop.time() > give_up:
                    raise
                await asyncio.sleep(RETRY_PAUSE_S)  # the sidecar is restarting: an app retries
        if welcome.get("type") != "welcome":
            self.ledger.violation(f"{self.name}: first message {welcome.get('type')!r}, not welcome")
        elif self.last_seq is None:
            self.last_seq = welcome["seq"]  # a first session: what follows is numbered after this
        elif welcome["resumed"]:
            self.ledger.resumed += 1
            self._replay_until = welcome["seq"]
        else:
            self.ledger.bridged += 1
            self.last_seq = welcome["seq"]  # the snapshot that follows shows the truth
        self.ws = ws
        self._reader = asyncio.create_task(self._read(ws))

    async def reconnect(self, deadline_s: float = 60.0) -> bool:
        """Connects if the connection is gone; True when this call made the new connection.

        Whoever needs the connection (a command, the role's loop) calls this: a command never
        waits for someone else to reconnect, since that someone may be the very task waiting."""
        async with self._connecting:
            if self.ws is not None:
                return False
            await self.connect(deadline_s)
            return True

    async def after_reconnect(self) -> None:
        """What the role says on a new connection (drivers: where they are, that they are online)."""

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._receive(json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            if self.ws is ws:
                self.ws = None
            for fut in self.replies.values():
                if not fut.done():
                    fut.set_exception(Unanswered("connection closed"))

    def _receive(self, m: dict[str, Any]) -> None:
        t = m.get("type")
        if t in ("ack", "error") and "id" in m:
            fut = self.replies.get(str(m["id"]))
            if fut is not None and not fut.done():
                fut.set_result(m)
            return
        if t in RELIABLE:
            seq = m.get("seq")
            assert self.last_seq is not None
            if isinstance(seq, int) and seq > self.last_seq + 1 and (seq - self.last_seq - 1) % RECOVERY_GAP == 0:
                self.ledger.jumped += 1
            elif seq != self.last_seq + 1:
                self.ledger.violation(f"{self.name}: {t} seq {seq} after {self.last_seq} ({m})")
            if isinstance(seq, int) and seq > self.last_seq:
                self.last_seq = seq
                if seq <= self._replay_until:
                    self.ledger.replayed += 1
        self.on_message(m)

    def on_message(self, m: dict[str, Any]) -> None:  # the role's logic
        pass

    async def command(self, message: dict[str, Any], request_id: str | None = None,
                      deadline_s: float = 60.0) -> dict[str, Any]:
        """Sends until answered with anything but a retryable error; the same request id every time."""
        rid = request_id or f"c{next(self._ids)}"
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s
        while True:
            try:
                if self.ws is None and await self.reconnect(max(0.1, give_up - loop.time())):
                    await self.after_reconnect()
                reply = await self._request({**message, "id": rid})
                if reply["type"] == "ack" or reply.get("code") not in RETRYABLE:
                    return reply
            except (Unanswered, ConnectionClosed, TimeoutError):
                pass
            if loop.time() > give_up:
                raise TimeoutError(f"{self.name}: {message['type']} {rid} never answered")
            await asyncio.sleep(RETRY_PAUSE_S)

    async def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        ws = self.ws
        if ws is None:
            raise Unanswered("not connected")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[message["id"]] = fut
        try:
            await ws.send(json.dumps(message))
            return await asyncio.wait_for(fut, REPLY_TIMEOUT_S)
        finally:
            self.replies.pop(message["id"], None)

    def tell(self, message: dict[str, Any]) -> None:
        """Fire and forget (positions): lost while disconnected, as latest-wins data may be."""
        ws = self.ws
        if ws is not None:
            task = asyncio.ensure_future(_quiet(ws.send(json.dumps(message))))
            self._sends.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._sends.discard)


async def _quiet(aw: Any) -> None:
    with contextlib.suppress(Exception):
        await aw


class Driver(Member):
    """Online near the centre; accepts most offers and drives each trip to its end."""

    def __init__(self, base_url: str, app_id: str, ledger: Ledger, rng: random.Random) -> None:
        super().__init__(base_url, "driver", app_id, ledger)
        self.rng = rng
        self.trip: int | None = None
        self.offer: int | None = None
        self.pos = (CENTER[0] + rng.uniform(-0.004, 0.004), CENTER[1] + rng.uniform(-0.004, 0.004))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stepped: set[tuple[int, str]] = set()  # a step is sent once; its retries are command()'s
        self.stopping = False

    async def run(self, stop: asyncio.Event) -> None:
        await self.connect()
        await self._announce()
        while not stop.is_set():
            if self.ws is None and await self.reconnect():  # dropped (the sidecar died): resume, say who we are
                await self.after_reconnect()
            lat, lon = self.pos
            self.pos = (lat + self.rng.uniform(-0.0002, 0.0002), lon + self.rng.uniform(-0.0002, 0.0002))
            self.tell({"type": "driver_location", "lat": self.pos[0], "lon": self.pos[1]})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        self.stopping = True
        for t in list(self._tasks):
            t.cancel()
        await self.close()

    async def after_reconnect(self) -> None:
        await self._announce()

    async def _announce(self) -> None:
        await self.command({"type": "driver_location", "lat": self.pos[0], "lon": self.pos[1]})
        await self.command({"type": "driver_status", "status": "online"})

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def on_message(self, m: dict[str, Any]) -> None:
        t = m.get("type")
        if t == "new_order":
            oid = m["order_id"]
            if self.trip is not None and self.trip != oid:
                self.ledger.violation(f"{self.name}: offered order {oid} while on trip {self.trip}")
            if oid != self.trip:
                self.offer = oid
                self._spawn(self._answer_offer(oid))
        elif t == "cancel_order":
            if self.offer == m["order_id"]:
                self.offer = None
            if self.trip == m["order_id"]:
                self.trip = None
        elif t == "order_update":
            self._on_update(m["order_id"], m["status"])

    def _on_update(self, oid: int, status: str) -> None:
        if status in TERMINAL or status == "searching":  # searching: the trip went back to search
            if self.trip == oid:
                self.trip = None
                if status == "completed":
                    self.ledger.completed_trips += 1
            if self.offer == oid:
                self.offer = None
            return
        if self.trip is not None and self.trip != oid:
            self.ledger.violation(f"{self.name}: bound to order {oid} while on trip {self.trip}")
        self.trip = oid
        if self.offer == oid:
            self.offer = None
        step = {"accepted": "order_arrived", "arriving": "order_arrived", "arrived": "trip_start",
                "started": "trip_complete"}.get(status)
        if step is not None and (oid, step) not in self._stepped:
            self._stepped.add((oid, step))
            self._spawn(self._step(oid, step))

    async def _answer_offer(self, oid: int) -> None:
        await asyncio.sleep(self.rng.uniform(0.05, 0.6))  # the driver reads the offer
        if self.offer != oid:
            return
        kind = "order_accept" if self.rng.random() < 0.85 else "order_reject"
        with contextlib.suppress(TimeoutError):
            await self.command({"type": kind, "order_id": oid})
        # conflict / not_found: the offer expired or was withdrawn meanwhile; the updates tell.

    async def _step(self, oid: int, kind: str) -> None:
        await asyncio.sleep(self.rng.uniform(0.05, 0.4))  # driving, boarding
        if self.trip != oid or self.stopping:
            return
        with contextlib.suppress(TimeoutError):
            await self.command({"type": kind, "order_id": oid})
        # conflict: already applied before a crash ate the reply; the order_update tells.


class Passenger(Member):
    """Requests one ride per connection and waits for its end."""

    def __init__(self, base_url: str, app_id: str, ledger: Ledger, rng: random.Random) -> None:
        super().__init__(base_url, "passenger", app_id, ledger)
        self.rng = rng
        self.mine: set[int] = set()
        self.ended: dict[int, asyncio.Event] = {}
        self.rides = 0

    def on_message(self, m: dict[str, Any]) -> None:
        if m.get("type") != "order_update":
            return
        oid = m["order_id"]
        if oid not in self.mine:
            owner = self.ledger.owner.get(oid)
            if owner not in (None, self.app_id):
                self.ledger.violation(f"{self.name}: update for order {oid}, which is {owner}'s")
            self.mine.add(oid)  # a snapshot may name an order whose ack a crash ate
        if m["status"] in TERMINAL:
            self.ledger.final[oid] = m["status"]
            self.ended.setdefault(oid, asyncio.Event()).set()

    async def run(self, stop: asyncio.Event, ride_timeout_s: float = 90.0) -> None:
        while not stop.is_set():
            await self.reconnect()
            self.rides += 1
            rid = f"r{self.rides}"
            pickup = {"lat": CENTER[0] + self.rng.uniform(-0.003, 0.003),
                      "lon": CENTER[1] + self.rng.uniform(-0.003, 0.003)}
            reply = await self.command({"type": "ride_request", "pickup": pickup,
                                        "dropoff": {"lat": 38.575, "lon": 68.795}}, request_id=rid)
            if reply["type"] != "ack":
                self.ledger.violation(f"{self.name}: ride_request {rid} refused: {reply}")
                await self.close()
                continue
            oid = reply["order_id"]
            known = self.ledger.by_request.setdefault((self.app_id, rid), oid)
            if known != oid:
                self.ledger.violation(f"{self.name}: request {rid} gave orders {known} and {oid}")
            owner = self.ledger.owner.setdefault(oid, self.app_id)
            if owner != self.app_id:
                self.ledger.violation(f"{self.name}: order id {oid} reused (was {owner}'s)")
            self.mine.add(oid)
            ended = self.ended.setdefault(oid, asyncio.Event())
            await self._until(ended, ride_timeout_s)
            await self.close()

    async def _until(self, ended: asyncio.Event, timeout_s: float) -> None:
        """Waits for the ride to end, reconnecting with last_seq whenever the connection drops."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while not ended.is_set():
            left = give_up - loop.time()
            if left <= 0:
                return  # the caller's final check reports the order as not ended
            if self.ws is None:
                await self.reconnect()
                continue
            waiters = [asyncio.ensure_future(ended.wait()), asyncio.ensure_future(self._dropped())]
            _done, pending = await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()

    async def _dropped(self) -> None:
        reader = self._reader
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(reader)


@dataclass
class Fleet:
    base_url: str
    drivers: int = 6
    passengers: int = 8
    seed: int = 7
    ledger: Ledger = field(default_factory=Ledger)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self.driver_members = [Driver(self.base_url, f"fd{i}", self.ledger, random.Random(rng.random()))
                               for i in range(self.drivers)]
        self.passenger_members = [Passenger(self.base_url, f"fp{i}", self.ledger, random.Random(rng.random()))
                                  for i in range(self.passengers)]

    def open_offers(self) -> int:
        return sum(1 for d in self.driver_members if d.offer is not None)

    def unfinished(self) -> list[int]:
        """Acknowledged orders whose passenger has not seen them end."""
        return sorted(oid for oid in self.ledger.owner if oid not in self.ledger.final)
