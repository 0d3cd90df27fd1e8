"""`dgdo`: run the engine and the sidecar together, or the sidecar alone.

    dgdo run [--config F] [--host H] [--port P] [--demo N | --no-demo] [--state-dir DIR] [--workers N]
                                                            engine + sidecar worker(s) (+ demo)
    ... [--tls-cert PEM --tls-key PEM]                      either of them over wss:// (shell/tls.py)
    dgdo sidecar [--config F] --control PATH|@NAME [--host H] [--port P]
                                                            sidecar for a running engine
    dgdo token --role R --sub ID [--ttl S] [--secret-file F | --config F]
                                                            mint a JWT for an app
    dgdo engine-path                                        where the engine binary is
    dgdo replay --state-dir DIR --order ID [--json]          an order's timeline from the journal

Settings come from flags, else the config file (`--config /etc/dgdo/dgdo.toml`: one TOML file for
the engine and dgdo, every setting declared once in sidecar/shell/config.py), else the defaults.

Auth is always on: the secret (at least 32 bytes) comes from --secret-file, DGDO_JWT_SECRET, the
systemd credential $CREDENTIALS_DIRECTORY/jwt-secret or the file's [auth] secret_file
(sidecar/shell/jwt_secret.py). `dgdo run` without one makes up a secret for the run, prints it once
and hands it to the demo; `dgdo sidecar` refuses to start without one unless told --insecure-no-auth.

Under systemd (`Type=notify`, see systemd/) both commands tell it when they serve, their status
line, and ping its watchdog from the event loop (sidecar/shell/sd_notify.py).

Every bad flag or environment problem ends the command with one line on stderr and exit status
2 (usage) or 1 (environment), never a traceback or a usage dump.

`dgdo run` leaves nothing behind, whatever kills it: the engine's control socket is an abstract
name (no file), its rings are memfds (nothing in /dev/shm), and the engine and the demo end with
`dgdo run` even after a kill -9 (PR_SET_PDEATHSIG, see sidecar/shell/lifetime.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

import uvloop

from sidecar.engine.idle import default_spin_us
from sidecar.engine.link import WorkerIdTaken
from sidecar.session.limits import Rate
from sidecar.shell import banner, config, fdlimit, journal, jwt_secret, lifetime, ports, sd_notify, tls
from sidecar.shell.banner import dashboard_url
from sidecar.shell.jwt_secret import CREDENTIAL_SECRET, configured_secret, read_secret_file
from sidecar.shell.server import App, Settings
from sidecar.shell.workers import FIRST_BACKOFF_S, MAX_BACKOFF_S, STABLE_S, WorkerProcesses, child_args
from sidecar.shell.workers import child_env as worker_env
from sidecar.wire import auth
from sidecar.wire.messages import is_valid_id

log = logging.getLogger("dgdo")

__all__ = ["CREDENTIAL_SECRET", "configured_secret", "dashboard_url", "main", "read_secret_file"]

REPO_ENGINE = Path(__file__).resolve().parents[2] / "build" / "engine" / "dgdo-engine"


def version() -> str:
    """This package's version (pyproject.toml's, as installed); the engine's --version says the same."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("dgdo")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def engine_path() -> str:
    """The engine binary: $DGDO_ENGINE, else the repo's build, else beside our Python (a `make install`
    prefix holds both in bin/), else PATH."""
    env = os.environ.get("DGDO_ENGINE")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise SystemExit(f"dgdo: DGDO_ENGINE={env} is not an executable file")
        return env
    if REPO_ENGINE.exists():
        return str(REPO_ENGINE)
    beside = Path(sys.executable).parent / "dgdo-engine"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("dgdo-engine")
    if found:
        return found
    raise SystemExit("dgdo: engine binary not found (build it with `make engine` or set DGDO_ENGINE)")


