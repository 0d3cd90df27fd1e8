"""A flooding WebSocket client, as an attacker would write one: raw socket, frames built once, sent
at whatever rate the kernel takes them.

    python tests/flooder.py --url ws://127.0.0.1:PORT/ws/driver/ID?token=T --kind ping|wsping|garbage
                            [--seconds S] [--rate N]

Kinds: `ping` (the protocol's {"type": "ping"} text messages), `wsping` (WebSocket PING control
frames) and `garbage` (binary frames of random bytes: undecodable msgpack). It waits for the
welcome, floods until the server's CLOSE arrives (or `--seconds` pass) at full speed or at `--rate`
frames a second, and prints one JSON line:
{"close_code", "close_after_s" (first flood byte -> CLOSE received), "frames_sent", "replies"
(data frames received after the welcome), "rate_limited" (how many of them say so)}.

A separate process, so that the flood competes with the server for the CPU as a real client
would, and never with the test's own event loop.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import sys
import threading
import time
from urllib.parse import urlsplit

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0x1, 0x2, 0x8, 0x9


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame (RFC 6455 §5.2: clients mask every frame)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + body


def flood_buffer(kind: str, frames: int) -> bytes:
    """`frames` frames of one length (the pings' ids are zero-padded), so that bytes count frames."""
    out = bytearray()
    for i in range(frames):
        if kind == "ping":
            out += masked_frame(OP_TEXT, json.dumps({"type": "ping", "id": f"{i:06d}"}).encode())
        elif kind == "wsping":
            out += masked_frame(OP_PING, b"flood")
        else:
            out += masked_frame(OP_BINARY, os.urandom(24))
    return bytes(out)


class Reader(threading.Thread):
    """Reads the server's (unmasked) frames: counts data frames, notes the CLOSE."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.buf = bytearray(rest)
        self.welcomed = threading.Event()
        self.closed = threading.Event()
        self.close_code: int | None = None
        self.close_at = 0.0
        self.replies = 0
        self.rate_limited = 0

    def run(self) -> None:
        try:
            while not self.closed.is_set():
                if not self._parse():
                    data = self.sock.recv(65536)
                    if not data:
                        break
                    self.buf += data
        except OSError:
            pass
        self.closed.set()

    def _parse(self) -> bool:
        b = self.buf
        if len(b) < 2:
            return False
        op, n, off = b[0] & 0x0F, b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return False
            n, off = struct.unpack_from("!H", b, 2)[0], 4
        elif n == 127:
            if len(b) < 10:
                return False
            n, off = struct.unpack_from("!Q", b, 2)[0], 10
        if len(b) < off + n:
            return False
        payload = bytes(b[off : off + n])
        del b[: off + n]
        if op == OP_CLOSE:
            self.close_at = time.monotonic()
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.closed.set()
        elif op in (OP_TEXT, OP_BINARY):
            if not self.welcomed.is_set():
                self.welcomed.set()
            else:
                self.replies += 1
                self.rate_limited += b"rate_limited" in payload
        return True


def connect(url: str) -> tuple[socket.socket, bytes]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed during the upgrade")
        head += data
    status, _, rest = head.partition(b"\r\n\r\n")
    if b" 101 " not in status.split(b"\r\n")[0]:
        raise ConnectionError(status.split(b"\r\n")[0].decode())
    return sock, rest


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--kind", choices=["ping", "wsping", "garbage"], required=True)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=0.0, help="frames a second (0: as fast as the kernel takes them)")
    args = ap.parse_args()
    sock, rest = connect(args.url)
    reader = Reader(sock, rest)
    reader.start()
    if not reader.welcomed.wait(10):
        raise SystemExit("no welcome")
    frames_per_buffer = 4096
    data = memoryview(flood_buffer(args.kind, frames_per_buffer))
    frame_len = len(data) // frames_per_buffer
    sock.settimeout(0.05)  # to look at the reader between sends while the server is not reading us
    total = 0  # bytes sent
    t0 = time.monotonic()
    end = t0 + args.seconds
    try:
        while not reader.closed.is_set() and time.monotonic() < end:
            off = total % len(data)
            stop = len(data)
            if args.rate:  # paced: whole frames owed by now
                owed = int((time.monotonic() - t0) * args.rate) * frame_len - total
                if owed < frame_len:
                    time.sleep(0.0002)
                    continue
                stop = min(stop, off + owed)
            try:
                total += sock.send(data[off:stop])
            except TimeoutError:
                continue
    except OSError:
        pass  # the server hung up
    reader.closed.wait(5)
    print(json.dumps({"close_code": reader.close_code,
                      "close_after_s": reader.close_at - t0 if reader.close_at else None,
                      "frames_sent": total // frame_len,
                      "replies": reader.replies, "rate_limited": reader.rate_limited}), flush=True)
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
