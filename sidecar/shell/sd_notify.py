"""systemd's readiness and watchdog protocol (sd_notify(3)), with a plain socket.

A `Type=notify` unit gives its main process `$NOTIFY_SOCKET` (an AF_UNIX datagram socket: a path,
or `@name` for an abstract one) and, with `WatchdogSec=`, `$WATCHDOG_USEC`. The process sends
newline-separated `KEY=VALUE` lines: `READY=1` when it serves, `STATUS=` for `systemctl status`,
`WATCHDOG=1` at least once per period or systemd kills and restarts it, `STOPPING=1` on the way
out. No libsystemd binding is needed for a sendto().

The pings come from a task on the event loop (`keep_alive`), not from a thread: what systemd
watches is that the loop turns. A loop wedged by a handler, or a process stopped with SIGSTOP,
stops pinging. Outside systemd `Notifier.from_env()` is disabled and sends nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, MutableMapping

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"
STATUS_EVERY_S = 1.0  # the status line, when it changed, at most this often


class Notifier:
    """Sends state to systemd's notify socket; every call is a no-op when there is none."""

    def __init__(self, address: str | None, watchdog_s: float = 0.0) -> None:
        self.address: str | None = None
        self.watchdog_s = 0.0
        self._sock: socket.socket | None = None
        if address and address[0] in "/@" and len(address) >= 2:
            # Abstract names start with a NUL byte in the sockaddr; systemd spells them with '@'.
            self.address = "\0" + address[1:] if address[0] == "@" else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)  # a stalled systemd never stalls the loop
            self.watchdog_s = watchdog_s

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier systemd set up for this process. The variables are removed from `environ`
        (default: ours): the processes we start (`dgdo run`'s engine, the demo) are not the
        service's main process and must not take them for theirs."""
        env = os.environ if environ is None else environ
        address = env.pop(ENV_SOCKET, None)
        usec = env.pop(ENV_WATCHDOG_USEC, "")
        pid = env.pop(ENV_WATCHDOG_PID, "")
        watchdog_s = 0.0
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(address, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """Sends `KEY=VALUE` lines as one datagram; False when there is nobody to tell or it failed."""
        if self._sock is None or self.address is None or not lines:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode() + b"\n", self.address)
        except OSError:
            return False  # a lost ping is repeated at the next one; never worth a crash
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def one_line(text: str) -> str:
    """A STATUS= value must be one line (the protocol is line-based)."""
    return " ".join(text.split())


async def keep_alive(notifier: Notifier, status: Callable[[], str]) -> None:
    """Runs until cancelled: `WATCHDOG=1` every half watchdog period (one late turn of the loop
    must not cost a restart) and `STATUS=` when the line changed, at most once a second."""
    step = min(STATUS_EVERY_S, notifier.watchdog_s / 2) if notifier.watchdog_s > 0 else STATUS_EVERY_S
    loop = asyncio.get_running_loop()
    sent: str | None = None
    sent_at = float("-inf")
    while True:
        lines = ["WATCHDOG=1"] if notifier.watchdog_s > 0 else []
        now = loop.time()
        if now - sent_at >= STATUS_EVERY_S and (line := one_line(status())) != sent:
            lines.append(f"STATUS={line}")
            sent, sent_at = line, now
        if lines:
            notifier.send(*lines)
        await asyncio.sleep(step)
