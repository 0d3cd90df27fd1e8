"""A sidecar worker's attachment to the engine: control socket, two rings, two doorbells.

Attach (include/dgdo/control.h): connect the engine's UNIX SOCK_SEQPACKET
socket (a path, or an abstract "@name"), send hello, receive the two
doorbell eventfds and the two ring memfds. The rings are mapped and their
fds closed at once: the mappings alone keep them. Then:

* inbound (apps -> engine): `publish()` frames records into a pending buffer
  and one flush per event-loop turn writes them all with one cffi call; the
  engine's doorbell is rung only when the engine has parked.
* outbound (engine -> apps): the worker doorbell is an `add_reader` fd; each
  wake drains the out ring in batches (one cffi call each) and hands the
  records to `on_records`, then parks again, or first polls the ring for a
  while (`idle_spin_us`, sidecar/engine/idle.py: spin, yield, then park) when the
  operator gives it a budget. After a flush that holds a record the engine answers at
  once (`reply_due`: a command, or a position its passenger on this worker awaits), it
  polls the out ring for that answer instead of parking, yielding the CPU between polls,
  for as long as recent answers took (`idle.ReplyBudget`, capped by `reply_spin_us`).
* the control socket is watched too: EOF means the engine died. The link
  then reports `attached = False` and keeps trying to attach again, unless
  the engine refused our worker id (another live sidecar has it): that is
  final (`on_refused`), never retried in a loop.
* liveness: a stopped or wedged engine keeps its socket open, so a timer
  reads the out ring's producer heartbeat (the engine beats every
  DGDO_CTL_HEARTBEAT_MS): silent longer than `engine_timeout_s` and the link
  reports `available = False` (commands are refused at once) until the
  beats return. The same timer stores this worker's own heartbeat in the out
  ring's consumer slot (ring.h CONSUMER_HB; attach stores the first), a few
  times a second rather than at every park: a mark for whoever inspects the
  segment. The engine itself learns of a dead worker from its control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable

from sidecar.engine import ring
from sidecar.engine.idle import IdleStrategy, ReplyBudget
from sidecar.engine.records import ALIGN, ALIGN_ZEROS, HEADER_SIZE, PACK_HEADER
from sidecar.engine.ring import Consumer, Producer, Segment

log = logging.getLogger("dgdo.link")

HELLO = struct.Struct("<IHHiI")
ATTACH = struct.Struct("<IHHiiQQQ")
CTL_MAGIC = ring.lib.DGDO_CTL_MAGIC
CTL_VERSION = ring.lib.DGDO_CTL_VERSION
CTL_NFDS = ring.lib.DGDO_CTL_NFDS
FD_ENGINE_BELL = ring.lib.DGDO_CTL_FD_ENGINE_BELL
FD_WORKER_BELL = ring.lib.DGDO_CTL_FD_WORKER_BELL
FD_IN_RING = ring.lib.DGDO_CTL_FD_IN_RING
FD_OUT_RING = ring.lib.DGDO_CTL_FD_OUT_RING
HEARTBEAT_S = ring.lib.DGDO_CTL_HEARTBEAT_MS / 1000
ONE = (1).to_bytes(8, "little")
if HELLO.size != ring.sizeof("dgdo_ctl_hello") or ATTACH.size != ring.sizeof("dgdo_ctl_attach"):
    raise ImportError("control.h layout differs between Python and C")

MAX_BACKLOG_BYTES = 1024 * 1024  # ~9k commands waiting for ring space; beyond it new commands are refused
MAX_BACKLOG_AGE_S = 1.0  # a backlog that has not drained for this long means the engine is not keeping up
# After publishing a command (or a position the engine forwards to a passenger connected here:
# session/core.py, ToEngine.reply_due), poll the out ring before parking: the answer comes within
# microseconds of the engine's turn, and catching it here saves the eventfd wake-up of a parked
# uvloop reader (~50-100 µs on a small VM). This is the cap; the spin itself lasts what recent
# answers took (idle.ReplyBudget). Other positions never spin.
REPLY_SPIN_US = 250.0
CORR = struct.Struct("<Q")
CORR_OFFSET = ring.RECORD_HEADER + 8  # dgdo_in_meta.corr, inside a framed inbound record
# An engine whose heartbeat is older than this is unavailable: 20 missed beats, far beyond a
# busy loop's jitter, and still short enough that no app waits long on a hung engine.
ENGINE_TIMEOUT_S = 2.0


def socket_address(control: str) -> str:
    """The address socket.connect() takes for a control name: "@name" is Linux's abstract "\\0name"."""
    return "\0" + control[1:] if control.startswith("@") else control