def default_state_dir(port: int) -> Path:
    """Where `dgdo run` keeps the engine's journal and snapshots unless told: per user and port,
    so that a restart on the same port recovers the same city."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "dgdo" / f"run-{port}"


def engine_supports(engine: str, flag: str) -> bool:
    """Whether the engine binary knows `flag` (its --help lists it): an older build has no journal."""
    try:
        done = subprocess.run([engine, "--help"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag.encode() in done.stdout


# Engine settings `dgdo run` passes through unchanged: flag -> (type, help). Unset ones keep the
# engine's defaults, or the values of the config file's [engine] table (the engine checks them).
# No defaults here: the engine's own table has them (`dgdo-engine --help`), some depend on the
# machine, and a copy would drift.
ENGINE_FLAGS: dict[str, tuple[type, str]] = {
    "--ring-capacity": (int, "bytes per ring, a power of two"),
    "--offer-timeout-s": (float, "seconds a driver has to accept an offer"),
    "--radius-m": (float, "first search radius"),
    "--wide-radius-m": (float, "widened search radius"),
    "--speed-kmh": (float, "average speed for ETAs"),
    "--detour": (float, "road detour factor over the great circle"),
    "--search-timeout-s": (float, "seconds an order searches before no_driver"),
    "--exhausted-wait-s": (float, "no untried driver left in range: seconds to wait for one before no_driver"),
    "--grace-s": (float, "seconds a disconnected driver keeps its offer"),
    "--pickup-overhead-s": (float, "seconds added to every pickup ETA"),
    "--cell-m": (float, "spatial grid cell edge in metres"),
    "--tick-ms": (int, "engine tick period in ms"),
    "--matching": (str, "greedy | batched"),
    "--batch-window-s": (float, "batched mode: window collecting requests"),
    "--batch-candidates": (int, "batched mode: nearest drivers considered per order"),
    "--batch-max-orders": (int, "batched mode: orders per min-cost solve, more are split"),
    "--retry-interval-s": (float, "seconds between a waiting order's looks for drivers"),
    "--retention-s": (float, "seconds finished orders stay queryable"),
    "--history-depth": (int, "reliable messages the engine keeps per recipient for resume"),
    "--spin-us": (int, "µs the engine polls its rings before parking"),
    "--fsync": (str, "never | interval | batch: when the journal reaches the disk"),
    "--fsync-interval-ms": (int, "interval policy: ms between journal syncs"),
    "--snapshot-every-s": (float, "seconds between engine snapshots"),
    "--snapshot-keep": (int, "snapshots kept, with their journal: `dgdo replay`'s history"),
}


ENGINE_CHOICES: dict[str, tuple[str, ...]] = {"--matching": ("greedy", "batched"),
                                              "--fsync": ("never", "interval", "batch")}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _engine_args(args: argparse.Namespace) -> list[str]:
    """The config file (the engine reads its [engine] table) and the engine flags given to `dgdo run`."""
    out = ["--config", str(args.config)] if getattr(args, "config", None) else []
    for flag in ENGINE_FLAGS:
        v = getattr(args, _dest(flag), None)
        if v is not None:
            out += [flag, str(v)]
    return out


async def _status_loop(app: App, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        state = "" if app.link.available else f"{app.engine_state()} | "
        print(f"[dgdo] {state}{app.stats.status_line()}", flush=True)

def _systemd_status(app: App, control: str) -> str:
    if not app.link.attached:
        return f"waiting for the engine on {control}"
    state = "" if app.link.available else f"{app.engine_state()} | "
    return f"{state}worker {app.worker} port {app.port} | {app.stats.status_line()}"


async def _notify_systemd(app: App, notifier: sd_notify.Notifier, control: str) -> None:
    """Type=notify: READY=1 as soon as the worker listens (this task starts then), with the watchdog
    pings and the status from this loop.

    Not once it is attached: a worker that waits for its engine serves as one whose engine went away
    does (apps get `engine_unavailable`, /healthz says 503, STATUS "waiting for the engine") and
    attaches when the engine comes. Held back from READY, it would be killed at TimeoutStartSec= and
    started again, every minute for as long as the engine is down, dropping its connections each time.
    """
    notifier.send("READY=1", f"STATUS={sd_notify.one_line(_systemd_status(app, control))}")
    await sd_notify.keep_alive(notifier, lambda: _systemd_status(app, control))


async def serve(args: argparse.Namespace, control: str, engine: EngineSupervisor | None, secret: str | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tls_context = getattr(args, "tls_context", None)
    extra: WorkerProcesses | None = None  # dgdo run --workers N: workers 2..N, spawned once we listen
    if tls_context or args.command == "sidecar":
        # A renewed certificate (certbot, an ACME client) is taken without dropping a connection, by
        # every worker (systemd's ExecReload=, or `kill -HUP` to `dgdo run`, which passes it on). A
        # `dgdo run` without TLS keeps SIGHUP's default: a closed terminal ends it. Installed before
        # we listen and say so: a reload sent as soon as we are up must not meet that default.
        loop.add_signal_handler(signal.SIGHUP, lambda: _on_sighup(tls_context, args, extra))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # (a worker of dgdo run is born with it blocked)
    nofile = fdlimit.raise_soft_limit()  # before the first connection: each one is a descriptor
    app = App(control, worker=args.worker, reply_spin_us=args.reply_spin_us, settings=_settings(args, secret))
    app.link.on_refused = lambda e: stop.set()  # our worker id is taken: one line, exit 1 (below)
    # SO_REUSEPORT only with siblings to share the port with: a `dgdo sidecar` (the systemd
    # template's workers) or `dgdo run --workers N`; `dgdo run` checked the port was free (cmd_run).
    reuse_port = args.command == "sidecar" or getattr(args, "workers", 1) > 1
    try:
        await app.start(args.host, args.port, tls_context, reuse_port)
    except WorkerIdTaken as e:
        app.link.close()
        raise SystemExit(f"dgdo: {e}") from None
    except OSError as e:  # EADDRINUSE, EACCES (a port below 1024), EADDRNOTAVAIL (a host not ours)
        app.link.close()
        own = app.settings.metrics_port
        ports = str(args.port) if own is None else f"{args.port} (or metrics port {own})"
        raise SystemExit(f"dgdo: cannot listen on {args.host}:{ports}: {_why(e)}") from None
    ws = "wss" if tls_context else "ws"
    print(f"[dgdo] sidecar listening on {ws}://{args.host}:{app.port} (engine control {control})", flush=True)
    if getattr(args, "dashboard_link", False):  # dgdo run: the addresses and a token command
        for line in banner.lines(args.host, app.port, secret, args.secret_source, args.made_up_secret,
                                 tls=tls_context is not None):
            print(f"[dgdo] {line}", flush=True)
    if app.metrics_port is not None:
        print(f"[dgdo] metrics on http://{args.metrics_host or args.host}:{app.metrics_port}/metrics", flush=True)
    assert app.front is not None
    print(f"[dgdo] {fdlimit.describe(nofile, app.front.max_connections, args.max_connections is not None)}", flush=True)
    tasks: list[asyncio.Task[None]] = []
    demo: subprocess.Popen[bytes] | None = None
    if args.status_interval > 0:
        tasks.append(loop.create_task(_status_loop(app, args.status_interval)))
    notifier: sd_notify.Notifier = args.notifier
    if notifier.enabled:
        tasks.append(loop.create_task(_notify_systemd(app, notifier, control)))
    if engine is not None:
        tasks.append(loop.create_task(engine.watch(stop)))
    if getattr(args, "workers", 1) > 1:
        # We are worker 1; 2..N share our port (sidecar/shell/workers.py). Spawned here, on the main thread.
        extra = WorkerProcesses(control, app.port, args.workers, child_args(args.sidecar_parser, args), args.worker,
                                worker_env(secret))
        extra.start()
        tasks += [loop.create_task(extra.watch(w, EngineSupervisor.exited)) for w in extra.ids]
    if getattr(args, "demo", 0) and await _attached_or_stopped(app, stop):
        # From this (the main) thread, with the marker that makes it end with us even after our kill -9.
        demo = subprocess.Popen(
            [sys.executable, "-m", "dgdo_apps.demo", "--url", f"{ws}://{args.host}:{app.port}",
             "--drivers", str(args.demo), *(["--pin-cert", str(args.tls_cert)] if tls_context else [])],
            start_new_session=True, env=lifetime.child_env(),
        )
        print(f"[dgdo] demo pid={demo.pid}", flush=True)
    await stop.wait()
    print("[dgdo] stopping", flush=True)
    notifier.send("STOPPING=1", "STATUS=stopping: closing connections")
    if demo is not None:
        demo.terminate()  # the loop keeps serving while the demo says goodbye
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(EngineSupervisor.exited(demo), 5)
        if demo.poll() is None:
            demo.kill()
    for t in tasks:
        t.cancel()
    if extra is not None:
        await extra.stop(EngineSupervisor.exited)
    await app.stop()
    if app.link.refused is not None:
        raise SystemExit(f"dgdo: {app.link.refused}")
    return 0


async def _attached_or_stopped(app: App, stop: asyncio.Event) -> bool:
    """Waits until the worker is attached (True) or told to stop first (False)."""
    attached = asyncio.ensure_future(app.link.wait_attached())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait((attached, stopped), return_when=asyncio.FIRST_COMPLETED)
    attached.cancel()
    stopped.cancel()
    return app.link.attached


class EngineSupervisor:
    """`dgdo run` owns its engine: starts it, restarts it when it dies, stops it at the end.

    A restarted engine is a new run (new epoch, fresh rings); the sidecar notices the
    death on its control socket and re-attaches by itself. The engine runs with
    --die-with-parent: should `dgdo run` be killed (even with -9), the kernel sends it
    SIGTERM. That signal comes when the *thread* that forked it ends, so every spawn
    happens on the main thread; only the wait for the ready line goes to a worker thread.
    """

    def __init__(self, args: argparse.Namespace, control: str, state_dir: Path | None = None) -> None:
        state = ["--state-dir", str(state_dir)] if state_dir is not None else []
        self.cmd = [engine_path(), "--control", control, "--instance", args.instance,
                    "--die-with-parent", str(os.getpid()), *state, *_engine_args(args)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.clock = time.monotonic
        self.started = 0.0  # when the running engine was ready (self.clock)

    def spawn(self) -> subprocess.Popen[bytes]:
        # Its own session: a Ctrl-C at the terminal reaches only us, and we stop the engine
        # after the sidecar (a SIGINT to the whole group would look like a crash to restart).
        return subprocess.Popen(self.cmd, stdout=subprocess.PIPE, start_new_session=True)

    def ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Waits for the engine's ready line. Raises RuntimeError if it fails."""
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()  # "dgdo-engine ready control=... pid=... epoch=..."
        if not line.startswith("dgdo-engine ready"):
            proc.wait(5)
            raise RuntimeError(f"engine failed to start (status {proc.returncode})")
        print(f"[dgdo] {line}", flush=True)
        # The engine logs to stderr; pass on anything else it prints so its pipe never fills.
        threading.Thread(target=shutil.copyfileobj, args=(proc.stdout, sys.stdout.buffer), daemon=True).start()
        self.proc = proc
        self.started = self.clock()

    def start(self) -> None:
        """Starts the engine and waits for its ready line (main thread). Raises RuntimeError if it fails."""
        self.ready(self.spawn())

    async def watch(self, stop: asyncio.Event) -> None:
        """Restarts the engine whenever it dies, until `stop`: at once after a run of STABLE_S or more
        (a crash in service), else after a back-off doubled while it keeps dying soon after its start
        or failing to start (a crash loop: a restart every few seconds, not one a second forever).
        The workers' policy (workers.py)."""
        loop = asyncio.get_running_loop()
        backoff = FIRST_BACKOFF_S
        while not stop.is_set():
            assert self.proc is not None
            rc = await self.exited(self.proc)
            if stop.is_set():
                return
            ran = self.clock() - self.started
            if ran >= STABLE_S:
                backoff = FIRST_BACKOFF_S
                log.error("! engine exited with status %s after %.0f s; restarting", rc, ran)
            else:
                log.error("! engine exited with status %s %.1f s after its start; restarting in %.1f s", rc, ran,
                          backoff)
                await self.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
            while not stop.is_set():
                try:
                    proc = self.spawn()  # here, on the loop's (main) thread: see the class doc
                    await loop.run_in_executor(None, self.ready, proc)
                    self.restarts += 1
                    break
                except (RuntimeError, OSError) as e:
                    log.error("! %s; retrying in %.1f s", e, backoff)
                    await self.sleep(backoff)
                    backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def sleep(self, s: float) -> None:
        await asyncio.sleep(s)

    @staticmethod
    async def exited(proc: subprocess.Popen[bytes]) -> int:
        """Awaits the process's exit through a pidfd: no polling, no thread."""
        loop = asyncio.get_running_loop()
        fd = os.pidfd_open(proc.pid)
        exited = loop.create_future()
        loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return proc.wait()

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The ssl context for --tls-cert/--tls-key (None: plain ws://). Exits with one line when only
    one is given (status 2) or the files cannot be used (status 1): before anything is started."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        print(f"dgdo {args.command}: tls_cert and tls_key (--tls-cert/--tls-key) go together "
              f"(see dgdo {args.command} --help)",
              file=sys.stderr, flush=True)
        raise SystemExit(2)
    try:
        return tls.server_context(cert, key)
    except tls.TlsError as e:
        raise SystemExit(f"dgdo: {e}") from None


