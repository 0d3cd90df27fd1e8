"""Which ports a worker listens on, and whether the public one is ours to take.

SO_REUSEPORT lets N workers share the public port (the kernel spreads new connections over
them), but it would also let an unrelated DG Do stack bind a port a live one holds, and the two
would silently split the traffic. So `dgdo run` first binds a probe socket *without*
SO_REUSEPORT (`check_free`): a port anyone listens on refuses it with EADDRINUSE, whatever the
listener's options; then it binds with SO_REUSEPORT only when it has sibling workers to share
with. `dgdo sidecar` (a systemd template worker, siblings expected) does not probe.

A `metrics_port` setting is a base, not a port: one config file is shared by every worker
(the systemd template reads one [sidecar] table), so worker N serves its own /metrics on
base + N - 1 (`worker_metrics_port`); 0 is "any free port" for each.
"""

from __future__ import annotations

import socket


def check_free(host: str, port: int) -> None:
    """Raises OSError (EADDRINUSE, EACCES, EADDRNOTAVAIL...) unless every address of host:port can
    be bound by a socket without SO_REUSEPORT. Port 0 (any free one) is always free."""
    if port == 0:
        return
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, type_, proto, _canon, addr in infos:
        with socket.socket(family, type_, proto) as probe:
            # As the loop's create_server does: SO_REUSEADDR (a port whose last connections are in
            # TIME_WAIT is free; one with a listener is not), and a v6 socket for v6 only.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(addr)


def worker_metrics_port(base: int | None, worker: int) -> int | None:
    """Worker `worker`'s own metrics port from the `metrics_port` base (None: no metrics port, 0:
    any free one). Raises ValueError when it would pass 65535."""
    if not base:
        return base
    port = base + worker - 1
    if port > 65535:
        raise ValueError(f"metrics_port {base} + worker {worker} - 1 = {port} is past 65535")
    return port
