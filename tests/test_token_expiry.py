"""An open connection ends when its token expires: the real engine and sidecar, `websockets` clients.

The token is checked at the upgrade only; the sidecar's once-a-second tick closes a connection
whose token the upgrade would now refuse (its `exp` plus the 5 s of clock skew it allows) with an
`unauthorized` error and close 4401. Its orders stay, and the app resumes with a fresh token and
`?last_seq`. The session core's side, with the clock fed in: test_session_core.py.
"""

from __future__ import annotations

import time

import pytest
from conftest import Stack, mint
from rides import NEAR, accept, online_driver, request_ride
from test_resume import drive
from websockets.exceptions import ConnectionClosed
from wsclient import AppClient

from sidecar.wire import auth


async def pongs(app: AppClient, n: int) -> None:
    """The connection is alive and served: an app-level `ping` is answered, and so is a WebSocket PING."""
    await app.send({"type": "ping", "id": f"alive{n}"})
    await app.expect("pong", id=f"alive{n}")
    await (await app.ws.ping())


async def test_a_connection_is_closed_4401_when_its_token_expires_and_its_order_waits_for_it(stack: Stack) -> None:
    d = await online_driver(stack, "d1", NEAR)  # the bystander: a token for an hour
    short = mint("passenger", "p1", ttl_s=2)
    deadline = auth.expires_at(auth.verify(short, stack.jwt_secret))
    p = await AppClient.open(f"{stack.url}/ws/passenger/p1", token=short)
    await p.expect("welcome", id="p1")
    order = await request_ride(p)
    await d.expect("new_order", order_id=order)
    accepted = await accept(d, order, p)
    await pongs(d, 1)
    await pongs(p, 1)

    with pytest.raises(ConnectionClosed):  # the sidecar closes it: nothing here does
        while True:
            await p.recv(timeout=30)
    closed_at = time.time()
    assert (p.ws.close_code, p.ws.close_reason) == (4401, "unauthorized: token expired")
    last = p.seen[-1]
    assert (last["type"], last["code"], last["message"]) == ("error", "unauthorized", "token expired")
    # Not before the upgrade would refuse the token, and within the tick (a second) after, give or take
    # the scheduling of a loaded machine.
    assert deadline - 0.05 <= closed_at < deadline + 2.5, (deadline, closed_at)
    await pongs(d, 2)

    # Its order went on without it; a fresh token and ?last_seq bring back what it missed.
    await drive(d, order, "order_arrived")
    back = await AppClient.open(
        f"{stack.url}/ws/passenger/p1?last_seq={accepted['seq']}", token=mint("passenger", "p1")
    )
    welcome = await back.expect("welcome")
    assert welcome["resumed"] is True and welcome["seq"] == accepted["seq"] + 1
    assert (await back.expect("order_update", order_id=order))["status"] == "arrived"
    await pongs(back, 1)
    await pongs(d, 3)
    status, body = stack.http_get("/metrics")
    assert status == 200 and b'dgdo_closed_total{reason="token_expired",worker="1"} 1.0' in body
    await back.close()
    await d.close()