def _why(e: OSError) -> str:
    # The errno's own words: the loop's create_server words its bind errors its own way.
    return os.strerror(e.errno) if e.errno and e.errno > 0 else e.strerror or str(e)  # (< 0: getaddrinfo's)


def _on_sighup(ctx: ssl.SSLContext | None, args: argparse.Namespace, workers: WorkerProcesses | None) -> None:
    if ctx is not None:
        _reload_tls(ctx, args)
    else:
        log.warning("SIGHUP: nothing to reload (no TLS certificate)")
    if workers is not None:
        workers.signal(signal.SIGHUP)


def _reload_tls(ctx: ssl.SSLContext, args: argparse.Namespace) -> None:
    try:
        changed = tls.reload(ctx, args.tls_cert, args.tls_key)
    except tls.TlsError as e:
        log.error("! SIGHUP: %s; still serving the certificate loaded before", e)
    else:
        if changed:
            log.warning("SIGHUP: reloaded the TLS certificate %s (new connections present it)", args.tls_cert)
        else:
            log.warning("SIGHUP: the TLS certificate %s is unchanged: still serving the one loaded before (a "
                        "systemd credential is a copy made at start: a renewal there takes a restart)", args.tls_cert)


def _settings(args: argparse.Namespace, secret: str | None) -> Settings:
    return Settings(
        jwt_secret=None if args.insecure_no_auth else secret,
        ping_idle_s=args.ping_idle_s, ping_reply_s=min(args.ping_reply_s, args.ping_idle_s),
        positions_rate=Rate(args.positions_per_s, args.positions_burst),
        messages_rate=Rate(args.messages_per_s, args.messages_burst),
        max_paused_s=args.max_paused_s, max_queued=args.max_queued,
        engine_timeout_s=args.engine_timeout_s,
        max_connections=args.max_connections,
        idle_spin_us=default_spin_us() if args.idle_spin_us is None else args.idle_spin_us,
        engine_metrics_worker=args.engine_metrics_worker, metrics_port=_own_metrics_port(args),
        metrics_host=args.metrics_host, private_metrics=bool(args.private_metrics),
    )


