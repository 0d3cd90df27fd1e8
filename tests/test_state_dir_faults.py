"""A state directory an operator cannot trust: unreadable files, a snapshot cut short, a full disk.

The real engine and sidecar processes on a real state directory (README "Durability"). What must
hold whatever goes wrong: an order an app was told about is never lost, the engine never starts
empty on a directory that held orders, and the operator is told what is wrong and what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import LineReader, engine_cmd, engine_refusal
from rides import DROPOFF, PICKUP
from test_engine_death import Split, answers, start_split, stop_split
from test_sd_notify import SystemdSide
from wsclient import AppClient

NOBODY = 65534  # the engine runs as a user of its own (the units' dgdo), never as root


@pytest.fixture
def state_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="dgdo-state-")
    os.chmod(d, 0o755)  # nobody (below) must reach what is inside
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def orders_made(s: Split, passenger: str, n: int) -> list[int]:
    """`n` ride requests acknowledged with an order id each (nobody drives: they stay searching)."""
    pax = await AppClient.open(f"{s.url}/ws/passenger/{passenger}")
    await pax.expect("welcome")
    ids = []
    for i in range(n):
        await pax.send({"type": "ride_request", "id": f"r{i}", "pickup": PICKUP, "dropoff": DROPOFF})
        ids.append((await pax.expect("ack", id=f"r{i}"))["order_id"])
    await pax.close()
    return ids


def start_refused(s: Split, *args: str, user: int | None = None) -> str:
    """Starts an engine that must refuse to start; returns its stderr."""
    cmd = engine_cmd(s.engine_bin, s.control, "--instance", s.instance, *args)
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    err = engine_refusal(cmd)
    # Its last line (what `systemctl status` shows) is the one that says what to do, not a generic one.
    assert "cannot start on" not in err, err
    return err


def files_of(state_dir: str) -> dict[str, bytes]:
    root = Path(state_dir)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.*")) if p.is_file()}


def stop_engine(s: Split) -> None:
    assert s.engine is not None
    s.engine.send_signal(signal.SIGTERM)
    assert s.engine.wait(10) == 0
    s.wait_health(503)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a file only root may read, an engine run as nobody")
async def test_a_journal_segment_the_engine_may_not_read_refuses_the_start_and_is_never_cut(
    engine_bin: Path, state_dir: str
) -> None:
    """A segment the engine's user cannot read (a backup put back as root, a chown gone wrong) is not
    a torn tail: cut, it took every order it held with it and the engine started empty."""
    s = start_split(engine_bin, "--state-dir", state_dir, "--fsync", "batch")
    try:
        await orders_made(s, "pm", 3)
        stop_engine(s)
        for p in [Path(state_dir), *Path(state_dir).rglob("*")]:
            os.chown(p, NOBODY, NOBODY)
        segment = sorted((Path(state_dir) / "journal").iterdir())[-1]
        os.chown(segment, 0, 0)
        segment.chmod(0o600)
        before = files_of(state_dir)

        err = start_refused(s, "--state-dir", state_dir, user=NOBODY)

        assert f"cannot read {segment}: Permission denied" in err, err
        assert "chown" in err  # what to do
        assert "tail cut" not in err
        assert files_of(state_dir) == before  # nothing cut, nothing removed
    finally:
        stop_split(s)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a file only root may read, an engine run as nobody")
def test_a_lock_file_the_engine_may_not_open_is_not_called_another_engine(engine_bin: Path, state_dir: str) -> None:
    s = Split(engine_bin, "@dgdo-test-lockperm", "lockperm", None, None, 0)  # type: ignore[arg-type]
    os.makedirs(f"{state_dir}/journal")
    os.makedirs(f"{state_dir}/snapshots")
    for d in (state_dir, f"{state_dir}/journal", f"{state_dir}/snapshots"):
        os.chown(d, NOBODY, NOBODY)
    Path(state_dir, "lock").touch(mode=0o600)  # root's

    err = start_refused(s, "--state-dir", state_dir, user=NOBODY)

    assert "in use by another engine" not in err, err
    assert f"{state_dir}/lock: Permission denied" in err, err
    assert "chown" in err


async def test_truncated_snapshots_the_journal_cannot_replace_refuse_the_start_and_say_to_restore_them(
    engine_bin: Path, state_dir: str
) -> None:
    """The journal before the oldest kept snapshot is gone: with every kept snapshot cut short, no
    replay from the start can replace them. The engine refuses (it must not start empty) and its
    advice must not be the one thing that loses every order: starting on an empty directory."""
    args = ("--state-dir", state_dir, "--fsync", "batch", "--snapshot-keep", "2", "--snapshot-every-records", "1")
    s = start_split(engine_bin, *args)
    journal = Path(state_dir) / "journal"
    try:
        await orders_made(s, "ps", 3)
        deadline = time.monotonic() + 10
        while min(journal.iterdir()).name == f"{1:020d}.dgj":  # a snapshot per tick: pruned soon
            assert time.monotonic() < deadline, "the journal's first segment was never pruned"
            time.sleep(0.05)  # files another process writes: nothing to await
        stop_engine(s)
        snaps = sorted((Path(state_dir) / "snapshots").iterdir())
        assert len(snaps) == 2
        for snap in snaps:
            snap.write_bytes(snap.read_bytes()[:100])  # cut short
        before = files_of(state_dir)

        err = start_refused(s, "--state-dir", state_dir)

        assert f"snapshot passed over: {snaps[-1]}: length 100 bytes" in err, err
        assert "from a backup" in err, err
        assert "to start empty" not in err, err
        assert files_of(state_dir) == before
    finally:
        stop_split(s)


def fill(path: Path) -> None:
    """Takes every free byte of the file system `path` is on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 512, 8, 1):  # down to what is left below a chunk
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


