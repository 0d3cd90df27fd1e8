"""/metrics: one worker's figures in Prometheus text, read at scrape time.

Custom collectors read the live counters when scraped, so the hot path only increments plain
ints (and stores push latencies in a list, session/stats.py) and never touches a metrics object.

Each App has its own registry (tests run several apps in one process), holding:

* this worker's figures, every one labelled `worker` (connections and their cap, the front
  door's refusals by HTTP status and sockets dropped, messages, errors by code, push latency
  histogram, ring depths, engine restarts seen, `dgdo_build_info`);
* the engine's figures (drivers, orders, the offer-decision histogram), without a `worker` label,
  only in the registry of the worker whose id is `engine_metrics_worker` (default 1, 0: none; one
  config file shared by every worker so names exactly one). Every worker gets the same
  ENGINE_STATS, so if each exported it, a sum over N workers would count every order N times;
* the client library's process (`process_*`: CPU, memory, fds and their limit), platform
  (`python_info`) and garbage-collector collectors.

Metric names are listed, with the ones to alert on, in README "Metrics to alert on".
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sidecar.engine.records import LATENCY_BOUNDS_NS

if TYPE_CHECKING:
    from sidecar.shell.server import App

__all__ = ["CONTENT_TYPE_LATEST", "LE_BOUNDS", "Metrics"]

# The `le` label of each histogram bucket, in seconds as Prometheus writes them ("1e-05" ... "0.1", "+Inf").
LE_BOUNDS = (*(floatToGoString(b / 1e9) for b in LATENCY_BOUNDS_NS), "+Inf")


def _version() -> str:
    try:
        return dist_version("dgdo")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def histogram(name: str, doc: str, buckets: Sequence[int], sum_ns: int, labels: Sequence[str] = (),
              values: Sequence[str] = ()) -> HistogramMetricFamily:
    """A histogram family from per-bucket (not cumulative) counts on LATENCY_BOUNDS_NS, last = above all."""
    cumulative, total = [], 0
    for le, n in zip(LE_BOUNDS, buckets, strict=True):
        total += n
        cumulative.append((le, total))
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(values), cumulative, sum_value=sum_ns / 1e9)
    return family


class WorkerCollector(Collector):
    """This worker's own figures, each labelled with its worker id."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.worker = str(app.worker)
        self.version = _version()

    def collect(self) -> Iterator[Metric]:
        app, w = self.app, [self.worker]
        s, link = app.stats, app.link

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["worker"])
            family.add_metric(w, value)
            return family

        def labelled(family: CounterMetricFamily | GaugeMetricFamily,
                     values: Iterable[tuple[str, float]]) -> CounterMetricFamily | GaugeMetricFamily:
            for label, value in values:
                family.add_metric([self.worker, label], value)
            return family

        info = InfoMetricFamily("dgdo_build", "the sidecar's version", labels=["worker"])
        info.add_metric(w, {"version": self.version})
        yield info
        # (0 only with --insecure-no-auth: anyone who reaches the port connects as anyone. Alert on it.)
        yield _gauge("dgdo_auth_enabled", "1 while upgrades need a valid token, 0 with auth turned off", w,
                     int(app.auth.enabled))
        yield _gauge("dgdo_engine_attached", "1 while the engine is attached", w, int(link.attached))
        yield _gauge("dgdo_engine_available", "1 while the engine is attached and beating", w, int(link.available))
        age = link.heartbeat_age_ns
        if age is not None:
            yield _gauge("dgdo_engine_heartbeat_age_seconds", "age of the engine's last heartbeat", w, age / 1e9)
        e = app.stats.engine
        if link.attached and e.known:  # as the engine's last ENGINE_STATS said; absent while unknown
            yield _gauge("dgdo_engine_journal_writable", "0 while the engine holds because its journal cannot be "
                         "written (a full or failing disk), else 1", w, int(not e.journal_errno))
            held_ns = app.core.engine_held_ns()  # reckoned where system_stats and /healthz reckon it
            if held_ns is not None:
                hold = GaugeMetricFamily("dgdo_engine_journal_hold_seconds", "how long the engine has held, its "
                                         "journal not writable, by the error (an errno name)",
                                         labels=["worker", "error"])
                hold.add_metric([self.worker, errno.errorcode.get(e.journal_errno, str(e.journal_errno))],
                                held_ns / 1e9)
                yield hold
        yield counter("dgdo_engine_restarts", "attaches to a new engine run (another epoch) after the first",
                      link.engine_restarts)
        yield _gauge("dgdo_connections", "open WebSocket connections", w, len(app.core))
        front = app.front  # None only before App.start: nothing scrapes then
        if front is not None:
            # The effective cap: --max-connections, or what the open-files limit affords (shell/fdlimit.py).
            yield _gauge("dgdo_max_connections", "connections this worker accepts before refusing with 503", w,
                         front.max_connections)
            yield labelled(CounterMetricFamily("dgdo_http_refusals", "requests the front door refused instead of "
                                               "a page or an upgrade, by HTTP status (503: at the connection cap)",
                                               labels=["worker", "status"]),
                           ((str(status), n) for status, n in sorted(front.refused.items())))
            yield counter("dgdo_sockets_dropped", "sockets closed unanswered on accept: past the connection cap "
                          "and the handshake spare", front.dropped)
        yield _gauge("dgdo_paused_connections", "connections above their write-buffer high-water mark", w, s.paused)
        buckets, sum_ns, _n = s.push_latency.histogram()
        yield histogram("dgdo_push_latency_seconds", "engine commit -> socket write of each message pushed",
                        buckets, sum_ns, ["worker"], w)
        yield counter("dgdo_messages_out", "messages written to sockets", s.messages_out)
        yield counter("dgdo_positions_coalesced", "driver positions replaced by a newer one within one drain",
                      s.positions_coalesced)
        yield counter("dgdo_frames_in", "data frames received from apps", s.frames_in)
        yield counter("dgdo_records_out", "records published to the engine", s.records_out)
        yield counter("dgdo_engine_records_in", "records drained from the engine", s.records_in)
        yield counter("dgdo_doorbell_wakeups", "wake-ups by the engine's doorbell", link.wakeups)
        yield counter("dgdo_reply_spins", "spins for an engine answer after a command or a trip's position",
                      link.spins)
        yield counter("dgdo_reply_spin_hits", "spins that caught the answer before parking", link.spin_hits)
        yield _gauge("dgdo_reply_spin_budget_seconds", "how long the next spin for an engine answer may last "
                     "(recent answer times, capped by --reply-spin-us)", w, link.reply_budget.budget_ns / 1e9)
        yield counter("dgdo_idle_polls", "event-loop turns spent polling the engine's ring (--idle-spin-us)",
                      link.idle.polls)
        yield counter("dgdo_idle_poll_wins", "idle polls that found records (a doorbell wake-up saved)",
                      link.idle.wins)
        g = app.core.gauges()
        yield labelled(GaugeMetricFamily("dgdo_ring_used_bytes", "bytes of records in a ring, not yet consumed "
                                         "(in: this worker -> engine, out: engine -> this worker)",
                                         labels=["worker", "ring"]),
                       (("in", g.in_bytes), ("out", g.out_bytes)))
        yield labelled(GaugeMetricFamily("dgdo_ring_capacity_bytes", "data bytes of a ring (0 while detached)",
                                         labels=["worker", "ring"]),
                       (("in", link.in_capacity if link.attached else 0),
                        ("out", link.out_capacity if link.attached else 0)))
        yield _gauge("dgdo_inbound_backlog_bytes", "records waiting for space in the engine's ring", w, g.backlog_bytes)
        yield counter("dgdo_auth_refused", "upgrades refused by auth", s.auth_refused)
        yield counter("dgdo_rate_limited", "messages refused by rate limits", s.rate_limited)
        yield labelled(CounterMetricFamily("dgdo_errors", "`error` messages sent to apps, by code",
                                           labels=["worker", "code"]), s.errors.items())
        yield labelled(CounterMetricFamily("dgdo_closed", "connections closed by the server",
                                           labels=["worker", "reason"]),
                       (("abuse", s.abuse_closes), ("slow_reader", s.slow_reader_closes),
                        ("too_large", s.too_large_closes), ("token_expired", s.expired_closes)))