def _own_metrics_port(args: argparse.Namespace) -> int | None:
    """This worker's metrics port: the `metrics_port` setting is a base (shell/ports.py)."""
    if args.private_metrics and args.metrics_port is None:
        raise SystemExit("dgdo: private_metrics needs metrics_port: else no port serves /metrics")
    try:
        return ports.worker_metrics_port(args.metrics_port, args.worker)
    except ValueError as e:
        raise SystemExit(f"dgdo: {e}") from None


def _ensure_secret(args: argparse.Namespace, make_up: bool) -> str | None:
    """The secret to verify tokens with (None: auth explicitly off); `dgdo run` makes one up for local runs."""
    args.secret_source, args.made_up_secret = None, None
    if args.insecure_no_auth:
        log.warning("! auth is OFF (--insecure-no-auth): anyone can connect as anyone")
        return None
    flag_file = args.secret_file if "secret_file" in args.from_flags else None
    found = jwt_secret.find(flag_file, args.secret_file)
    if found is not None:
        args.secret_source = found.file
        return found.secret
    if not make_up:
        raise SystemExit(f"dgdo: set {auth.ENV_SECRET}, the systemd credential {CREDENTIAL_SECRET} or [auth] "
                         "secret_file (the JWT HS256 secret apps' tokens are signed with, at least "
                         f"{auth.MIN_SECRET_BYTES} bytes), or pass --insecure-no-auth for a trusted test network")
    # Set in our own environment, so the demo (a child process) mints its tokens with it.
    os.environ[auth.ENV_SECRET] = secret = args.made_up_secret = auth.new_secret()
    print(f"[dgdo] {auth.ENV_SECRET} not set: this run's secret is {secret}", flush=True)
    return secret


