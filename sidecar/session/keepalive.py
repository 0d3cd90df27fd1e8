"""Keepalive, sans-I/O: which connections to PING, which to give up on.

A client silent for `idle_s` gets a WebSocket PING; one that has not answered it (PONG) within
`reply_s` is closed (1001, RFC 6455 §7.4.1 "going away") and dropped. picows can do this per
connection, with an asyncio task each that sleeps and wakes: ~1.9 KB of memory per idle
connection (bench/conns), a fifth of the budget. Here one periodic sweep over every connection
decides for all of them (a comparison or two each: ~3 ms for 10,000 connections), at the price
of acting up to one sweep interval late.

The shell keeps two numbers per connection (`Alive`: when it last heard from it, and when it
sent a PING still unanswered), calls `sweep()` every `interval_s` and sends what it returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class Alive(Protocol):
    last_rx: float  # monotonic seconds of the last frame received
    ping_at: float  # monotonic seconds of the PING still unanswered; 0.0 when none


A = TypeVar("A", bound=Alive)


class Keepalive:
    """Args:
    idle_s: silence after which a PING is sent.
    reply_s: how long a PING may go unanswered before the connection is closed.
    """

    __slots__ = ("idle_s", "reply_s")

    def __init__(self, idle_s: float, reply_s: float) -> None:
        self.idle_s = idle_s
        self.reply_s = reply_s

    @property
    def interval_s(self) -> float:
        """How often to sweep: a quarter of the shorter limit (acting at most 25 % late), 50 ms to 5 s."""
        return min(5.0, max(0.05, min(self.idle_s, self.reply_s) / 4))

    def sweep(self, now: float, conns: Iterable[A]) -> tuple[list[A], list[A]]:
        """(connections to PING now, connections to close); marks the pinged ones' `ping_at`."""
        ping: list[A] = []
        dead: list[A] = []
        idle_before = now - self.idle_s
        reply_before = now - self.reply_s
        for c in conns:
            if c.ping_at:
                if c.ping_at <= reply_before:
                    dead.append(c)
            elif c.last_rx <= idle_before:
                c.ping_at = now
                ping.append(c)
        return ping, dead

    @staticmethod
    def heard(c: Alive, now: float, pong: bool = False) -> None:
        """A frame came in (`pong`: a PONG, which answers the outstanding PING)."""
        c.last_rx = now
        if pong:
            c.ping_at = 0.0