class WorkerIdTaken(Exception):
    """The engine refused the attach (-EBUSY): another live sidecar holds this worker id. Not retried:
    two sidecars with one id would take turns forever; the process exits and its supervisor
    (systemd's Restart=, `dgdo run`) decides when to try again."""

    def __init__(self, worker: int, holder_pid: int) -> None:
        super().__init__(f"worker id {worker} is already attached to the engine (pid {holder_pid}): "
                         "give each worker its own --worker")
        self.worker = worker
        self.holder_pid = holder_pid


class EngineUnavailable(Exception):
    """No engine attached: the command was not taken."""


class Overloaded(Exception):
    """The engine's ring stayed full: the command was not taken (nothing already queued is dropped)."""


class EngineLink:
    """Args:
    control_path: the engine's control socket.
    worker: this worker's id (1-65535).
    on_records: called with (consumer, nbytes) after each drain that copied records.
    on_state: called with True on attach and False on detach.
    engine_timeout_s: heartbeat silence after which an attached engine counts as unavailable.
    on_available: called with False when the attached engine falls silent, True when it beats again.
    idle_spin_us: after work, poll the out ring this long before parking (0: park at once).
    on_refused: called once if the engine refuses our worker id (another live sidecar holds it).
    """

    def __init__(
        self,
        control_path: str,
        worker: int,
        on_records: Callable[[Consumer, int], None],
        on_state: Callable[[bool], None] = lambda up: None,
        reply_spin_us: float = REPLY_SPIN_US,
        engine_timeout_s: float = ENGINE_TIMEOUT_S,
        on_available: Callable[[bool], None] = lambda up: None,
        idle_spin_us: float = 0.0,
        on_refused: Callable[[WorkerIdTaken], None] = lambda e: None,
    ) -> None:
        self.control_path = control_path
        self.reply_spin_ns = int(reply_spin_us * 1000)
        self.reply_budget = ReplyBudget(reply_spin_us)
        self._reply_due = False  # a command in this flush: the engine answers within microseconds
        self._due_since = 0  # perf_counter_ns of the last reply-due flush not answered yet (0: none)
        self.spins = self.spin_hits = 0
        self.worker = worker
        self.on_records = on_records
        self.on_state = on_state
        self.attached = False
        self.available = False  # attached, and its heartbeat younger than engine_timeout_s
        self.engine_timeout_ns = int(engine_timeout_s * 1e9)
        # Look a few times per timeout (detection within ~1.25 x the timeout), never slower than 4/s.
        self._watch_interval = min(0.25, max(0.02, engine_timeout_s / 4))
        self._watch: asyncio.TimerHandle | None = None
        self.on_available = on_available
        self.on_refused = on_refused
        self.refused: WorkerIdTaken | None = None
        self.epoch = 0
        self.engine_pid = 0
        self.engine_restarts = 0  # attaches to a new engine run (another epoch) after the first
        self.in_capacity = self.out_capacity = 0  # ring data bytes, as the engine made them
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._in_seg: Segment | None = None
        self._out_seg: Segment | None = None
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        self._engine_bell = -1
        self._worker_bell = -1
        self._pending = bytearray()
        self._backlog_since = 0.0  # monotonic time the ring first refused what is pending
        self._latest: dict[object, tuple[int, bytes]] = {}  # coalesced positions waiting behind a backlog
        self.salvaged_corrs: set[int] = set()  # commands carried over from a dead engine's ring
        self._flush_scheduled = False
        self._retry: asyncio.TimerHandle | None = None
        self._reattach_task: asyncio.Task[None] | None = None
        self._closed = False
        self._up = asyncio.Event()
        self.wakeups = 0
        self.idle = IdleStrategy(idle_spin_us, self._poll_ring, self._drain, self._unpark, self._loop)

    # ---- attach / detach -------------------------------------------------------

    def start(self) -> None:
        """Starts attaching in the background (once); see wait_attached()."""
        if self._reattach_task is None or self._reattach_task.done():
            self._reattach_task = self._loop.create_task(self.attach_forever())

    async def wait_attached(self) -> None:
        await self._up.wait()

    async def attach(self, timeout: float = 5.0) -> None:
        """Attaches once. Raises OSError / TimeoutError / ring.RingError on failure."""
        if self.attached:
            return
        loop = self._loop
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        fds: list[int] = []
        try:
            await asyncio.wait_for(loop.sock_connect(sock, socket_address(self.control_path)), timeout)
            sock.send(HELLO.pack(CTL_MAGIC, CTL_VERSION, self.worker, os.getpid(), 0))
            readable = loop.create_future()
            loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
            try:
                await asyncio.wait_for(readable, timeout)
            finally:
                loop.remove_reader(sock.fileno())
            data, fds, _flags, _addr = socket.recv_fds(sock, ATTACH.size, CTL_NFDS, socket.MSG_CMSG_CLOEXEC)
            if len(data) != ATTACH.size:
                raise ConnectionError(f"bad attach reply ({len(data)} bytes)")
            magic, version, worker, pid, status, epoch, in_cap, out_cap = ATTACH.unpack(data)
            if magic != CTL_MAGIC:
                raise ConnectionError("the control socket's answer is not a DG Do engine's (bad magic)")
            if version != CTL_VERSION:  # its records would be misread: see control.h
                raise ConnectionError(f"the engine speaks control version {version}, this sidecar {CTL_VERSION}: "
                                      "run an engine and sidecars of one release")
            if worker != self.worker:
                raise ConnectionError(f"attach reply for worker {worker}, not {self.worker}")
            if status == -errno.EBUSY:
                raise WorkerIdTaken(worker, pid)
            if status != 0:
                raise ConnectionError(f"engine refused attach: {os.strerror(-status) if status < 0 else status}")
            if len(fds) != CTL_NFDS:
                raise ConnectionError(f"attach reply with {len(fds)} fds, not {CTL_NFDS}")
            in_seg = Segment.from_fd(fds[FD_IN_RING], epoch=epoch, label=f"w{worker}.in")
            try:
                out_seg = Segment.from_fd(fds[FD_OUT_RING], epoch=epoch, label=f"w{worker}.out")
            except BaseException:
                in_seg.close()
                raise
        except BaseException:
            for fd in fds:
                os.close(fd)
            sock.close()
            raise
        # The mappings keep the rings; their fds would only keep them longer than us.
        os.close(fds[FD_IN_RING])
        os.close(fds[FD_OUT_RING])
        self._sock = sock
        self._in_seg, self._out_seg = in_seg, out_seg
        self.producer, self.consumer = Producer(in_seg), Consumer(out_seg)
        self.consumer.heartbeat(time.monotonic_ns())  # then at every look at the engine's (_check_heartbeat)
        self._engine_bell, self._worker_bell = fds[FD_ENGINE_BELL], fds[FD_WORKER_BELL]
        os.set_blocking(self._engine_bell, False)
        os.set_blocking(self._worker_bell, False)
        if self.epoch and epoch != self.epoch:
            self.engine_restarts += 1  # a new engine run, not the same one again
        self.epoch, self.engine_pid = epoch, pid
        self.in_capacity, self.out_capacity = in_cap, out_cap
        loop.add_reader(self._worker_bell, self._on_doorbell)
        loop.add_reader(sock.fileno(), self._on_control)
        self.attached = self.available = True  # the engine beats at attach: its heartbeat is fresh
        self._watch = loop.call_later(self._watch_interval, self._check_heartbeat)
        self._up.set()
        log.info("= attached to engine pid %d epoch %d (worker %d)", pid, epoch, self.worker)
        self.on_state(True)
        self._schedule_flush()
        self._drain()  # records the engine queued before we watched the doorbell

    async def attach_forever(self, interval: float = 0.2) -> None:
        """Attaches, retrying until it succeeds or the link is closed.

        A refusal for a worker id taken (WorkerIdTaken) ends the attempts: it is kept in `refused`
        and reported through `on_refused`.
        """
        warned = False
        while not self._closed and not self.attached:
            try:
                await self.attach()
                return
            except WorkerIdTaken as e:
                log.error("! %s", e)
                self.refused = e
                self.on_refused(e)
                return
            except (OSError, TimeoutError, ConnectionError, ring.RingError) as e:
                if not warned:
                    log.warning("! engine not reachable at %s (%s); retrying", self.control_path, e)
                    warned = True
                await asyncio.sleep(interval)

    def _detach(self) -> None:
        if not self.attached:
            return
        # What the engine committed before it died still counts: an answer to a command it took may
        # sit in the out ring with no doorbell rung (killed between its write and its wake-up). Hand
        # it over now, before the commands still in flight are failed as engine_unavailable.
        self._hand_over()
        self.attached = self.available = False
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._up.clear()
        loop = self._loop
        with contextlib.suppress(Exception):
            loop.remove_reader(self._worker_bell)
        if self._sock is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for fd in (self._engine_bell, self._worker_bell):
            if fd >= 0:
                os.close(fd)
        self._engine_bell = self._worker_bell = -1
        if self.producer is not None:
            self._salvage(self.producer)
        self.producer = self.consumer = None
        for seg in (self._in_seg, self._out_seg):
            if seg is not None:
                seg.close()
        self._in_seg = self._out_seg = None
        if self._closed:  # our own shutdown (Ctrl-C, SIGTERM): nothing went wrong
            log.info("= detached from the engine")
        else:
            log.warning("! engine detached")
        self.on_state(False)

    @property
    def heartbeat_age_ns(self) -> int | None:
        """How long ago the attached engine last beat; None when detached."""
        seg = self._out_seg
        if not self.attached or seg is None:
            return None
        return max(0, time.monotonic_ns() - seg.producer_heartbeat_ns())

    def _check_heartbeat(self) -> None:
        self._watch = None
        age = self.heartbeat_age_ns
        if age is None:
            return
        if self.consumer is not None:
            # Ours on the out ring (ring.h CONSUMER_HB), beaten as often as we look at the engine's,
            # not at every park: that was a second call into the ring for every batch at idle.
            self.consumer.heartbeat(time.monotonic_ns())
        alive = age <= self.engine_timeout_ns
        if alive != self.available:
            self.available = alive
            if alive:
                log.warning("= engine pid %d beats again: available", self.engine_pid)
            else:
                log.error("! engine pid %d silent for %d ms (timeout %d ms): unavailable until it beats again",
                          self.engine_pid, age // 1_000_000, self.engine_timeout_ns // 1_000_000)
            self.on_available(alive)
        self._watch = self._loop.call_later(self._watch_interval, self._check_heartbeat)

    def _salvage(self, producer: Producer) -> None:
        """Keeps the records the dead engine never consumed, to publish them to the next one first,
        ahead of the backlog (what a full ring had not taken yet), which is kept too.

        `salvaged_corrs` names the commands of both: the next engine runs and answers them, so none
        may be failed as engine_unavailable ("retry") now. The backlog's age restarts: the next
        engine has not fallen behind, and a stale age would refuse its first records (`publish()`),
        the sessions' announcements and state among them. (So positions no longer wait aside in
        `_latest`: those that did join the backlog, and a newer one cannot be overtaken by them.)
        """
        saved = producer.unconsumed()
        if saved:
            self._pending[0:0] = saved
            log.warning("= %d bytes of commands kept for the next engine", len(saved))
        pending = self._pending
        for type_, body in self._latest.values():  # behind the backlog, ahead of anything newer
            ring.frame(pending, type_, body)
        self._latest.clear()
        corrs = set()
        off = 0
        while off < len(pending):
            length = int.from_bytes(pending[off : off + 4], "little")
            corr = CORR.unpack_from(pending, off + CORR_OFFSET)[0]
            if corr:
                corrs.add(corr)
            off += ring.aligned(length)
        self.salvaged_corrs = corrs
        self._backlog_since = 0.0

    def _on_control(self) -> None:
        try:
            data = self._sock.recv(256) if self._sock else b""
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EOF: the engine is gone
            self._detach()
            if not self._closed:
                self.start()

    def close(self) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._reattach_task is not None:
            self._reattach_task.cancel()
        self._detach()

    # ---- inbound: apps -> engine --------------------------------------------------

    def publish(self, type_: int, body: bytes, reply_due: bool = False, bounded: bool = True) -> None:
        """Queues one record for the engine; it is written at the end of this loop turn.

        Records are written in the order published and never dropped once taken.
        `reply_due` marks a command the engine answers at once: the flush then spins
        briefly for the answer instead of parking. `bounded` False: taken even behind a
        backlog past its bounds, for a record nobody could send again (a session's open or
        close: the engine would keep routing to, and offering rides to, a connection gone).

        Raises:
            EngineUnavailable: no engine attached.
            Overloaded: the ring has been full too long or the backlog is at its cap (`bounded` only).
        """
        if not self.attached:
            raise EngineUnavailable("engine not attached")
        if bounded and self._backlog_since and (
            len(self._pending) >= MAX_BACKLOG_BYTES
            or time.monotonic() - self._backlog_since > MAX_BACKLOG_AGE_S
        ):
            raise Overloaded("engine is not keeping up; retry shortly")
        ring.frame(self._pending, type_, body)
        self._reply_due |= reply_due
        self._schedule_flush()

    def publish_latest(self, key: object, type_: int, body: bytes, reply_due: bool = False) -> None:
        """Like publish(), for latest-wins data (positions): behind a backlog only the newest per key waits.

        Raises:
            EngineUnavailable: no engine attached.
        """
        if not self.attached:
            raise EngineUnavailable("engine not attached")
        if self._backlog_since:
            self._latest[key] = (type_, body)
            return
        # ring.frame(self._pending, type_, body), written out: a call costs ~450 instructions a position.
        pending = self._pending
        length = HEADER_SIZE + len(body)
        pending += PACK_HEADER(length, type_)
        pending += body
        if length % ALIGN:
            pending += ALIGN_ZEROS[length % ALIGN]
        if reply_due:
            self._reply_due = True
        if not self._flush_scheduled:  # (_schedule_flush, without its call for every position)
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def flush(self) -> None:
        """Writes what is pending now, instead of at the end of this loop turn (the caller batched already)."""
        self._flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._pending:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        p = self.producer
        if p is None or not self._pending:
            return
        n, status = p.publish(self._pending)
        if n:
            del self._pending[:n]
        if not self._pending and self._latest:
            for type_, body in self._latest.values():
                ring.frame(self._pending, type_, body)
            self._latest.clear()
            n2, status = p.publish(self._pending)
            del self._pending[:n2]
            n += n2
        if n and p.should_wake():
            os.write(self._engine_bell, ONE)
        if n and self._reply_due:
            self._reply_due = False
            self._due_since = time.perf_counter_ns()
            self._spin_for_reply()
        if n:
            self.idle.worked()  # the engine's answer to what we just wrote comes within microseconds
        if not self._pending:
            self._backlog_since = 0.0
        elif self._retry is None:
            # Full ring: retry soon; records stay in order and are never dropped.
            if status == ring.TOO_LARGE:
                log.error("! record over the ring's max size dropped")
                self._pending.clear()
                return
            if not self._backlog_since:
                self._backlog_since = time.monotonic()
            self._retry = self._loop.call_later(0.0005, self._retry_flush)

    def _spin_for_reply(self) -> None:
        c = self.consumer
        if c is None or self.reply_spin_ns <= 0:
            return
        self.spins += 1
        c.unpark()  # spinning: the engine need not ring our doorbell
        clock = time.perf_counter_ns
        deadline = self._due_since + self.reply_budget.budget_ns
        pending = c.pending
        # Yield between polls: on a small machine the engine we just woke may be queued on this
        # very CPU (the kernel often wakes it where its waker runs), and a spin that never gives the
        # CPU away holds off the answer it waits for. Measured on 2 vCPUs (bench/latency/passenger_path.py):
        # without the yield, answers took over 250 µs at p90 and each spin still ended in a doorbell
        # wake-up; with it, ~80-120 µs at p90 and 0.04-0.25 doorbell wake-ups per spin.
        yield_cpu = os.sched_yield
        while clock() < deadline and not pending():
            yield_cpu()
        # Checked once more after the deadline: a yield can return after the whole engine turn ran
        # (on this CPU), with the answer there; it is a hit all the same, and its time is learnt.
        if pending():
            self.spin_hits += 1
            self._answered()
        self._drain()  # drains what came, then parks again

    def _answered(self) -> None:
        """Records arrived: the answer time of the last reply-due flush, for the next spin's budget."""
        if self._due_since:
            self.reply_budget.observe(time.perf_counter_ns() - self._due_since)
            self._due_since = 0

    def _retry_flush(self) -> None:
        self._retry = None
        self._flush()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    # ---- outbound: engine -> apps -------------------------------------------------

    def _on_doorbell(self) -> None:
        self.wakeups += 1
        c = self.consumer
        if c is None:
            return
        self._answered()  # (a spin that missed: the answer took longer; the budget learns it)
        # Hand over first, then clear the eventfd: its read() is a syscall the push need not wait
        # for. No wake-up is lost: the producer rings only after we park again, which _drain()
        # does after this read. (Every engine batch comes through here at idle: no context
        # manager or second drain on the way, each a microsecond on a small VM.)
        c.unpark()
        n = c.drain()
        if n:
            self.on_records(c, n)
        if self._worker_bell >= 0:
            try:  # noqa: SIM105 (suppress() builds a context manager per batch)
                os.read(self._worker_bell, 8)
            except BlockingIOError:
                pass
        if self.idle.enabled:
            self._hand_over()
            self.idle.worked()  # more may follow: poll a while before parking
        else:
            self._drain()

    def _poll_ring(self) -> bool:
        """One poll of the idle strategy: delivers what is committed; True when there was something."""
        c = self.consumer
        if c is None or not c.pending():
            return False
        self._answered()
        self._hand_over()
        return True

    def _unpark(self) -> None:
        if self.consumer is not None:
            self.consumer.unpark()  # polling: the engine need not ring our doorbell

    def _hand_over(self) -> Consumer | None:
        """Hands every committed record to `on_records`; the consumer, or None once a handler detached us."""
        c = self.consumer
        while c is not None and (n := c.drain()):
            self.on_records(c, n)
            c = self.consumer  # a handler may have detached us
        return c

    def _drain(self) -> None:
        """Parks; records committed meanwhile (park() looks, after raising PARKED) are handed over first."""
        c = self.consumer
        while c is not None and not c.park():
            c = self._hand_over()
