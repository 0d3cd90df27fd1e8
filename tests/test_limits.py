"""Limits without I/O: token buckets, the rate limiter's verdicts, the slow reader's outbox."""

from __future__ import annotations

from sidecar.session.limits import ABUSE, ADMIT, LIMITED, Outbox, Rate, RateLimiter, TokenBucket


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    b = TokenBucket(Rate(per_s=10, burst=20), now=0.0)
    assert sum(b.take(0.0) for _ in range(30)) == 20
    assert not b.take(0.05)  # half a token
    assert b.take(0.1)
    assert sum(b.take(1.1) for _ in range(30)) == 10  # one second refills ten
    assert sum(b.take(100.0) for _ in range(30)) == 20  # never more than the burst


def test_a_driver_reporting_every_second_is_never_limited() -> None:
    rl = RateLimiter(0.0)
    for i in range(600):
        assert rl.check(float(i), position=True) is ADMIT


def test_a_position_flood_is_limited_then_closed_as_abuse() -> None:
    rl = RateLimiter(0.0, positions=Rate(10, 20), abuse_after=100)
    verdicts = [rl.check(0.0, position=True) for _ in range(20 + 100)]
    assert verdicts[:20] == [ADMIT] * 20
    assert verdicts[20:119] == [LIMITED] * 99
    assert verdicts[119] is ABUSE


def test_an_admitted_message_resets_the_abuse_count() -> None:
    rl = RateLimiter(0.0, positions=Rate(10, 1), abuse_after=3)
    assert rl.check(0.0, True) is ADMIT
    assert [rl.check(0.0, True) for _ in range(2)] == [LIMITED, LIMITED]
    assert rl.check(0.0, False) is ADMIT  # commands have their own allowance
    assert [rl.check(0.0, True) for _ in range(2)] == [LIMITED, LIMITED]


def test_commands_are_limited_by_the_generous_message_bucket() -> None:
    rl = RateLimiter(0.0, messages=Rate(100, 5), abuse_after=1000)
    assert [rl.check(0.0, False) for _ in range(6)] == [ADMIT] * 5 + [LIMITED]
    assert rl.check(0.01, False) is ADMIT


def test_the_outbox_coalesces_positions_per_order_and_keeps_reliable_ones_in_order() -> None:
    box = Outbox(max_queued=10)
    box.put({"type": "driver_location", "order_id": 1, "lat": 1})
    box.put({"type": "order_update", "order_id": 1, "seq": 5})
    box.put({"type": "driver_location", "order_id": 1, "lat": 2})
    box.put({"type": "driver_location", "order_id": 2, "lat": 9})
    box.put({"type": "order_update", "order_id": 1, "seq": 6})
    box.put({"type": "estimate_update", "order_id": 1, "eta_s": 3})
    box.put({"type": "estimate_update", "order_id": 1, "eta_s": 2})
    out = list(box.drain())
    assert [(m["type"], m.get("seq"), m.get("lat"), m.get("eta_s")) for m in out] == [
        ("order_update", 5, None, None),
        ("driver_location", None, 2, None),  # the newest, after what preceded it
        ("driver_location", None, 9, None),
        ("order_update", 6, None, None),
        ("estimate_update", None, None, 2),
    ]
    assert len(box) == 0


def test_the_outbox_says_when_it_is_over_its_cap_and_never_drops_by_itself() -> None:
    box = Outbox(max_queued=3)
    assert all(box.put({"type": "new_order", "order_id": i}) for i in range(3))
    assert box.put({"type": "driver_location", "order_id": 0}) is False
    assert len(box) == 4


def test_draining_can_stop_early_and_keeps_the_rest() -> None:
    box = Outbox()
    for i in range(5):
        box.put({"type": "order_update", "seq": i})
    it = box.drain()
    assert [next(it)["seq"] for _ in range(2)] == [0, 1]
    it.close()
    assert [m["seq"] for m in box.drain()] == [2, 3, 4]


def test_each_frame_of_a_fragmented_message_costs_a_token() -> None:
    lim = RateLimiter(0.0, messages=Rate(per_s=1.0, burst=300.0), abuse_after=3)
    assert lim.check(0.0, False, frames=256) is ADMIT
    assert lim.check(0.0, False, frames=44) is ADMIT
    assert lim.check(0.0, False, frames=1) is LIMITED  # 300 tokens spent on two messages
    assert lim.check(0.0, False, frames=256) is LIMITED
    assert lim.check(0.0, False, frames=256) is ABUSE
