"""The sender's pacer alone: the bucket paces, the controller sets its rate, and the rate
grows only while it is what holds the sender back."""

from __future__ import annotations

import pytest

from mcast.pacing import Pacer

MBIT = 1_000_000


def test_a_capped_pacer_starts_at_its_cap_an_uncapped_one_at_its_start_rate():
    assert Pacer(50 * MBIT, 8 * MBIT, 1000, 0.0).rate_bps == 50 * MBIT
    uncapped = Pacer(0, 8 * MBIT, 1000, 0.0)
    assert uncapped.rate_bps == 8 * MBIT and uncapped.control.max_rate > 10_000 * MBIT


def test_the_bucket_runs_at_its_rate_after_its_burst():
    p = Pacer(8 * MBIT, 0, 1000, 0.0)  # 1 MB/s
    assert p.try_send(1000, 0.0)
    assert not p.try_send(500, 0.0) and p.limited
    assert p.ready_at(500) == pytest.approx(0.0005)
    assert p.try_send(500, 0.0005)


def test_the_rate_grows_only_when_sends_waited_for_it():
    p = Pacer(0, 8 * MBIT, 10_000, 0.0)
    p.tick(0, 1.0)
    assert p.rate_bps == 8 * MBIT  # never held back: no growth
    p.try_send(20_000, 1.0)  # more than the burst: waits
    p.tick(0, 1.2)
    assert p.rate_bps > 8 * MBIT and not p.limited
    assert p.bucket.rate == p.rate_bps / 8


def test_congestion_cuts_the_rate_and_the_bucket_follows():
    p = Pacer(100 * MBIT, 100 * MBIT, 10_000, 0.0)
    p.congested(0.5)
    assert p.cuts == 1 and p.rate_bps == pytest.approx(70 * MBIT)
    assert p.bucket.rate == pytest.approx(70 * MBIT / 8)
    p.congested(0.55)  # at most one cut per interval
    assert p.cuts == 1


def test_the_rate_never_passes_the_cap():
    p = Pacer(10 * MBIT, 10 * MBIT, 1000, 0.0)
    for n in range(100):
        p.try_send(10_000, n * 0.2)
        p.tick(0, n * 0.2 + 0.1)
    assert p.rate_bps <= 10 * MBIT
