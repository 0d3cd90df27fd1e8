"""Child processes that end with their parent, even when the parent is killed with -9.

A parent that starts one of our programs (the sidecar, the demo, a bench feeder) puts its own
pid in the child's environment (`child_env()`); the child calls `die_with_parent_from_env()`
first thing. That asks the kernel for SIGTERM when the parent dies (PR_SET_PDEATHSIG; the
programs stop cleanly on SIGTERM) and then checks that the parent is still the one that asked:
a parent that died before the request (the child was reparented already) would otherwise never
send it. The engine does the same from its `--die-with-parent PID` flag.

The kernel sends the signal when the *thread* that forked the child ends, so a parent starts
such children from its main thread (or one that lives as long as it).
"""

from __future__ import annotations

import ctypes
import os
import signal

ENV = "DGDO_DIE_WITH_PARENT"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) plus the marker that makes the child end with us."""
    return {**(os.environ if env is None else env), ENV: str(os.getpid())}


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Gets `sig` when `parent` (our parent now) dies. Raises SystemExit when it is gone already."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent:
        raise SystemExit(f"parent process {parent} is gone; not starting")


def die_with_parent_from_env() -> None:
    """die_with_parent() for the pid in $DGDO_DIE_WITH_PARENT, if set; the variable is removed so
    that our own children do not take it for theirs."""
    raw = os.environ.pop(ENV, "")
    if raw.isdigit() and int(raw) > 0:
        die_with_parent(int(raw))
