"""/metrics as Prometheus reads it: a real engine, two real sidecar workers, real traffic.

`promtool check metrics` (Debian's prometheus package, which scripts/install-deps.sh installs)
lints each worker's exposition; then the figures are read back by value: both latency histograms
on the 10 µs - 100 ms buckets, build info, process collectors, errors by code, ring depths, engine
restarts, and the engine's own figures exported by worker 1 only (a sum over workers counts them once).
And one config file shared by `dgdo run --workers 2`: each worker scraped at its own port (the
`metrics_port` base + its id - 1), the engine's figures on the one `engine_metrics_worker`.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, LineReader, stack_env, start_stack
from prometheus_client.parser import text_string_to_metric_families
from rides import NEAR, accept, passenger, request_ride
from test_engine_death import Split, start_split, stop_split
from wsclient import AppClient

from sidecar.shell.metrics import LE_BOUNDS

PROMTOOL = shutil.which("promtool")
ALERTS = ROOT / "docs" / "alerts.yml"  # the README's alerts as a rule file
ENGINE_WIDE = ("dgdo_drivers_online", "dgdo_drivers_available", "dgdo_active_orders", "dgdo_orders_created_total",
               "dgdo_orders_matched_total", "dgdo_orders_completed_total", "dgdo_match_latency_seconds_count")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=")  # the text format, not OpenMetrics
        return r.read().decode()


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def named(got: Samples, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called `name`."""
    return [dict(labels) for n, labels in got if n == name]


def buckets(got: Samples, name: str, **labels: str) -> dict[str, float]:
    return {d["le"]: value(got, f"{name}_bucket", **d) for d in named(got, f"{name}_bucket")
            if all(d.get(k) == v for k, v in labels.items())}


def wait_for(port: int, ok, timeout: float = 10.0) -> Samples:
    """Scrapes until `ok(samples)`: ENGINE_STATS comes about once a second, from another process."""
    deadline = time.monotonic() + timeout
    while True:
        got = samples(scrape(port))
        if ok(got):
            return got
        assert time.monotonic() < deadline, "the figures never showed in /metrics"
        time.sleep(0.1)  # an HTTP endpoint in another process: nothing to await but its answer


@dataclass
class Workers:
    split: Split  # the engine and worker 1
    second: subprocess.Popen[bytes]
    second_port: int
    second_metrics_port: int  # --metrics-port: the worker's own scrape address