def _gauge(name: str, doc: str, worker: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["worker"])
    family.add_metric(worker, value)
    return family


class EngineCollector(Collector):
    """The engine's figures from its last ENGINE_STATS: one worker exports them, unlabelled."""

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        e = self.app.stats.engine
        if not e.known:  # no ENGINE_STATS yet: absent, not zeros (a counter reset and a jump, to Prometheus)
            return

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge("dgdo_drivers_online", "drivers online (engine)", e.drivers_online)
        yield gauge("dgdo_drivers_available", "drivers online and free (engine)", e.drivers_available)
        yield gauge("dgdo_active_orders", "orders not yet finished (engine)", e.active_orders)
        yield counter("dgdo_orders_created", "orders created (engine)", e.orders_created)
        yield counter("dgdo_orders_matched", "orders accepted by a driver (engine)", e.orders_matched)
        yield counter("dgdo_orders_completed", "orders completed (engine)", e.orders_completed)
        yield histogram("dgdo_match_latency_seconds", "time the engine took to decide each offer (engine)",
                        e.match_buckets, e.match_sum_ns)


class Metrics:
    """One App's registry and its exposition."""

    def __init__(self, app: App, export_engine: bool) -> None:
        self.export_engine = export_engine
        self.registry = registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkerCollector(app))
        if export_engine:
            registry.register(EngineCollector(app))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)  # gc.get_stats(): process-wide, fine in several registries

    def render(self) -> bytes:
        """The exposition text for one scrape."""
        return generate_latest(self.registry)
