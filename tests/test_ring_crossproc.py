"""The ring across processes: C++ (dgdo-ringpeer) <-> Python (cffi), with wrap-around and doorbells."""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

from ringcheck import body, check

from sidecar.engine import ring

CAPACITY = 4096  # small, so thousands of records wrap the ring hundreds of times
MAX_PAYLOAD = 200


def _wait_readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_python_producer_to_cpp_consumer_wraps_without_loss(ringpeer_bin: Path) -> None:
    count = 20_000
    seg = ring.Segment.create(CAPACITY)
    bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    peer = subprocess.Popen(
        [ringpeer_bin, "consume", "--ring-fd", str(seg.fd), "--count", str(count),
         "--max-payload", str(MAX_PAYLOAD), "--wake-fd", str(bell), "--timeout-s", "60"],
        pass_fds=[bell, seg.fd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    producer = ring.Producer(seg)
    full = 0
    for seq in range(count):
        data = body(seq, MAX_PAYLOAD)
        while (rc := producer.write(7, data)) == ring.FULL:
            full += 1
            if producer.should_wake():
                os.eventfd_write(bell, 1)
            assert peer.poll() is None, peer.stderr.read().decode() if peer.stderr else ""
        assert rc == ring.OK
        if producer.should_wake():
            os.eventfd_write(bell, 1)
    out, err = peer.communicate(timeout=60)
    assert peer.returncode == 0, err.decode()
    assert out.decode().split()[:2] == ["consumed", str(count)]
    assert full > 0, "the test should have filled the ring at least once"
    seg.close()
    os.close(bell)


def test_cpp_producer_to_python_consumer_parks_and_is_woken(ringpeer_bin: Path) -> None:
    count = 5_000
    seg = ring.Segment.create(CAPACITY)
    bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    consumer = ring.Consumer(seg)
    peer = subprocess.Popen(
        [ringpeer_bin, "produce", "--ring-fd", str(seg.fd), "--count", str(count), "--max-payload", str(MAX_PAYLOAD),
         "--wake-fd", str(bell), "--burst", "50", "--gap-us", "2000"],
        pass_fds=[bell, seg.fd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    expected = 0
    wakeups = 0
    while expected < count:
        n = consumer.drain(limit=256)
        if n:
            for rec in consumer.records(n):
                check(expected, rec.type, rec.body, MAX_PAYLOAD)
                expected += 1
            continue
        if consumer.park():
            assert _wait_readable(bell, 10.0), f"stalled at record {expected}: no doorbell"
            os.eventfd_read(bell)
            consumer.unpark()
            wakeups += 1
    out, err = peer.communicate(timeout=30)
    assert peer.returncode == 0, err.decode()
    assert out.decode().split() == ["produced", str(count)]
    assert wakeups > 10, "bursts with gaps should have parked the consumer many times"
    assert consumer.drain() == 0
    seg.close()
    os.close(bell)


def test_a_parked_consumer_is_woken_by_one_record(ringpeer_bin: Path) -> None:
    seg = ring.Segment.create(CAPACITY)
    bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    consumer = ring.Consumer(seg)
    assert consumer.park() is True
    assert not _wait_readable(bell, 0.0)
    peer = subprocess.run(
        [ringpeer_bin, "produce", "--ring-fd", str(seg.fd), "--count", "1", "--max-payload", "8",
         "--wake-fd", str(bell)],
        pass_fds=[bell, seg.fd], capture_output=True, timeout=30,
    )
    assert peer.returncode == 0, peer.stderr.decode()
    assert _wait_readable(bell, 5.0), "the producer did not ring the doorbell of a parked consumer"
    assert os.eventfd_read(bell) == 1
    consumer.unpark()
    n = consumer.drain()
    recs = list(consumer.records(n))
    assert len(recs) == 1
    check(0, recs[0].type, recs[0].body, 8)
    seg.close()
    os.close(bell)
