"""The engine stand-in: publishes stamped engine batches to a sidecar over one transport.

    feeder.py --transport ring --control @NAME --instance NAME --cmd @NAME
    feeder.py --transport zmq|unix|http --endpoint EP --cmd PATH
    feeder.py --transport pipe --cmd PATH            (batches go to stdout)

For `ring` it plays the engine's side of include/dgdo/control.h exactly as
engine/src/loop/event_loop.cpp does: listens on the control socket, creates
the two segments (memfds) with this run's epoch, passes them and two eventfds
with SCM_RIGHTS, beats the out ring's producer heartbeat, then per batch
writes records into the out ring and rings the worker's doorbell only when
`dgdo_ring_producer_should_wake()` says it parked. It answers each session
open with a SESSION_STATE, as the engine does, so that the sidecar welcomes
its apps; between answers it parks on its own doorbell as the engine does (no
polling thread that wakes on the cores it shares with the sidecar and the clients).
For the other transports the same batch bytes go out with one send per batch.

Sockets named "@..." are Linux abstract names, as the engine's: with memfd
rings too, a feeder killed by any signal leaves nothing in /tmp or /dev/shm.
The bench runner drives it over a UNIX stream socket (--cmd): one JSON line
per phase, {"offers_per_s", "positions_per_s", "seconds", "drivers",
"passengers"}; the answer is {"batches", "offers", "positions"}. The push
bench (bench/push) sends {"cmd": "push", "passengers", "seconds"}: an order
update and a position for every passenger per pass, as fast as the sidecar
drains the ring (see run_push).
Every record is stamped (CLOCK_REALTIME, once per batch as the engine does)
immediately before the batch is handed to the transport.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import select
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

from sidecar.engine import records as R
from sidecar.engine import ring
from sidecar.engine.link import (
    ATTACH,
    CTL_MAGIC,
    CTL_NFDS,
    CTL_VERSION,
    FD_ENGINE_BELL,
    FD_IN_RING,
    FD_OUT_RING,
    FD_WORKER_BELL,
    HEARTBEAT_S,
    HELLO,
    socket_address,
)
from sidecar.shell import lifetime

ONE = (1).to_bytes(8, "little")
RING_CAPACITY = 1 << 22


class Attachment:
    """One worker's pair of rings and its doorbell, as the engine holds them."""

    def __init__(self, worker: int, producer: ring.Producer, consumer: ring.Consumer, bell: int,
                 engine_bell: int) -> None:
        self.worker = worker
        self.producer = producer
        self.consumer = consumer
        self.bell = bell  # the worker's doorbell: rung when the worker parked and a batch came
        self.engine_bell = engine_bell  # ours: the worker rings it when it publishes while we are parked
        self.wakeups = 0


