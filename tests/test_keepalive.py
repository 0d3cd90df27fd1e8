"""Keepalive without I/O (sidecar/session/keepalive.py): who gets a PING, who is given up on, and when."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.session.keepalive import Keepalive


@dataclass(eq=False)
class Conn:
    last_rx: float = 0.0
    ping_at: float = 0.0


def test_a_silent_client_is_pinged_once_then_closed_if_it_never_answers() -> None:
    k = Keepalive(idle_s=30, reply_s=15)
    c = Conn(last_rx=0.0)
    assert k.sweep(29.9, [c]) == ([], [])
    assert k.sweep(30.0, [c]) == ([c], [])
    assert c.ping_at == 30.0
    assert k.sweep(40.0, [c]) == ([], [])  # waiting for the PONG: no second PING
    assert k.sweep(45.0, [c]) == ([], [c])


def test_a_pong_answers_the_ping_and_any_frame_resets_the_silence() -> None:
    k = Keepalive(idle_s=30, reply_s=15)
    c = Conn(last_rx=0.0)
    k.sweep(30.0, [c])
    Keepalive.heard(c, 31.0)  # a data frame is not the answer
    assert c.ping_at == 30.0
    Keepalive.heard(c, 32.0, pong=True)
    assert c.ping_at == 0.0
    assert k.sweep(45.0, [c]) == ([], [])  # alive: silent for 13 s only
    assert k.sweep(62.0, [c]) == ([c], [])


def test_the_sweep_interval_is_a_quarter_of_the_shorter_limit_within_bounds() -> None:
    assert Keepalive(30, 15).interval_s == 3.75
    assert Keepalive(0.3, 0.3).interval_s == 0.075
    assert Keepalive(0.01, 0.01).interval_s == 0.05
    assert Keepalive(600, 300).interval_s == 5.0


def test_one_sweep_decides_for_every_connection() -> None:
    k = Keepalive(idle_s=10, reply_s=5)
    fresh, idle, unanswered, answered_late = Conn(95.0), Conn(80.0), Conn(70.0, ping_at=90.0), Conn(70.0, ping_at=96.0)
    ping, dead = k.sweep(100.0, [fresh, idle, unanswered, answered_late])
    assert ping == [idle] and dead == [unanswered]
