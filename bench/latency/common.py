"""Shared pieces of the latency suite: records the engine stand-in sends, stream framing, stats.

The bench carries the engine's commit time to the app client inside the record
itself: the engine stand-in (feeder.py) writes ``order_id = commit_real_ns``
into every NEW_ORDER and DRIVER_POSITION it publishes, and the sidecar passes
order_id through unchanged to the app message. The client then computes
``time.time_ns() at frame receipt - order_id``: engine commit -> app holds the
frame, on one host, CLOCK_REALTIME on both ends, with no sidecar change.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from sidecar.engine import records as R  # noqa: E402
from sidecar.engine.ring import aligned, frame  # noqa: E402
from sidecar.shell import lifetime  # noqa: E402

# Set as DGDO_JWT_SECRET in every sidecar the bench starts; clients mint tokens with it.
JWT_SECRET = "dgdo-bench-secret-0123456789abcdef-not-for-production"
_HDR = struct.Struct("<ii")
PICKUP = (38.5598, 68.7870)
DROPOFF = (38.5750, 68.7950)


def driver_id(i: int) -> str:
    return f"bd{i}"


def passenger_id(i: int) -> str:
    return f"bp{i}"


def new_order(to_driver: str, commit_real_ns: int, commit_mono_ns: int) -> bytes:
    """A NEW_ORDER body, routed by role + id, whose order_id is the commit stamp."""
    meta = (commit_mono_ns, commit_real_ns, 0, 1, R.Role.DRIVER, to_driver.encode())
    return R.OUT_NEW_ORDER.pack(*meta, commit_real_ns, b"bench-passenger", *PICKUP, *DROPOFF, 612.3, 165.0, 15.0,
                                commit_real_ns)


def driver_position(to_passenger: str, commit_real_ns: int, commit_mono_ns: int, worker: int = 1) -> bytes:
    meta = (commit_mono_ns, commit_real_ns, 0, worker, R.Role.PASSENGER, to_passenger.encode())
    return R.OUT_DRIVER_POSITION.pack(*meta, commit_real_ns, b"bench-driver", 38.5605, 68.784, 80.0, 31.0)


def order_update(to_passenger: str, order_id: int, seq: int, commit_real_ns: int = 0, commit_mono_ns: int = 0,
                 worker: int = 1) -> bytes:
    """An ORDER_UPDATE (driver arriving) for a passenger on `worker`, routed by role + id; `seq` is its last field."""
    meta = (commit_mono_ns, commit_real_ns, 0, worker, R.Role.PASSENGER, to_passenger.encode())
    return R.OUT_ORDER_UPDATE.pack(*meta, order_id, R.OrderStatus.ARRIVING, 0, b"bench-driver",
                                   to_passenger.encode(), seq)


ORDER_UPDATE_SEQ = R.OUT_ORDER_UPDATE.size - 8  # the seq, last in ORDER_UPDATE

_STAMPS = struct.Struct("<QQ")  # dgdo_out_meta.commit_mono_ns, commit_real_ns
_OID = struct.Struct("<Q")  # order_id, at body offset 64 in NEW_ORDER and DRIVER_POSITION
NEW_ORDER_SEQ = R.OUT_NEW_ORDER.size - 8  # the seq, last in NEW_ORDER


def session_state(open_body: bytes | memoryview) -> bytes:
    """What the engine answers a SESSION_OPEN with, for a stand-in: not resumed, seq 0."""
    _recv, _corr, conn, worker, role, actor, _flags, _last = R.IN_SESSION.unpack(open_body)
    now = time.time_ns()
    return R.OUT_SESSION.pack(time.monotonic_ns(), now, conn, worker, role, actor, 0, 0, 1)


def batch(offers: list[str], positions: list[str]) -> bytes:
    """One engine batch, every record stamped with the same commit time, as the engine's publish() does.

    The records are built first and stamped last (three fields patched in place per record), so
    the Python cost of building them is not counted: like the engine, which stamps right
    before its ring writes.
    """
    buf = bytearray()
    at = []
    for d in offers:
        at.append(len(buf) + 8)
        frame(buf, R.T.OUT_NEW_ORDER, new_order(d, 0, 0))
    n_offers = len(at)
    for p in positions:
        at.append(len(buf) + 8)
        frame(buf, R.T.OUT_DRIVER_POSITION, driver_position(p, 0, 0))
    mono, real = time.monotonic_ns(), time.time_ns()
    stamps, oid = _STAMPS.pack_into, _OID.pack_into
    for i, off in enumerate(at):
        stamps(buf, off, mono, real)
        oid(buf, off + 64, real)
        if i < n_offers:  # reliable: a seq that grows per driver, as the engine's does
            oid(buf, off + NEW_ORDER_SEQ, real + i)
    return bytes(buf)


def complete_prefix(buf: bytearray | bytes) -> int:
    """Bytes at the start of `buf` that hold whole records (for stream transports)."""
    off, n = 0, len(buf)
    while n - off >= 8:
        length = _HDR.unpack_from(buf, off)[0]
        step = aligned(length)
        if length < 8 or n - off < step:
            break
        off += step
    return off


def token(role: str, sub: str) -> str:
    import jwt

    return jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + 86400}, JWT_SECRET, "HS256")


def percentiles(samples: list[int], ps: tuple[float, ...] = (50, 90, 99, 99.9)) -> list[int]:
    """Nearest-rank percentiles."""
    if not samples:
        return [0 for _ in ps]
    s = sorted(samples)
    n = len(s)
    return [s[min(n - 1, max(0, -(-int(p * n) // 100) - 1))] for p in ps]


def machine() -> dict[str, str | int]:
    return describe()


def log(msg: str) -> None:
    """Progress for a person: stderr, so stdout stays the report."""
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment for a process a bench starts: the bench's secret, unbuffered output, and
    the marker that makes it end with the bench (sidecar/shell/lifetime.py)."""
    return lifetime.child_env(dict(os.environ, DGDO_JWT_SECRET=JWT_SECRET, PYTHONUNBUFFERED="1"))
