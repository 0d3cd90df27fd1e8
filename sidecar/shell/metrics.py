"""/metrics: the worker's counters in Prometheus text, read at scrape time.

A custom collector reads the live counters when scraped, so the hot path only
increments plain ints and never touches a metrics object.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sidecar.shell.server import App

__all__ = ["CONTENT_TYPE_LATEST", "render"]


class SidecarCollector(Collector):
    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        app = self.app
        s, e, link = app.stats, app.stats.engine, app.link

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge("dgdo_engine_attached", "1 while the engine is attached", int(link.attached))
        yield gauge("dgdo_engine_available", "1 while the engine is attached and beating", int(link.available))
        age = link.heartbeat_age_ns
        if age is not None:
            yield gauge("dgdo_engine_heartbeat_age_seconds", "age of the engine's last heartbeat", age / 1e9)
        yield gauge("dgdo_connections", "open WebSocket connections", len(app.core))
        yield gauge("dgdo_paused_connections", "connections above their write-buffer high-water mark", s.paused)
        p50, p99 = s.push_latency.percentiles(50, 99)
        push = GaugeMetricFamily("dgdo_push_latency_seconds", "engine commit -> socket write, recent window",
                                 labels=["quantile"])
        push.add_metric(["0.5"], p50 / 1e9)
        push.add_metric(["0.99"], p99 / 1e9)
        yield push
        yield counter("dgdo_messages_out", "messages written to sockets", s.messages_out)
        yield counter("dgdo_positions_coalesced", "driver positions replaced by a newer one within one drain",
                      s.positions_coalesced)
        yield counter("dgdo_frames_in", "data frames received from apps", s.frames_in)
        yield counter("dgdo_records_out", "records published to the engine", s.records_out)
        yield counter("dgdo_engine_records_in", "records drained from the engine", s.records_in)
        yield counter("dgdo_doorbell_wakeups", "wake-ups by the engine's doorbell", link.wakeups)
        yield counter("dgdo_reply_spins", "spins for an engine answer after a command", link.spins)
        yield counter("dgdo_reply_spin_hits", "spins that caught the answer before parking", link.spin_hits)
        yield gauge("dgdo_inbound_backlog_bytes", "records waiting for space in the engine's ring", link.backlog)
        yield counter("dgdo_auth_refused", "upgrades refused by auth", s.auth_refused)
        yield counter("dgdo_rate_limited", "messages refused by rate limits", s.rate_limited)
        closed = CounterMetricFamily("dgdo_closed", "connections closed by the server", labels=["reason"])
        closed.add_metric(["abuse"], s.abuse_closes)
        closed.add_metric(["slow_reader"], s.slow_reader_closes)
        closed.add_metric(["too_large"], s.too_large_closes)
        yield closed
        yield gauge("dgdo_drivers_online", "drivers online (engine)", e.drivers_online)
        yield gauge("dgdo_drivers_available", "drivers online and free (engine)", e.drivers_available)
        yield gauge("dgdo_active_orders", "orders not yet finished (engine)", e.active_orders)
        yield counter("dgdo_orders_created", "orders created (engine)", e.orders_created)
        yield counter("dgdo_orders_matched", "orders accepted by a driver (engine)", e.orders_matched)
        yield counter("dgdo_orders_completed", "orders completed (engine)", e.orders_completed)


def render(app: App) -> bytes:
    """The exposition text for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SidecarCollector(app))
    return generate_latest(registry)