def cmd_token(args: argparse.Namespace) -> int:
    if args.secret:
        secret = jwt_secret.checked(args.secret, "--secret")
    else:
        found = jwt_secret.find(args.secret_file, (args.config_file or {}).get("auth", {}).get("secret_file"))
        if found is None:
            raise SystemExit(f"dgdo token: set {auth.ENV_SECRET} or pass --secret-file (or --config with [auth] "
                             "secret_file)")
        secret = found.secret
    if not is_valid_id(args.sub):
        raise SystemExit("dgdo token: --sub must be 1-36 characters of [A-Za-z0-9_.:-]")
    print(auth.mint(secret, args.role, args.sub, args.ttl))
    return 0


def _check_engine_settings(engine: str, args: argparse.Namespace) -> None:
    """The engine's settings (the file's [engine] table, the flags passed through) checked before
    anything starts: a bad one is the engine's one line, and nothing is left behind."""
    cmd = [engine, "--print-config", *_engine_args(args)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"dgdo: cannot run the engine {engine}: {e}") from None
    if done.returncode == 0:
        return
    lines = done.stderr.strip().splitlines()
    print(lines[-1] if lines else f"dgdo: {engine} --print-config failed (status {done.returncode})",
          file=sys.stderr)
    raise SystemExit(2)


