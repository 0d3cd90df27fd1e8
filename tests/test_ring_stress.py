"""Cross-process stress at full speed, both directions, and parking under bursty traffic.

Counts scale with DGDO_STRESS (default 1 = CI-sized, a few seconds; 20 = millions of records).
"""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
from pathlib import Path

import uvloop
from fakeengine import FakeEngine
from ringcheck import body, check

from sidecar.engine import ring
from sidecar.engine.link import EngineLink

SCALE = int(os.environ.get("DGDO_STRESS", "1"))
CAPACITY = 64 * 1024
MAX_PAYLOAD = 1000  # with CAPACITY/8 = 8192 the largest allowed record is exercised separately below


def _peer(ringpeer: Path, mode: str, seg: ring.Segment, *args: str, bell: int) -> subprocess.Popen[bytes]:
    """dgdo-ringpeer on `seg` (a memfd: the child inherits its fd, as the sidecar receives the engine's)."""
    return subprocess.Popen([ringpeer, mode, "--ring-fd", str(seg.fd), *args, "--wake-fd", str(bell)],
                            pass_fds=[bell, seg.fd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_cpp_to_cpp_no_loss_dup_reorder_or_tear(ringpeer_bin: Path) -> None:
    count = 500_000 * SCALE
    seg = ring.Segment.create(CAPACITY)
    bell_c = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    consumer = _peer(ringpeer_bin, "consume", seg, "--count", str(count),
                     "--max-payload", str(MAX_PAYLOAD), "--timeout-s", "120", bell=bell_c)
    producer = _peer(ringpeer_bin, "produce", seg, "--count", str(count),
                     "--max-payload", str(MAX_PAYLOAD), bell=bell_c)
    _p_out, p_err = producer.communicate(timeout=300)
    c_out, c_err = consumer.communicate(timeout=300)
    assert producer.returncode == 0, p_err.decode()
    assert consumer.returncode == 0, c_err.decode()
    assert c_out.decode().split()[:2] == ["consumed", str(count)]
    seg.close()
    os.close(bell_c)


def test_python_to_cpp_batches_at_full_speed(ringpeer_bin: Path) -> None:
    count = 100_000 * SCALE
    seg = ring.Segment.create(CAPACITY)
    bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    peer = _peer(ringpeer_bin, "consume", seg, "--count", str(count),
                 "--max-payload", str(MAX_PAYLOAD), "--timeout-s", "120", bell=bell)
    producer = ring.Producer(seg)
    pending = bytearray()
    seq = 0
    while seq < count or pending:
        while seq < count and len(pending) < 16 * 1024:  # batches, as the sidecar publishes them
            ring.frame(pending, 7, body(seq, MAX_PAYLOAD))
            seq += 1
        n, _status = producer.publish(pending)
        del pending[:n]
        if producer.should_wake():
            os.eventfd_write(bell, 1)
        assert peer.poll() is None or peer.returncode == 0, peer.stderr.read().decode() if peer.stderr else ""
    out, err = peer.communicate(timeout=120)
    assert peer.returncode == 0, err.decode()
    assert out.decode().split()[:2] == ["consumed", str(count)]
    seg.close()
    os.close(bell)


def test_cpp_to_python_drains_in_batches_without_loss(ringpeer_bin: Path) -> None:
    count = 100_000 * SCALE
    seg = ring.Segment.create(CAPACITY)
    bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    consumer = ring.Consumer(seg)
    peer = _peer(ringpeer_bin, "produce", seg, "--count", str(count),
                 "--max-payload", str(MAX_PAYLOAD), bell=bell)
    expected = 0
    while expected < count:
        n = consumer.drain()
        if n:
            for rec in consumer.records(n):
                check(expected, rec.type, rec.body, MAX_PAYLOAD)
                expected += 1
        elif consumer.park():
            assert select.select([bell], [], [], 10)[0], f"stalled at {expected} with the producer alive"
            os.eventfd_read(bell)
            consumer.unpark()
    _out, err = peer.communicate(timeout=60)
    assert peer.returncode == 0, err.decode()
    seg.close()
    os.close(bell)


# Lost wake-up tests: after every burst (and its doorbell) the producer waits up to this long for
# the consumer to release all of it before its idle gap, and fails (exit 4) if it does not. A
# wake-up lost while the consumer parks is then a failure, not a delay the next burst hides.
DRAIN_DEADLINE_MS = "2000"
WAKE_BURSTS = 55_000 * SCALE  # up to 55k park/unpark cycles in CI, within about a minute
# That the park/wake path was exercised at all (a consumer that never parked would pass the rest
# vacuously): thousands of doorbell wake-ups. How many of the bursts find the consumer parked is a
# timing figure, not a correctness one: it depends on how soon the consumer is back in its park
# after a drain, against the producer's 10 µs gap (the Python consumer found 75 % of them parked
# with two test suites beside it on 2 vCPUs, under the 90 % asked here before). A lost wake-up
# fails the producer (exit 4) instead.
MIN_WAKEUPS = WAKE_BURSTS // 10


def test_no_lost_wakeup_when_the_consumer_parks_between_every_burst(ringpeer_bin: Path) -> None:
    count = WAKE_BURSTS * 3
    seg = ring.Segment.create(4096)
    bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    consumer = _peer(ringpeer_bin, "consume", seg, "--count", str(count),
                     "--max-payload", "64", "--timeout-s", "10", bell=bell)
    producer = _peer(ringpeer_bin, "produce", seg, "--count", str(count),
                     "--max-payload", "64", "--burst", "3", "--gap-us", "10",
                     "--await-drain-ms", DRAIN_DEADLINE_MS, bell=bell)
    _p_out, p_err = producer.communicate(timeout=300)
    if producer.returncode != 0:
        consumer.kill()
    c_out, c_err = consumer.communicate(timeout=300)
    assert producer.returncode == 0, f"producer failed (4 = a burst never drained): {p_err.decode()}"
    assert consumer.returncode == 0, f"consumer stalled or failed (3 = stall): {c_err.decode()}"
    words = c_out.decode().split()
    assert words[:2] == ["consumed", str(count)]
    wakeups = int(words[words.index("wakeups") + 1])
    assert wakeups >= MIN_WAKEUPS, f"only {wakeups} wake-ups for {WAKE_BURSTS} bursts"
    seg.close()
    os.close(bell)


def test_no_lost_wakeup_through_the_sidecars_doorbell_path(ringpeer_bin: Path) -> None:
    """The production consumer: EngineLink's doorbell reader and park under uvloop, fed by a C++ producer."""
    count = WAKE_BURSTS * 4
    engine = FakeEngine(capacity=4096)
    result: dict[str, object] = {}

    async def main() -> None:
        seen = [0]
        errors: list[str] = []

        def on_records(c: ring.Consumer, n: int) -> None:
            for rec in c.records(n):
                try:
                    check(seen[0], rec.type, rec.body, 64)
                except AssertionError as e:  # raised in a reader callback it would only be logged
                    errors.append(str(e))
                seen[0] += 1

        link = EngineLink(engine.path, 1, on_records, reply_spin_us=0)
        await link.attach(timeout=5)
        peer = _peer(ringpeer_bin, "produce", engine.out_seg, "--count", str(count),
                     "--max-payload", "64", "--burst", "4", "--gap-us", "10",
                     "--await-drain-ms", DRAIN_DEADLINE_MS, bell=engine.worker_bell)
        while peer.poll() is None:
            await asyncio.sleep(0.02)
        _out, err = peer.communicate()
        link.close()
        result.update(rc=peer.returncode, err=err.decode(), seen=seen[0], errors=errors, wakeups=link.wakeups)

    try:
        uvloop.run(main())
    finally:
        engine.close()
    assert result["rc"] == 0, f"producer failed (4 = a burst never drained: lost wake-up): {result['err']}"
    assert not result["errors"], result["errors"][:3]
    assert result["seen"] == count
    assert result["wakeups"] >= MIN_WAKEUPS, f"only {result['wakeups']} wake-ups for {WAKE_BURSTS} bursts"


def test_largest_allowed_record_crosses_processes_intact(ringpeer_bin: Path) -> None:
    capacity = 4096
    largest = capacity // 8 - ring.RECORD_HEADER - 8  # max record minus header minus the seq field
    seg = ring.Segment.create(capacity)
    bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    peer = _peer(ringpeer_bin, "consume", seg, "--count", "2000",
                 "--max-payload", str(largest), "--timeout-s", "30", bell=bell)
    producer = ring.Producer(seg)
    for seq in range(2000):
        data = body(seq, largest)
        while producer.write(7, data) == ring.FULL:
            if producer.should_wake():
                os.eventfd_write(bell, 1)
        if producer.should_wake():
            os.eventfd_write(bell, 1)
    _out, err = peer.communicate(timeout=60)
    assert peer.returncode == 0, err.decode()
    seg.close()
    os.close(bell)