async def fill_up(disk: str, pax: AppClient) -> tuple[Path, list[str]]:
    """Fills `disk` (the state directory's, `small_disk`) while `pax` asks for rides, until a journal
    write must fail: the engine holds. Returns the file taking the space (unlink it: room again)
    and the ids of the requests sent."""
    filler = Path(disk) / "filler"
    fill(filler)
    flood = [f"f{i}" for i in range(100)]  # far more than the page the journal's file has left
    for rid in flood:
        await pax.send({"type": "ride_request", "id": rid, "pickup": PICKUP, "dropoff": DROPOFF})
    return filler, flood


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a sidecar page."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(port: int, name: str) -> float | None:
    """The value of `name`'s series of worker 1 on /metrics; None when absent."""
    for labels, v in re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", get(port, "/metrics")[1], re.M):
        if 'worker="1"' in labels.split(","):
            return float(v)
    return None


def until(what: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls another process's pages until `what` holds: nothing to await but their answers."""
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "never came"
        time.sleep(0.02)


def status_after_the_stall(systemd: SystemdSide, timeout: float = 10.0) -> str:
    """The engine's STATUS once it no longer says JOURNAL NOT WRITABLE (its last one then)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        d = systemd.recv(left)
        if d is not None and "STATUS" in d.fields and "JOURNAL" not in d.fields["STATUS"]:
            return d.fields["STATUS"]
    raise TimeoutError(f"STATUS still says the journal is not writable: {[g.fields for g in systemd.got[-5:]]}")


@pytest.mark.parametrize("fsync", ["batch", "interval"])
async def test_a_full_disk_holds_the_engine_refuses_commands_clearly_and_it_goes_on_once_space_is_back(
    engine_bin: Path, small_disk: str, tmp_path: Path, fsync: str
) -> None:
    systemd = SystemdSide(f"@dgdo-test-notify-{uuid.uuid4().hex[:12]}")
    """The journal's disk fills up while orders flow. Exiting would lose nothing, but restart the
    engine into the same full disk until its supervisor gives up, and leave the city down after the
    disk has room again. The engine holds instead: it applies nothing it could not journal, the
    sidecars refuse commands at once (engine_unavailable: an answer, not silence) and /healthz says
    503, the log says what is wrong and what to do; once there is room it goes on by itself with
    nothing lost, and every acknowledged order survives a kill -9 after that."""
    state_dir = f"{small_disk}/state"
    log = tmp_path / "engine.log"
    args = ("--state-dir", state_dir, "--fsync", fsync)
    s = start_split(engine_bin, *args, sidecar_args=("--engine-timeout-s", "0.5"))
    try:
        stop_engine(s)  # again, with its log kept
        s.engine = subprocess.Popen(
            engine_cmd(engine_bin, s.control, "--instance", s.instance, *args),
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            env={**os.environ, **systemd.env(watchdog_s=2.0)},  # as under Type=notify, WatchdogSec=2
        )
        assert s.engine.stdout is not None
        assert s.engine.stdout.readline().startswith(b"dgdo-engine ready")
        s.wait_health(200)
        pax = await AppClient.open(f"{s.url}/ws/passenger/pf")
        await pax.expect("welcome")
        before = {}
        for i in range(3):
            await pax.send({"type": "ride_request", "id": f"r{i}", "pickup": PICKUP, "dropoff": DROPOFF})
            before[f"r{i}"] = (await pax.expect("ack", id=f"r{i}"))["order_id"]

        filler, flood = await fill_up(small_disk, pax)
        s.wait_health(503)
        assert s.engine.poll() is None, log.read_text()
        said = log.read_text()
        assert "journal write failed: No space left on device" in said, said
        assert "free space on the state directory's disk" in said, said
        systemd.expect("STATUS", "JOURNAL NOT WRITABLE (No space left on device)")  # systemctl status
        systemd.expect("WATCHDOG", "1")  # still pinged: the loop is fine, a watchdog kill would only restart it
        # The sidecar says why, not only that the engine is silent: the operator paged needs no engine log.
        until(lambda: "journal not writable (No space left on device) for" in get(s.port, "/healthz")[1])
        assert get(s.port, "/healthz")[0] == 503
        until(lambda: metric(s.port, "dgdo_engine_journal_writable") == 0)
        assert metric(s.port, "dgdo_engine_journal_hold_seconds") is not None
        assert 'error="ENOSPC"' in get(s.port, "/metrics")[1]
        # What says so keeps coming while the engine holds, and is no heartbeat: still 503, commands
        # still refused at once.
        records = metric(s.port, "dgdo_engine_records_in_total")
        until(lambda: (metric(s.port, "dgdo_engine_records_in_total") or 0) > (records or 0))
        assert get(s.port, "/healthz")[0] == 503
        await pax.send({"type": "ride_request", "id": "full", "pickup": PICKUP, "dropoff": DROPOFF})
        refused = await pax.expect("error", id="full")
        assert refused["code"] == "engine_unavailable"

        filler.unlink()
        s.wait_health(200)
        until(lambda: metric(s.port, "dgdo_engine_journal_writable") == 1)
        assert metric(s.port, "dgdo_engine_journal_hold_seconds") is None
        assert get(s.port, "/healthz") == (200, "ok")
        assert "journal written again" in log.read_text()
        assert "JOURNAL" not in status_after_the_stall(systemd)
        # Every request of the flood has its one answer: an order, or "retry" (never both, never none).
        acked = {}
        for rid, got in (await answers(pax, flood)).items():
            assert len(got) == 1, got
            if got[0]["type"] == "ack":
                acked[rid] = got[0]["order_id"]
            else:
                assert got[0]["code"] == "engine_unavailable", got
        await pax.send({"type": "ride_request", "id": "full", "pickup": PICKUP, "dropoff": DROPOFF})
        after = (await pax.expect("ack", id="full"))["order_id"]
        ids = [*before.values(), *acked.values(), after]
        assert sorted(ids) == list(range(min(ids), min(ids) + len(ids)))  # none twice, none skipped
        before.update(acked)

        s.engine.send_signal(signal.SIGKILL)
        s.engine.wait()
        s.wait_health(503)
        s.start_engine(*args)
        s.wait_health(200)
        for rid, order_id in {**before, "full": after}.items():  # each retry: the very same order
            await pax.send({"type": "ride_request", "id": rid, "pickup": PICKUP, "dropoff": DROPOFF})
            assert (await pax.expect("ack", id=rid))["order_id"] == order_id
        await pax.close()
    finally:
        stop_split(s)
        systemd.close()


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
async def test_a_first_start_after_a_reboot_whose_id_jump_the_disk_refuses_holds_until_it_can(
    engine_bin: Path, state_dir: str
) -> None:
    """After a reboot the first thing an engine writes is the jump of ids and seqs (README
    "Recovery"). A disk that refuses it (full; here a file size limit below any segment, which fails
    the same write) made the engine exit at every start: a crash loop until systemd gave up. It holds
    instead, as on any write the disk refuses, and jumps once it can. (Its log goes to a pipe: a
    file would be held to the limit too.)"""
    args = ("--state-dir", state_dir, "--fsync", "batch")
    s = start_split(engine_bin, *args, sidecar_args=("--engine-timeout-s", "0.5"))
    try:
        before = await orders_made(s, "pj", 2)
        stop_engine(s)
        # Below a segment's 32-byte header: no journal write can succeed. (A limit that only the last
        # segment has reached moves the write to a new segment: test_journal.cpp.)
        limit = 16
        s.engine = subprocess.Popen(
            [
                "prlimit",
                f"--fsize={limit}:unlimited",
                "--",
                *engine_cmd(engine_bin, s.control, "--instance", s.instance, *args),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "DGDO_BOOT_ID": uuid.uuid4().hex},  # a boot this directory has not seen
        )
        log = LineReader(s.engine.stderr)
        assert s.engine.stdout is not None
        assert s.engine.stdout.readline().startswith(b"dgdo-engine ready"), log.all
        log.wait_for(r"the recovery's id jump cannot be written yet")
        s.wait_health(503)  # attached, but silent: commands are refused at once
        assert s.engine.poll() is None

        subprocess.run(["prlimit", "--pid", str(s.engine.pid), "--fsize=unlimited"], check=True)
        s.wait_health(200)
        log.wait_for(r"first start on this boot: order ids and seqs jump")
        pax = await AppClient.open(f"{s.url}/ws/passenger/pj")
        await pax.expect("welcome")
        await pax.send({"type": "ride_request", "id": "r0", "pickup": PICKUP, "dropoff": DROPOFF})
        assert (await pax.expect("ack", id="r0"))["order_id"] == before[0]
        await pax.send({"type": "ride_request", "id": "new", "pickup": PICKUP, "dropoff": DROPOFF})
        assert (await pax.expect("ack", id="new"))["order_id"] > before[-1] + 2**32 - 1  # jumped
        await pax.close()
    finally:
        stop_split(s)