def cmd_run(args: argparse.Namespace) -> int:
    args.tls_context = tls_context(args)
    engine = engine_path()
    if args.config is not None and args.no_journal and "state_dir" in (args.config_file or {}).get("engine", {}):
        raise SystemExit(f"dgdo: --no-journal, but {args.config} sets [engine] state_dir (remove one)")
    if engine_supports(engine, "--print-config"):
        _check_engine_settings(engine, args)
    _own_metrics_port(args)  # in range: checked before anything starts
    try:  # not a port another stack listens on, even with SO_REUSEPORT (shell/ports.py)
        ports.check_free(args.host, args.port)
    except OSError as e:
        raise SystemExit(f"dgdo: cannot listen on {args.host}:{args.port}: {_why(e)}") from None
    secret = _ensure_secret(args, make_up=True)
    args.instance = args.instance or f"run{os.getpid()}"
    # An abstract socket name: no file to create or remove, gone with the engine even after kill -9.
    control = f"@dgdo-{args.instance}-{secrets.token_hex(4)}"
    state_dir = None if args.no_journal else args.state_dir or default_state_dir(args.port)
    if state_dir is None:
        print("[dgdo] no journal: an engine restart loses every order (--no-journal)", flush=True)
    elif engine_supports(engine, "--state-dir"):
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        print(f"[dgdo] state dir {state_dir}", flush=True)
    else:
        print(f"[dgdo] state dir {state_dir} not used: this engine build keeps no journal", flush=True)
        state_dir = None
    supervisor = EngineSupervisor(args, control, state_dir)
    try:
        supervisor.start()
    except RuntimeError as e:
        raise SystemExit(f"dgdo: {e}") from None
    try:
        return uvloop.run(serve(args, control, supervisor, secret))
    finally:
        supervisor.stop()
        print("[dgdo] stopped", flush=True)


def cmd_sidecar(args: argparse.Namespace) -> int:
    args.tls_context = tls_context(args)
    if not args.control:
        args.parser.error("--control is required (or [sidecar] control in the --config file)")
    secret = _ensure_secret(args, make_up=False)
    return uvloop.run(serve(args, args.control, None, secret))


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: a typo gets the reason, not a 25-line usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def cmd_replay(args: argparse.Namespace) -> int:
    """Runs the engine's offline replay (`dgdo-engine replay`) with the same arguments."""
    return replay(args.replay_args)