@pytest.fixture
def workers(engine_bin: Path) -> Iterator[Workers]:
    s = start_split(engine_bin)
    second = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "sidecar", "--control", s.control, "--port", "0", "--worker", "2",
         "--status-interval", "0", "--engine-timeout-s", "60", "--metrics-port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=stack_env(),
    )
    out = LineReader(second.stdout)
    try:
        out.wait_for(r"attached to engine")  # a worker attaches before it listens (App.start)
        port = int(out.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)").group(1))
        metrics_port = int(out.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
        yield Workers(s, second, port, metrics_port)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
        stop_split(s)


def promtool_check(text: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool not installed (scripts/install-deps.sh installs Debian's prometheus package)")
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


async def test_each_workers_metrics_pass_promtool_and_carry_what_an_operator_alerts_on(workers: Workers) -> None:
    one, two = workers.split.port, workers.second_metrics_port
    driver = await AppClient.open(f"{workers.split.url}/ws/driver/d1")
    await driver.expect("welcome")
    await driver.send({"type": "driver_location", "lat": NEAR[0], "lon": NEAR[1], "id": "l0"})
    await driver.expect("ack", id="l0")
    await driver.send({"type": "driver_status", "status": "online", "id": "s0"})
    await driver.expect("ack", id="s0")
    pax = await passenger(workers.split)
    order_id = await request_ride(pax)
    await driver.expect("new_order", order_id=order_id)
    await accept(driver, order_id, pax)

    before = samples(scrape(one))
    await driver.send({"type": "driver_location", "lat": 999, "lon": 0, "id": "bad"})
    await driver.expect("error", id="bad", code="bad_message")
    got = wait_for(one, lambda g: g.get(("dgdo_match_latency_seconds_count", frozenset()), 0) >= 1
                   and g.get(("dgdo_orders_matched_total", frozenset()), 0) >= 1)
    other = samples(scrape(two))
    for text in (scrape(one), scrape(two)):
        promtool_check(text)

    # Errors by code: exactly the one bad message, under its code and this worker.
    assert (value(got, "dgdo_errors_total", worker="1", code="bad_message")
            == value(before, "dgdo_errors_total", worker="1", code="bad_message") + 1)
    assert value(got, "dgdo_errors_total", worker="1", code="rate_limited") == 0  # every code from the start

    # Push latency: a histogram on the agreed buckets, every message pushed counted once.
    push = buckets(got, "dgdo_push_latency_seconds", worker="1")
    assert tuple(push) == LE_BOUNDS and LE_BOUNDS[0] == "1e-05" and LE_BOUNDS[-2] == "0.1"
    counts = list(push.values())
    assert counts == sorted(counts), "buckets are cumulative"
    assert push["+Inf"] == value(got, "dgdo_push_latency_seconds_count", worker="1")
    assert push["+Inf"] >= value(got, "dgdo_messages_out_total", worker="1") >= 8  # acks, offer, updates...
    assert 0 < value(got, "dgdo_push_latency_seconds_sum", worker="1") < push["+Inf"] * 0.1

    # Match latency: the engine's histogram, on the same buckets, from worker 1 only.
    match = buckets(got, "dgdo_match_latency_seconds")
    assert tuple(match) == LE_BOUNDS and match["+Inf"] >= 1

    # The engine's figures once over both workers; each worker's own figures under its id.
    for name in ENGINE_WIDE:
        assert named(got, name) == [{}], name
        assert named(other, name) == [], f"worker 2 exports {name} too: a sum would count it twice"
    assert value(got, "dgdo_orders_created_total") >= 1
    assert named(other, "dgdo_connections") == [{"worker": "2"}]
    assert named(other, "dgdo_push_latency_seconds_count") == [{"worker": "2"}]
    # The front door's figures, with no --max-connections given: the cap in force, refusals from 0.
    assert value(other, "dgdo_max_connections", worker="2") > 0
    assert value(other, "dgdo_http_refusals_total", worker="2", status="503") == 0
    assert value(other, "dgdo_sockets_dropped_total", worker="2") == 0

    # Build info, process and platform collectors, rings, engine state.
    (info,) = named(got, "dgdo_build_info")
    assert info["worker"] == "1" and info["version"]
    assert value(got, "dgdo_build_info", **info) == 1
    assert value(got, "process_open_fds") > 0 and value(got, "process_max_fds") >= value(got, "process_open_fds")
    assert named(got, "python_info")
    for ring in ("in", "out"):
        assert value(got, "dgdo_ring_capacity_bytes", worker="1", ring=ring) > 0
        assert 0 <= value(got, "dgdo_ring_used_bytes", worker="1", ring=ring) <= value(
            got, "dgdo_ring_capacity_bytes", worker="1", ring=ring)
    assert value(got, "dgdo_engine_available", worker="1") == 1
    assert value(got, "dgdo_engine_restarts_total", worker="1") == 0
    for c in (driver, pax):
        await c.close()


def test_the_metrics_port_serves_metrics_and_healthz_only(workers: Workers) -> None:
    port = workers.second_metrics_port
    assert samples(scrape(port)).keys() >= {("dgdo_connections", frozenset({("worker", "2")}))}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200
    for path in ("/ws/driver/d1", "/admin"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
        assert refused.value.code == 404


def test_private_metrics_leave_the_public_port_for_the_metrics_address(engine_bin: Path, tmp_path: Path) -> None:
    """With `private_metrics`, /metrics is served only on the metrics port, which `metrics_host` binds
    to an address of its own (one only the scraper reaches): the public port, which apps reach,
    answers 404 for it and still serves /healthz to load balancers."""
    base = free_pair()
    cfg = tmp_path / "dgdo.toml"
    cfg.write_text(f'[sidecar]\nmetrics_port = {base}\nmetrics_host = "127.0.0.2"\nprivate_metrics = true\n')
    s = start_stack("--config", str(cfg))
    try:
        s.out.wait_for(rf"metrics on http://127\.0\.0\.2:{base}/metrics")
        with urllib.request.urlopen(f"http://127.0.0.2:{base}/metrics", timeout=5) as r:
            assert ("dgdo_connections", frozenset({("worker", "1")})) in samples(r.read().decode())
        assert s.http_get("/healthz")[0] == 200
        assert s.http_get("/metrics")[0] == 404
        with socket.socket() as c, pytest.raises(ConnectionRefusedError):
            c.connect(("127.0.0.1", base))  # not on the public address
    finally:
        assert s.stop() == 0


def test_private_metrics_without_a_metrics_port_is_refused_before_anything_starts() -> None:
    run = subprocess.run([sys.executable, "-m", "sidecar", "run", "--port", "0", "--no-demo", "--private-metrics"],
                         cwd=ROOT, capture_output=True, text=True, env=stack_env(), timeout=60)
    assert run.returncode != 0
    assert "dgdo: private_metrics needs metrics_port: else no port serves /metrics" in run.stderr
    assert "engine ready" not in run.stdout


def test_an_engine_restart_is_counted_by_each_worker(workers: Workers) -> None:
    s = workers.split
    assert s.engine is not None
    s.engine.send_signal(signal.SIGKILL)
    s.engine.wait()
    s.wait_health(503)
    s.start_engine()
    s.wait_health(200)
    for port, worker in ((s.port, "1"), (workers.second_metrics_port, "2")):
        got = wait_for(port, lambda g, w=worker: g.get(("dgdo_engine_available", frozenset({("worker", w)}))) == 1)
        assert value(got, "dgdo_engine_restarts_total", worker=worker) == 1


# ---- one shared config file, N workers: each its own metrics port, one engine exporter ----------


def free_pair() -> int:
    """A port p with p and p + 1 both free (bound and released: another process may take them
    meanwhile, as with any free port a test picks)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            base = a.getsockname()[1]
            if base >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", base + 1))
                except OSError:
                    continue
                return base
    raise AssertionError("no two consecutive free ports")


@pytest.mark.parametrize("exporter", [None, 2])
def test_a_shared_config_gives_each_worker_its_metrics_port_and_one_engine_exporter(
        engine_bin: Path, tmp_path: Path, exporter: int | None) -> None:
    """`metrics_port` is a base (worker N: base + N - 1) and `engine_metrics_worker` names one
    worker (default 1), so one [sidecar] table read by every worker of `dgdo run --workers 2`
    gives two scrape addresses and the engine's figures on exactly one of them."""
    base = free_pair()
    cfg = tmp_path / "dgdo.toml"
    cfg.write_text(f"[sidecar]\nmetrics_port = {base}\n"
                   + (f"engine_metrics_worker = {exporter}\n" if exporter is not None else ""))
    s = start_stack("--workers", "2", "--config", str(cfg))
    try:
        s.out.wait_for(rf"metrics on http://127\.0\.0\.1:{base + 1}/metrics")  # worker 2, once it listens
        # The exporter's engine figures come with the engine's first ENGINE_STATS (about a second).
        got = {w: wait_for(base + w - 1, lambda g, w=w: ("dgdo_connections", frozenset({("worker", str(w))})) in g
                           and (w != (exporter or 1) or ("dgdo_drivers_online", frozenset()) in g))
               for w in (1, 2)}
        exporting = {w for w, g in got.items() if named(g, "dgdo_drivers_online")}
        assert exporting == {exporter or 1}, exporting
        for w, g in got.items():
            assert named(g, "dgdo_connections") == [{"worker": str(w)}]
            for name in ENGINE_WIDE:
                assert bool(named(g, name)) == (w in exporting), (w, name)
    finally:
        assert s.stop() == 0


def test_the_engines_figures_are_absent_until_the_engine_has_sent_them(engine_bin: Path) -> None:
    """A worker that has not heard from its engine yet (started first, or within the second before
    the first ENGINE_STATS) has no engine figures. Zeros would read, to Prometheus, as every
    engine counter reset to 0 and then jumping by all the engine ever counted (a spike in every
    rate() after each sidecar restart), and as every driver gone offline for a moment."""
    instance = f"t{uuid.uuid4().hex[:8]}"
    control = f"@dgdo-test-{instance}"
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "sidecar", "--control", control, "--port", "0", "--status-interval", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=stack_env(),
    )
    s = Split(engine_bin, control, instance, sidecar, LineReader(sidecar.stdout), 0)
    try:
        s.port = int(s.out.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)").group(1))
        text = scrape(s.port)
        promtool_check(text)
        got = samples(text)
        assert value(got, "dgdo_engine_attached", worker="1") == 0
        assert [name for name in ENGINE_WIDE if named(got, name)] == []
        s.start_engine()
        got = wait_for(s.port, lambda g: ("dgdo_orders_created_total", frozenset()) in g)
        assert all(named(got, name) == [{}] for name in ENGINE_WIDE)
        promtool_check(scrape(s.port))
    finally:
        stop_split(s)


def readme_alerts() -> list[tuple[str, str]]:
    """(name, PromQL) of each row of README "Metrics to alert on"'s table; "or" rows give two."""
    text = (ROOT / "README.md").read_text()
    table = text.split("| alert | PromQL | why |", 1)[1].split("\n\n", 1)[0]
    out = []
    for row in table.splitlines()[2:]:
        name, promql, _why = (cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip().strip("|")))
        for expr in re.findall(r"`([^`]+)`", promql):
            out.append((name, expr.replace("\\|", "|")))
    return out


def test_the_readme_alerts_are_valid_promql_on_metrics_a_worker_exports(workers: Workers) -> None:
    """The alerts of README "Metrics to alert on" are the rules docs/alerts.yml ships, which pass
    `promtool check rules`, and every dgdo_ and process_ series they read is one that worker 1 (the
    engine's exporter) serves."""
    alerts = readme_alerts()
    assert len(alerts) >= 12
    got = wait_for(workers.split.port, lambda g: ("dgdo_orders_created_total", frozenset()) in g)
    served = {name for name, _labels in got}
    for name, expr in alerts:
        for metric in re.findall(r"\b(?:dgdo|process)_\w+", expr):
            assert metric in served, (name, metric)
    shipped = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert [rule["expr"] for rule in shipped] == [expr for _name, expr in alerts]  # the same rules, in order
    assert all(rule["labels"]["severity"] in ("page", "ticket") and rule["annotations"]["summary"] for rule in shipped)
    if PROMTOOL is None:
        pytest.skip("promtool not installed (scripts/install-deps.sh installs Debian's prometheus package)")
    r = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
