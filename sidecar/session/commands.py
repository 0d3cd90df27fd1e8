"""Client commands -> engine records: which record each typed message becomes.

Pure functions of a message and a session's origin. The sidecar decides nothing about
dispatch: each command is one record for the engine, with a correlation id (`corr`)
when its outcome must be answered (`ack` / `error`).
"""

from __future__ import annotations

import hashlib

from sidecar.engine import records as R
from sidecar.wire.messages import (
    OrderAccept,
    OrderAction,
    OrderArrived,
    OrderCancel,
    OrderReject,
    TripComplete,
    TripStart,
)

COMMANDS: dict[type[OrderAction], R.Command] = {
    OrderAccept: R.Command.ACCEPT,
    OrderReject: R.Command.REJECT,
    OrderArrived: R.Command.ARRIVED,
    TripStart: R.Command.START,
    TripComplete: R.Command.COMPLETE,
    OrderCancel: R.Command.CANCEL,
}

# The engine's answer to a ride_request whose id names another live request of the passenger.
RIDE_ID_CONFLICT = "id: already used by this passenger for a different ride that is still active"


def idempotency_key(passenger_id: str, request_id: str | int | None) -> int:
    """A stable 64-bit key for (passenger, request id); 0 when there is no id.

    The engine holds a key as long as its order is live: a retry gets the same order, the
    same id with another pickup or dropoff gets `conflict`, and once the order has ended the
    id is free again (a new session that starts counting at "r1" again never gets an old order).
    """
    if request_id is None:
        return 0
    digest = hashlib.blake2b(f"{passenger_id}\0{request_id!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def order_command(origin: R.Origin, recv_ns: int, corr: int, m: OrderAction) -> bytes:
    reason = m.reason if isinstance(m, OrderCancel) else ""
    return R.order_command(origin, recv_ns, corr, m.order_id, COMMANDS[type(m)], reason)