def replay(argv: list[str]) -> int:
    return subprocess.run([engine_path(), "replay", *argv], check=False).returncode


CONFIG_HELP = (f"the config file (TOML, e.g. {config.DEFAULT_PATH}; docs/dgdo.toml lists every setting): "
               "flags override it")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dgdo", description="DG Do dispatch")
    parser.add_argument("--version", action="version", version=f"dgdo {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start engine + sidecar (+ demo)")
    run.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    run.add_argument("--no-demo", dest="demo", action="store_const", const=0, help="no simulated drivers")
    engine_group = run.add_argument_group(
        "engine settings", "passed on to the engine, [engine] in the config file; the engine's defaults: "
                           "dgdo-engine --help")
    for flag, (type_, help_) in ENGINE_FLAGS.items():
        # The engine checks every value itself; the choices are caught here too, in our words.
        choices = ENGINE_CHOICES.get(flag)
        engine_group.add_argument(flag, dest=_dest(flag), type=type_, help=help_, choices=choices,
                         metavar=None if choices is None else "|".join(choices))
    run.set_defaults(func=cmd_run, dashboard_link=True, command="run")

    side = sub.add_parser("sidecar", help="run the sidecar for an engine that is already running")
    side.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    side.set_defaults(func=cmd_sidecar, demo=0, command="sidecar", parser=side)
    run.set_defaults(sidecar_parser=side)  # `--workers N` starts its workers 2..N with this parser's flags

    tok = sub.add_parser("token", help=f"mint a JWT for an app (secret from ${auth.ENV_SECRET})")
    tok.add_argument("--role", required=True, choices=["driver", "passenger", "admin"])
    tok.add_argument("--sub", required=True, help="the driver's / passenger's id (admins: any name)")
    tok.add_argument("--ttl", type=float, default=auth.DEFAULT_TTL_S, help="seconds until it expires (default 1 day)")
    tok.add_argument("--secret", help=f"signing secret (default ${auth.ENV_SECRET})")
    tok.add_argument("--secret-file", type=Path,
                     help="read the signing secret from this file (e.g. /etc/dgdo/jwt-secret)")
    tok.add_argument("--config", type=Path, metavar="FILE", help="a config file: its [auth] secret_file")
    tok.set_defaults(func=cmd_token, command="token")

    rep = sub.add_parser(
        "replay", help="explain an order from the engine's journal: dgdo replay --state-dir DIR --order ID",
        description="Passes its arguments to `dgdo-engine replay` (see `dgdo replay --help`).", add_help=False)
    rep.add_argument("replay_args", nargs=argparse.REMAINDER)
    rep.set_defaults(func=cmd_replay)

    path = sub.add_parser("engine-path", help="print the engine binary's path")
    path.set_defaults(func=lambda a: print(engine_path()) or 0)
    # Last: the flags of every setting (sidecar/shell/config.py), a flag written by hand above kept as it is.
    config.add_flags(run, "run")
    config.add_flags(side, "sidecar")
    return parser


def main(argv: list[str] | None = None) -> int:
    lifetime.die_with_parent_from_env()  # started by `dgdo run`, a test or a bench: end with it
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["replay"]:  # every argument is the engine's (argparse would claim --help and friends)
        return replay(argv[1:])
    # Ours, as systemd's main process, before anything could hand them to a child (the engine, the demo).
    notifier = sd_notify.Notifier.from_env()
    args = build_parser().parse_args(argv)
    args.notifier = notifier
    try:  # the file's values under the flags'; every table of the file checked (but [engine]: the engine's)
        args.config_file = config.load(args.config) if getattr(args, "config", None) else None
    except config.ConfigError as e:
        print(f"dgdo: {e}", file=sys.stderr)
        return 2
    args.from_flags = config.resolve(args, getattr(args, "command", ""), args.config_file)
    logging.basicConfig(level=getattr(args, "log_level", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    journal.use_journal_priorities()  # under systemd: each line with its syslog priority (nothing otherwise)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # picows logs every accepted connection at INFO: with a fleet connected that buries the lines
        # a person reads (the dashboard link, the status line). Still there with --log-level DEBUG.
        logging.getLogger("picows").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
