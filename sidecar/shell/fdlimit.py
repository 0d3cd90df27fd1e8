"""File descriptors: the sidecar's open-files limit, and how many connections it can afford.

Every connection is one descriptor. A shell's `ulimit -n` is often 1024 (or 512), far below
what one worker serves (50k idle connections), so at start the sidecar raises its soft
RLIMIT_NOFILE to the hard limit (an unprivileged process may; systemd's `LimitNOFILE=` sets
both). Then it caps connections below that limit (`--max-connections`), keeping a reserve
for the descriptors that are not connections, so that it never reaches EMFILE: past the cap a
WebSocket upgrade gets HTTP 503 with Retry-After, which a client can act on, while running
out of descriptors would only drop connections unanswered and fail the engine link's
re-attach (its memfds and eventfds arrive as new descriptors).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

# Descriptors kept for what is not a connection: the engine link (control socket, two ring
# memfds, two eventfds), the event loop's epoll and self-pipe, stdio and logs, /proc reads of
# the metrics' process collector, the listening sockets, and libuv's spare descriptor for its
# EMFILE recovery. ~20 in use; the rest is headroom.
FD_RESERVE = 64
# A sanity ceiling for the default: more than one worker would ever carry (bench/conns: 50k
# idle connections per worker); above this an operator sets --max-connections on purpose.
MAX_CONNECTIONS_CEILING = 100_000


@dataclass(frozen=True, slots=True)
class NofileLimit:
    soft: int
    hard: int
    was: int  # the soft limit before raise_soft_limit()


def raise_soft_limit() -> NofileLimit:
    """Raises the soft RLIMIT_NOFILE to the hard limit (capped at what the kernel allows); never lowers it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:  # setrlimit refuses more than this
                target = int(f.read())
        except (OSError, ValueError):
            target = soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return NofileLimit(target, hard, soft)
        except (OSError, ValueError):  # a seccomp filter or a container that refuses it: keep what we have
            pass
    return NofileLimit(soft, hard, soft)


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE now in force: the number of descriptors this process may hold."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_CONNECTIONS_CEILING * 2 if soft == resource.RLIM_INFINITY else soft


def default_max_connections(limit: int | None = None) -> int:
    """min(open-files limit - FD_RESERVE, MAX_CONNECTIONS_CEILING), and at least 1."""
    limit = open_files_limit() if limit is None else limit
    return max(1, min(limit - FD_RESERVE, MAX_CONNECTIONS_CEILING))


def describe(limit: NofileLimit, max_connections: int, configured: bool) -> str:
    """The one start-up line: the limit, whether it was raised, and the cap that follows from it."""
    raised = f" (raised from {limit.was})" if limit.soft != limit.was else ""
    line = f"open files limit {limit.soft}{raised}, hard {limit.hard}; max connections {max_connections}"
    affordable = default_max_connections(limit.soft)
    if configured and max_connections > affordable:
        line += (f" (above the {affordable} the limit affords: past that, connections are dropped "
                 "unanswered; raise LimitNOFILE= / ulimit -n)")
    return line
