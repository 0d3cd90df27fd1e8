"""Limits without I/O: token buckets, the rate limiter's verdicts, the slow reader's outbox."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.session.limits import (
    ABUSE,
    ADMIT,
    ANSWERED_REFUSALS,
    DROPPED,
    LIMITED,
    PAUSE_MAX_S,
    PAUSE_MIN_S,
    Outbox,
    Rate,
    RateLimiter,
    TokenBucket,
)


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


def test_a_position_flood_is_limited_answered_a_few_times_then_closed_as_abuse() -> None:
    rl = RateLimiter(0.0, positions=Rate(10, 20), abuse_after=100)
    verdicts = [rl.check(0.0, position=True) for _ in range(20 + 100)]
    assert verdicts[:20] == [ADMIT] * 20
    assert verdicts[20 : 20 + ANSWERED_REFUSALS] == [LIMITED] * ANSWERED_REFUSALS  # the app is told why
    assert verdicts[20 + ANSWERED_REFUSALS : 119] == [DROPPED] * (99 - ANSWERED_REFUSALS)  # then nothing is sent
    assert verdicts[119] is ABUSE


def test_admitted_messages_in_between_do_not_hide_a_flood() -> None:
    # 72k messages/s against a bucket refilling at 2000/s: every ~36th is admitted. The old rule
    # ("100 refusals in a row") never fired; a sliding window closes it within its first second.
    rl = RateLimiter(0.0, messages=Rate(2000, 2000))
    now, step, admitted, verdict = 0.0, 1 / 72_000, 0, ADMIT
    while verdict is not ABUSE:
        now += step
        verdict = rl.check(now, position=False)
        admitted += verdict is ADMIT
        assert now < 1.0
    assert admitted > 2000  # the burst went through, and some refills after it


def test_a_slow_refusal_rate_is_never_abuse_and_answers_are_capped_per_window() -> None:
    # A driver sending 15 positions a second against 10/s is refused ~5 times a second, forever: limited, not closed.
    rl = RateLimiter(0.0, positions=Rate(10, 20), abuse_after=100)
    verdicts = [rl.check(i / 15, position=True) for i in range(15 * 120)]
    assert ABUSE not in verdicts
    assert verdicts.count(LIMITED) > 100 and DROPPED not in verdicts
    # 40 refusals within one window: only the first few are answered.
    rl = RateLimiter(0.0, positions=Rate(10, 1), abuse_after=1000)
    verdicts = [rl.check(0.5, position=True) for _ in range(41)][1:]
    assert verdicts.count(LIMITED) == ANSWERED_REFUSALS and verdicts.count(DROPPED) == 40 - ANSWERED_REFUSALS
    assert rl.check(1.5, position=True) is ADMIT  # a new window, a refilled bucket
    assert rl.check(1.5, position=True) is LIMITED  # answered again


def test_refusals_of_the_previous_window_count_by_how_much_of_it_is_still_covered() -> None:
    rl = RateLimiter(0.0, messages=Rate(1, 1), abuse_after=100)
    assert rl.check(0.0, False) is ADMIT
    assert ABUSE not in [rl.check(0.9, False) for _ in range(80)]  # 80 refused late in window 1
    # At 1.5 s half of window 1 is still covered: 40 + 60 new refusals reach 100 (the first is
    # admitted: the bucket refilled).
    verdicts = [rl.check(1.5, False) for _ in range(61)]
    assert verdicts[0] is ADMIT and verdicts[-1] is ABUSE and ABUSE not in verdicts[:-1]
    rl2 = RateLimiter(0.0, messages=Rate(1, 1), abuse_after=100)
    rl2.check(0.0, False)
    [rl2.check(0.9, False) for _ in range(80)]
    assert ABUSE not in [rl2.check(3.0, False) for _ in range(99)]  # two windows later: forgotten


def test_the_pause_after_a_refusal_lasts_until_the_refusing_bucket_refills_within_bounds() -> None:
    rl = RateLimiter(0.0, positions=Rate(10, 1), messages=Rate(2000, 2000))
    rl.check(0.0, True)
    assert rl.check(0.0, True) is LIMITED
    assert abs(rl.pause_s() - 0.1) < 1e-9  # a position token every 100 ms
    fast = RateLimiter(0.0, messages=Rate(2000, 1))
    fast.check(0.0, False)
    fast.check(0.0, False)
    assert fast.pause_s() == PAUSE_MIN_S  # 0.5 ms is too short a pause to relieve anyone
    slow = RateLimiter(0.0, messages=Rate(0.1, 1))
    slow.check(0.0, False)
    slow.check(0.0, False)
    assert slow.pause_s() == PAUSE_MAX_S


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
    out = [m for m, _stamp in box.drain()]
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
    assert [next(it)[0]["seq"] for _ in range(2)] == [0, 1]
    it.close()
    assert [m["seq"] for m, _stamp in box.drain()] == [2, 3, 4]


def test_each_frame_of_a_fragmented_message_costs_a_token() -> None:
    lim = RateLimiter(0.0, messages=Rate(per_s=1.0, burst=300.0), abuse_after=3)
    assert lim.check(0.0, False, frames=256) is ADMIT
    assert lim.check(0.0, False, frames=44) is ADMIT
    assert lim.check(0.0, False, frames=1) is LIMITED  # 300 tokens spent on two messages
    assert lim.check(0.0, False, frames=256) is LIMITED
    assert lim.check(0.0, False, frames=256) is ABUSE


class _CountingBucket:
    """The token bucket as a count and a stamp, refilled on every take, in exact arithmetic on the
    test's 10 ms grid: what TokenBucket must agree with. Floats here would make the reference itself
    wrong at the boundary: at 4e6 s of uptime, 0.3 s after an empty bucket of 10/s is 2.9999999981
    tokens in floats and exactly 3 on the grid (the case CI found)."""

    def __init__(self, rate: Rate, tick: int) -> None:
        self.per_tick = Fraction(int(rate.per_s), 100)
        self.burst = Fraction(int(rate.burst))
        self.tokens, self.tick = self.burst, tick

    def take(self, tick: int, cost: int = 1) -> bool:
        self.tokens = min(self.burst, self.tokens + (tick - self.tick) * self.per_tick)
        self.tick = tick
        need = min(Fraction(cost), self.burst)
        if self.tokens >= need:
            self.tokens -= need
            return True
        return False


@settings(max_examples=300, deadline=None)
@given(per_s=st.integers(1, 50), burst=st.integers(1, 40), start=st.sampled_from([0.0, 1e5, 4e6]),
       steps=st.lists(st.tuples(st.integers(0, 30), st.integers(1, 3)), min_size=1, max_size=300))
@example(per_s=10, burst=3, start=4e6, steps=[(0, 1), (0, 1), (0, 1), (30, 3)])
def test_the_bucket_gives_a_counting_token_buckets_verdicts(per_s: int, burst: int, start: float,
                                                           steps: list[tuple[int, int]]) -> None:
    # Times on a 10 ms grid and integer rates: the exact token count is a multiple of 0.01, so a real
    # shortfall is 0.01 of a token or more, far beyond the bucket's slack (0.001), and the slack
    # absorbs the float rounding of times up to 46 days of uptime when the exact count is enough.
    rate = Rate(float(per_s), float(burst))
    bucket, counting = TokenBucket(rate, start), _CountingBucket(rate, 0)
    ticks = 0
    for dt, cost in steps:
        ticks += dt
        now = start + ticks / 100
        assert bucket.take(now, cost) == counting.take(ticks, cost), (now, cost)


@settings(max_examples=300, deadline=None)
@given(positions=st.tuples(st.integers(1, 50), st.integers(1, 40)), messages=st.tuples(st.integers(1, 50),
       st.integers(1, 60)), start=st.sampled_from([0.0, 1e5, 4e6]),
       steps=st.lists(st.tuples(st.integers(0, 30), st.booleans(), st.integers(1, 3)), min_size=1, max_size=300))
def test_the_limiter_admits_as_its_two_buckets_take(positions: tuple[int, int], messages: tuple[int, int],
                                                    start: float, steps: list[tuple[int, bool, int]]) -> None:
    # RateLimiter.check writes the two takes out (the hot path): it must admit exactly when a message
    # bucket, then (a position) a position bucket, driven alongside by TokenBucket.take would.
    p_rate, m_rate = Rate(*map(float, positions)), Rate(*map(float, messages))
    lim = RateLimiter(start, positions=p_rate, messages=m_rate, abuse_after=10**9)
    p_bucket, m_bucket = TokenBucket(p_rate, start), TokenBucket(m_rate, start)
    ticks = 0
    for dt, position, frames in steps:
        ticks += dt
        now = start + ticks / 100
        message_ok = m_bucket.take(now, frames)
        expected = message_ok and (not position or p_bucket.take(now))
        assert (lim.check(now, position, frames) is ADMIT) == expected, (now, position, frames)
        if not expected:  # the bucket that refused: how long the shell stops reading (pause_s)
            assert lim.refused_by is (lim.positions if message_ok else lim.messages)
        assert (lim.messages.full_at, lim.positions.full_at) == (m_bucket.full_at, p_bucket.full_at)
