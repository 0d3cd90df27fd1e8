"""`dgdo run --workers N`: the extra sidecar workers on a dev box, as child processes.

`dgdo run` is worker 1 itself (it also owns the engine, the demo and the status line); workers
2..N are `dgdo sidecar --control C --worker k` processes on the same port (SO_REUSEPORT: the
kernel spreads new connections over the N listening sockets). Why processes and not threads or
one process: a worker is one event loop on one core, which is what N workers are for; and why
`dgdo run` stays worker 1 rather than a bare supervisor: a single worker (the default) is then
exactly what it was, with no extra process.

Each child gets what worker 1 resolved its settings from, not the values it resolved: the
`dgdo sidecar` flags the user gave `dgdo run` (read off that parser, so flags added there later
follow by themselves) and the same `--config` file, so that a per-worker setting of the file
(`metrics_port`, a base; `engine_metrics_worker`) applies to each child as to worker 1 and not
worker 1's value to all, and a flag never outranks what the file or the environment gave worker 1.
The JWT secret is the one exception: worker 1's secret, whatever its source, goes to every child
through the environment (which outranks the file's [auth] secret_file), so all verify alike.
And the marker that makes a child end with us even after our kill -9 (sidecar/shell/lifetime.py).
Spawned from the main thread (PR_SET_PDEATHSIG fires when the forking *thread* ends). A child
that dies is started again after a back-off (doubled while it keeps dying at once, back to
the first step once it has run STABLE_S), like the engine. SIGHUP (a renewed TLS
certificate) is passed on to them. On stop they get SIGTERM (they close their connections with
1001) and are waited for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from sidecar.shell import lifetime
from sidecar.wire import auth

log = logging.getLogger("dgdo.workers")

# Flags of `dgdo sidecar` a child gets from us directly (or, the secret file, not at all: the
# secret itself goes through the environment), never copied from `dgdo run`'s.
OWN_FLAGS = frozenset(
    {"--control", "--worker", "--port", "--status-interval", "--config", "--secret-file", "--help", "-h", "--version"}
)
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0
# A worker that ran this long before it died was not failing at start: it is restarted after the
# first back-off step again, not after the longest one an earlier run of failures reached.
STABLE_S = 30.0
STOP_WAIT_S = 10.0


def child_args(sidecar_parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """`--config` and the `dgdo sidecar` flags the user gave (`args.from_flags`, config.resolve)."""
    out = ["--config", str(args.config)] if getattr(args, "config", None) else []
    given = getattr(args, "from_flags", set())
    for action in sidecar_parser._actions:  # (argparse has no public list of a parser's options)
        flags = [f for f in action.option_strings if f.startswith("--")]
        if not flags or flags[0] in OWN_FLAGS or action.dest not in given:
            continue
        value: Any = getattr(args, action.dest)
        if isinstance(action, argparse._StoreConstAction):  # a switch (store_true, config's bools)
            if value is not None and value == action.const:
                out.append(flags[0])
        elif value is not None and action.nargs is None:
            out += [flags[0], str(value)]
    return out


def child_env(secret: str | None) -> dict[str, str]:
    """The children's environment: ours, worker 1's JWT secret (when auth is on), the lifetime marker."""
    return lifetime.child_env({**os.environ, **({auth.ENV_SECRET: secret} if secret is not None else {})})


class WorkerProcesses:
    """Workers 2..N of `dgdo run` (or the first N - 1 ids beside `own_id`): started, restarted when
    they die, stopped at the end."""

    def __init__(
        self, control: str, port: int, count: int, extra: list[str], own_id: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.control = control
        self.env = env if env is not None else lifetime.child_env()
        self.port = port
        # The first count - 1 ids that are not ours: 2..N beside the usual worker 1.
        self.ids = [w for w in range(1, count + 1) if w != own_id][: count - 1]
        self.extra = extra
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}  # worker -> when its process was spawned (self.clock)
        self.clock = time.monotonic
        self.restarts = 0
        self._stopping = False

    def command(self, worker: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sidecar",
            "sidecar",
            "--control",
            self.control,
            "--worker",
            str(worker),
            "--port",
            str(self.port),
            "--status-interval",
            "0",
            *self.extra,
        ]

    def spawn(self, worker: int) -> subprocess.Popen[bytes]:
        # Its own session: a Ctrl-C at the terminal reaches only `dgdo run`, which stops us in order.
        # Born with SIGHUP blocked (a mask survives exec): a reload passed on while it starts waits,
        # pending, until its handler is in place and cli.serve() unblocks it, instead of ending it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            proc = subprocess.Popen(self.command(worker), start_new_session=True, env=self.env)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.procs[worker] = proc
        self.started[worker] = self.clock()
        print(f"[dgdo] worker {worker} pid={proc.pid}", flush=True)
        return proc

    def start(self) -> None:
        for worker in self.ids:
            self.spawn(worker)

    async def watch(self, worker: int, exited: Any) -> None:
        """Restarts worker `worker` whenever it exits, until stop(); `exited(proc)` awaits a process's end."""
        backoff = FIRST_BACKOFF_S
        while not self._stopping:
            rc = await exited(self.procs[worker])
            if self._stopping:
                return
            ran = self.clock() - self.started.get(worker, self.clock())
            if ran >= STABLE_S:
                backoff = FIRST_BACKOFF_S
            log.error("! worker %d exited with status %s after %.1f s; restarting in %.1f s", worker, rc, ran, backoff)
            await self.sleep(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)
            while not self._stopping:
                try:
                    self.spawn(worker)
                except OSError as e:  # no fork (memory, process limit): try again, never give the worker up
                    log.error("! worker %d could not be started: %s; retrying in %.1f s", worker, e, backoff)
                    await self.sleep(backoff)
                    backoff = min(MAX_BACKOFF_S, backoff * 2)
                    continue
                self.restarts += 1
                break

    async def sleep(self, seconds: float) -> None:
        """The back-off's wait (a method: tests replace it to run without waiting)."""
        await asyncio.sleep(seconds)

    def signal(self, sig: int) -> None:
        """Passes `sig` (SIGHUP: reload the TLS certificate) on to every live worker."""
        for worker, p in self.procs.items():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)
                    log.info("passed signal %d on to worker %d", sig, worker)

    async def stop(self, exited: Any) -> None:
        """SIGTERM to every worker, then waits (SIGKILL after STOP_WAIT_S)."""
        self._stopping = True
        live = [p for p in self.procs.values() if p.poll() is None]
        for p in live:
            p.terminate()
        for p in live:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited(p), STOP_WAIT_S)
            if p.poll() is None:
                p.kill()
                p.wait()
