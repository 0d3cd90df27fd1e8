"""Reaching one chosen sidecar worker on a port N workers share (SO_REUSEPORT), for the benches.

The kernel hands each new connection to a worker by a hash of its addresses and ports, so a
fixed *source port* always reaches the same worker while the workers' sockets stay the same.
`WorkerPorts.source_port(worker)` finds one: it opens a WebSocket upgrade (an admin, which opens
no app session) from a fresh port, reads the worker id from the 101's `X-Dgdo-Worker` header and
resets the connection (SO_LINGER 0: no TIME_WAIT holds the port). `get(worker, path)` then sends a
plain HTTP GET (/metrics) from that port and resets it the same way.
"""

from __future__ import annotations

import socket
import struct

HEADER = b"x-dgdo-worker:"
RST = struct.pack("ii", 1, 0)


def _socket(local_port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(120)
    s.bind(("127.0.0.1", local_port))
    return s


def _reset(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
    s.close()


def _read_head(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class WorkerPorts:
    """Source ports that reach each worker of the stack on `port` (admin `token` for the probes)."""

    def __init__(self, port: int, token: str, tries: int = 400) -> None:
        self.port = port
        self.token = token
        self.tries = tries
        self._ports: dict[int, int] = {}

    def source_port(self, worker: int) -> int:
        for _ in range(self.tries):
            if worker in self._ports:
                break
            s = _socket()
            local = s.getsockname()[1]
            s.connect(("127.0.0.1", self.port))
            s.sendall(f"GET /ws/admin?token={self.token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n".encode())
            head = _read_head(s)
            _reset(s)
            for line in head.lower().split(b"\r\n"):
                if line.startswith(HEADER):
                    self._ports.setdefault(int(line[len(HEADER):]), local)
        if worker not in self._ports:
            raise RuntimeError(f"no source port reached worker {worker} in {self.tries} tries")
        return self._ports[worker]

    def get(self, worker: int, path: str) -> bytes:
        """The body of GET `path` as worker `worker` answers it."""
        s = _socket(self.source_port(worker))
        s.connect(("127.0.0.1", self.port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = _read_head(s)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                       if line.startswith(b"content-length:")), None)
        while length is not None and len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        _reset(s)
        return body


def wait_workers(port: int, token: str, workers: int, timeout: float = 30, alive=lambda: True) -> WorkerPorts:
    """Waits until each of workers 1..N on `port` answers /healthz "ok" (attached), and returns the
    WorkerPorts that reached them. A worker still starting is not listening yet, so no source port
    reaches it: that is retried too, until `timeout` or until `alive()` turns false. Polling: it is
    another process's endpoint, with nothing to await but its answer."""
    import time

    ports = WorkerPorts(port, token, tries=50)
    deadline = time.monotonic() + timeout
    for w in range(1, workers + 1):
        while True:
            try:
                if ports.get(w, "/healthz") == b"ok":
                    break
            except (RuntimeError, OSError):
                pass
            if not alive() or time.monotonic() > deadline:
                raise TimeoutError(f"worker {w} of {workers} on port {port} never healthy")
            time.sleep(0.05)
    return ports