class RingSender:
    """The engine's side of the worker attachments: any number of workers (ids as they come), as the
    engine takes them; `ready` once `workers` of them are attached. Records go to the worker that
    attached last (one worker: that one), except in a push run, which writes each passenger's records
    to the worker its session opened on (`sessions`, learnt from the SESSION_OPEN records)."""

    def __init__(self, control: str, instance: str, workers: int = 1) -> None:
        self.instance = instance
        self.workers = workers
        self.epoch = secrets.randbits(63) | 1
        self.lock = threading.Lock()
        self.links: dict[int, Attachment] = {}
        self.last: Attachment | None = None
        self.sessions: dict[str, int] = {}  # app id -> the worker its session opened on
        self.keep: list[object] = []
        self.attached = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # wakes the answer thread: a new link
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(socket_address(control))
        self.listener.listen(4)
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._beat, daemon=True).start()

    @property
    def producer(self) -> ring.Producer | None:
        return self.last.producer if self.last is not None else None

    @property
    def wakeups(self) -> int:
        return sum(a.wakeups for a in self.links.values())

    def _beat(self) -> None:
        """The engine's heartbeat, so the sidecar never takes this feeder for a hung engine."""
        while True:
            time.sleep(HEARTBEAT_S)
            with self.lock:
                links = list(self.links.values())
            for a in links:
                a.producer.heartbeat(time.monotonic_ns())

    def _accept(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            data = conn.recv(64)
            if len(data) != HELLO.size:
                conn.close()
                continue
            magic, version, worker, _pid, _ = HELLO.unpack(data)
            if magic != CTL_MAGIC or version != CTL_VERSION:
                conn.close()
                continue
            label = f"dgdo.{self.instance}.w{worker}"
            segs = [ring.Segment.create(RING_CAPACITY, epoch=self.epoch, label=f"{label}.{d}") for d in ("in", "out")]
            engine_bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            worker_bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            producer = ring.Producer(segs[1])
            producer.heartbeat(time.monotonic_ns())  # as the engine does at attach
            with self.lock:
                self.last = self.links[worker] = Attachment(worker, producer, ring.Consumer(segs[0]), worker_bell,
                                                            engine_bell)
                self.keep += [conn, engine_bell, *segs]
            reply = ATTACH.pack(CTL_MAGIC, CTL_VERSION, worker, os.getpid(), 0, self.epoch, RING_CAPACITY,
                                RING_CAPACITY)
            fds = [0] * CTL_NFDS
            fds[FD_ENGINE_BELL], fds[FD_WORKER_BELL] = engine_bell, worker_bell
            fds[FD_IN_RING], fds[FD_OUT_RING] = segs[0].fd, segs[1].fd
            socket.send_fds(conn, [reply], fds)
            print(f"feeder: worker {worker} attached", file=sys.stderr, flush=True)
            if len(self.links) == 1:
                threading.Thread(target=self._answer_forever, daemon=True).start()
            else:
                os.write(self.attached, ONE)

    @property
    def ready(self) -> bool:
        return len(self.links) >= self.workers

    def send(self, data: bytes) -> None:
        with self.lock:
            self._write(data)

    def _write(self, data: bytes | bytearray, to: Attachment | None = None) -> None:
        a = to or self.last
        assert a is not None
        p = a.producer
        buf = bytearray(data)
        while buf:
            n, _status = p.publish(buf)
            del buf[:n]
            if p.should_wake():
                a.wakeups += 1
                os.write(a.bell, ONE)
            if buf:
                time.sleep(0.0001)  # full ring: never drop, wait for the sidecar

    def answer(self) -> None:
        """Takes what the workers sent the engine: session opens are noted and answered, the rest ignored."""
        with self.lock:
            for a in list(self.links.values()):
                c = a.consumer
                answers = bytearray()
                while n := c.drain():
                    view, off = c.buffer, 0
                    while off < n:
                        length, type_ = ring.FRAME.unpack_from(view, off)
                        if type_ == R.T.IN_SESSION_OPEN:
                            body = view[off + ring.RECORD_HEADER : off + length]
                            actor = bytes(R.IN_SESSION.unpack(body)[5]).rstrip(b"\0").decode()
                            self.sessions[actor] = a.worker
                            ring.frame(answers, R.T.OUT_SESSION_STATE, common.session_state(body))
                        off += ring.aligned(length)
                if answers:
                    self._write(answers, a)

    def _answer_forever(self) -> None:
        """Answers the workers as the engine does: drains their rings, parks, and sleeps on the doorbells
        until a worker that published rings one (or a worker attaches). A thread that polled instead
        would wake every few ms on the cores the sidecar and the clients share, only in the ring runs."""
        while True:  # a daemon thread: it ends with the process
            self.answer()
            with self.lock:
                links = list(self.links.values())
            if not all(a.consumer.park() for a in links):
                continue  # records came in meanwhile: answer them first
            ready, _, _ = select.select([self.attached, *(a.engine_bell for a in links)], [], [])
            for fd in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(fd, 8)
            for a in links:
                a.consumer.unpark()

    def close(self) -> None:
        pass  # memfds and an abstract name: the kernel takes them back with the process


class ZmqSender:
    def __init__(self, endpoint: str) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.connect(endpoint)
        self.ready = True

    def send(self, data: bytes) -> None:
        self.sock.send(data, copy=True)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class UnixSender:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock.connect(socket_address(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.ready = True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


class PipeSender:
    """The engine writes its events to stdout; the sidecar reads the other end of the pipe."""

    def __init__(self) -> None:
        self.fd = sys.stdout.fileno()
        self.ready = True

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def close(self) -> None:
        pass


class HttpSender:
    """One keep-alive HTTP/1.1 connection, one POST per batch, waiting for each answer (like requests/httpx)."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.conn.connect()
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ready = True

    def send(self, data: bytes) -> None:
        self.conn.request("POST", "/events", body=data, headers={"Content-Type": "application/octet-stream"})
        r = self.conn.getresponse()
        r.read()

    def close(self) -> None:
        self.conn.close()


def run_phase(sender, spec: dict) -> dict:
    offers_per_s = float(spec["offers_per_s"])
    positions_per_s = float(spec.get("positions_per_s", 0))
    seconds = float(spec["seconds"])
    drivers = [common.driver_id(i) for i in range(int(spec["drivers"]))]
    passengers = [common.passenger_id(i) for i in range(int(spec["passengers"]))]
    tick = 0.001  # the engine publishes per loop turn; 1 ms turns at these rates
    offers_per_tick = offers_per_s * tick
    pos_per_tick = positions_per_s * tick
    owed_o = owed_p = 0.0
    di = pi = 0
    n_batches = n_offers = n_pos = 0
    t0 = time.monotonic()
    end = t0 + seconds
    k = 0
    while True:
        k += 1
        due = t0 + k * tick
        now = time.monotonic()
        if due >= end:
            break
        if due > now:
            time.sleep(due - now)
        owed_o += offers_per_tick
        owed_p += pos_per_tick
        no, np_ = int(owed_o), int(owed_p)
        if no == 0 and np_ == 0:
            continue
        owed_o -= no
        owed_p -= np_
        offers = [drivers[(di + i) % len(drivers)] for i in range(no)]
        positions = [passengers[(pi + i) % len(passengers)] for i in range(np_)] if passengers else []
        di += no
        pi += np_
        sender.send(common.batch(offers, positions))  # stamped inside batch(), right before the send
        n_batches += 1
        n_offers += no
        n_pos += len(positions)
    return {"batches": n_batches, "offers": n_offers, "positions": n_pos, "seconds": time.monotonic() - t0,
            "wakeups": getattr(sender, "wakeups", None)}


def run_push(sender: RingSender, spec: dict) -> dict:
    """Push throughput: one ORDER_UPDATE and one DRIVER_POSITION per passenger per pass, for `seconds`.

    A pass is built once per worker (its passengers: those whose session opened there; one worker:
    every passenger); each repeat only renumbers the order updates (seq +1 per pass: the sidecar
    drops a reliable message at or below what it delivered). A worker's next pass is written when
    it has drained half of its previous one, so that its ring is never empty (the sidecar always
    has work) and never overflows (no waiting on a full ring); each worker at its own pace.
    """
    passengers = [common.passenger_id(i) for i in range(int(spec["passengers"]))]
    with sender.lock:
        links = sorted(sender.links.values(), key=lambda a: a.worker)
        sessions = dict(sender.sessions)
    if len(links) == 1:
        placed = {links[0].worker: passengers}
    else:
        placed = {a.worker: [p for p in passengers if sessions.get(p) == a.worker] for a in links}
    pack = common._OID.pack_into
    passes: list[dict] = []
    for a in links:
        buf = bytearray()
        seq_at = []
        for i, p in enumerate(placed[a.worker]):
            seq_at.append(len(buf) + ring.RECORD_HEADER + common.ORDER_UPDATE_SEQ)
            ring.frame(buf, R.T.OUT_ORDER_UPDATE, common.order_update(p, 1_000_000 + i, 0, worker=a.worker))
            ring.frame(buf, R.T.OUT_DRIVER_POSITION, common.driver_position(p, 0, 0, worker=a.worker))
        if seq_at:
            passes.append({"link": a, "buf": buf, "seq_at": seq_at, "low": len(buf) // 2, "n": 0})
    t0 = time.monotonic()
    end = t0 + float(spec["seconds"])
    while time.monotonic() < end:
        wrote = False
        for w in passes:
            if w["n"] and w["link"].producer.depth() > w["low"]:
                continue
            w["n"] += 1
            for off in w["seq_at"]:
                pack(w["buf"], off, w["n"])
            with sender.lock:
                sender._write(w["buf"], w["link"])
            wrote = True
        if not wrote:
            time.sleep(0.0002)
    records = sum(w["n"] * len(w["seq_at"]) * 2 for w in passes)
    return {"passes": max((w["n"] for w in passes), default=0), "records": records,
            "seconds": time.monotonic() - t0,
            "per_worker": {str(w["link"].worker): {"passengers": len(w["seq_at"]), "passes": w["n"],
                                                   "records": w["n"] * len(w["seq_at"]) * 2} for w in passes},
            "unplaced": len(passengers) - sum(len(v) for v in placed.values())}


def main() -> int:
    lifetime.die_with_parent_from_env()  # the bench runner may be killed with -9: end with it
    ap = argparse.ArgumentParser()
    ap.add_argument("--transport", required=True, choices=["ring", "zmq", "unix", "pipe", "http"])
    ap.add_argument("--endpoint", default="")
    ap.add_argument("--control", default="")
    ap.add_argument("--instance", default="bench")
    ap.add_argument("--workers", type=int, default=1, help="ring: ready once this many workers attached")
    ap.add_argument("--cmd", required=True, help="UNIX socket (path or @abstract) the runner sends phase commands to")
    args = ap.parse_args()

    if args.transport == "ring":
        sender = RingSender(args.control, args.instance, args.workers)
    elif args.transport == "zmq":
        sender = ZmqSender(args.endpoint)
    elif args.transport == "unix":
        sender = UnixSender(args.endpoint)
    elif args.transport == "pipe":
        sender = PipeSender()
    else:
        sender = HttpSender(args.endpoint)

    # Nothing here needs cleaning up on the way out (memfds, abstract names): SIGTERM may end us
    # anywhere. It still exits through `finally`, for the transports' own close().
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cmd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cmd.bind(socket_address(args.cmd))
    cmd.listen(1)
    print("feeder: ready", file=sys.stderr, flush=True)
    try:
        conn, _ = cmd.accept()
        f = conn.makefile("rwb", buffering=0)
        for line in f:
            spec = json.loads(line)
            if spec.get("cmd") == "quit":
                break
            if spec.get("cmd") == "ready?":
                f.write((json.dumps({"ready": bool(sender.ready)}) + "\n").encode())
                continue
            result = run_push(sender, spec) if spec.get("cmd") == "push" else run_phase(sender, spec)
            f.write((json.dumps(result) + "\n").encode())
    finally:
        sender.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
