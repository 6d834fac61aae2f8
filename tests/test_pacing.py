"""Token bucket pacing and per-source feedback limits, on a fake clock."""

from __future__ import annotations

import pytest

from mcast.pacing import SourceLimiter, TokenBucket


def test_bucket_paces_to_its_rate_after_the_burst():
    b = TokenBucket(rate=1000.0, burst=100.0, now=0.0)
    assert b.try_take(100, 0.0)
    assert not b.try_take(1, 0.0)
    assert b.ready_at(50) == pytest.approx(0.05)
    assert not b.try_take(50, 0.049)
    assert b.try_take(50, 0.0501)


def test_bucket_sends_at_most_rate_times_time_plus_burst():
    b = TokenBucket(rate=10_000.0, burst=1500.0, now=0.0)
    sent, t = 0, 0.0
    while t < 2.0:
        while b.try_take(1500, t):
            sent += 1500
        t += 0.0007
    assert sent + 1500 >= 2.0 * 10_000 and sent <= 2.0 * 10_000 + 1500


def test_zero_rate_means_unlimited():
    b = TokenBucket(rate=0.0, burst=1.0, now=0.0)
    assert all(b.try_take(10**9, 0.0) for _ in range(100))


def test_source_limiter_limits_each_source_on_its_own():
    lim = SourceLimiter(rate=10.0, burst=5.0)
    a = sum(lim.allow("a", 0.0) for _ in range(100))
    b = sum(lim.allow("b", 0.0) for _ in range(100))
    assert a == 5 and b == 5
    assert lim.refused == 190
    assert lim.allow("a", 0.2)  # refilled


def test_source_limiter_stays_bounded_under_spoofed_sources():
    lim = SourceLimiter(rate=10.0, burst=5.0, max_sources=64)
    for i in range(10_000):
        lim.allow(("198.18.0.9", i), 0.0)
    assert len(lim._buckets) <= 64


def test_rate_controller_cuts_once_per_interval_and_recovers_gently_above_the_last_cut():
    from mcast.pacing import RateController

    rc = RateController(1000.0, now=0.0, start_rate=800.0, min_rate=10.0)
    rc.congested(0.2)
    assert rc.rate == pytest.approx(560.0) and rc.ceiling == 800.0
    rc.congested(0.25)  # within the interval: one overrun episode is one cut
    assert rc.rate == pytest.approx(560.0) and rc.cuts == 1
    t, ticks = 0.35, 0
    while rc.rate < 0.9 * 800.0:
        rc.tick(t)
        t += 0.11  # a little over the interval, clear of float rounding
        ticks += 1
    before = rc.rate
    rc.tick(t + 0.1)
    assert rc.rate <= before * 1.011  # above 90% of the last cut: probe slowly
    assert ticks <= 5  # back to 90% of the last cut in a handful of intervals
    for _ in range(1000):
        t += 0.1
        rc.tick(t)
    assert rc.rate == 1000.0  # never past the cap


def test_rate_controller_never_goes_below_its_floor():
    from mcast.pacing import RateController

    rc = RateController(1e9, now=0.0, min_rate=1e6)
    for i in range(200):
        rc.congested(0.1 * (i + 1))
    assert rc.rate == 1e6


def test_rate_controller_cuts_from_what_is_really_sent_not_from_an_unused_cap():
    from mcast.pacing import RateController

    rc = RateController(100e9, now=0.0, start_rate=50e9)  # a cap far above the real pace
    sent = 0.0
    for i in range(1, 11):  # actually sending 400 Mbit/s
        sent += 40e6
        rc.observe(sent, 0.1 * i)
    assert rc.measured == pytest.approx(400e6, rel=0.01)
    rc.congested(1.05)
    assert rc.rate == pytest.approx(0.7 * 400e6, rel=0.02)  # a cut that bites
    for i in range(20):  # the sender cannot use more than it sends: no growth past 2x
        sent += 40e6
        rc.observe(sent, 1.1 + 0.1 * i)
        rc.tick(1.1 + 0.1 * i)
    assert rc.rate <= 2 * 400e6 * 1.09
