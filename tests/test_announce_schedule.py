"""The sender's announce and END schedules alone."""

from __future__ import annotations

import pytest

from mcast.announce_schedule import AnnounceSchedule, EndSchedule


def times(s: AnnounceSchedule, until: float) -> list[float]:
    out, now = [], s.deadline
    while now <= until:
        assert s.due(now)
        out.append(round(now, 6))
        s.sent(now)
        now = s.deadline
    return out


def test_quick_announces_at_the_start_then_the_interval():
    s = AnnounceSchedule(1.0, interval=0.5)
    assert times(s, 2.5) == [1.0, 1.01, 1.02, 1.03, 1.53, 2.03]


def test_the_end_of_the_pass_brings_quick_announces_back():
    s = AnnounceSchedule(0.0, interval=0.5)
    times(s, 1.0)
    s.pass_done(1.2)
    assert s.due(1.2)
    assert times(s, 2.0) == [1.2, 1.21, 1.22, 1.23, 1.73]


def test_a_solicit_brings_the_next_announce_forward_but_not_into_a_flood():
    s = AnnounceSchedule(0.0, interval=0.5, fast=0)
    s.sent(0.0)
    s.solicited()
    assert s.deadline == pytest.approx(0.02)
    s.sent(0.02)
    s.solicited()
    s.solicited()
    assert s.deadline == pytest.approx(0.04)
    assert not s.due(0.03)


def test_end_copies_go_out_spaced_then_the_schedule_is_over():
    e = EndSchedule(copies=3, spacing=0.05)
    e.start(2.0, "done")
    assert not e.over(2.0)
    sent = [t for t in (2.0, 2.01, 2.05, 2.06, 2.1, 2.2, 2.3) if e.due(t)]
    assert sent == [2.0, 2.05, 2.1]
    assert not e.over(2.1) and e.over(2.15) and e.reason == "done"


def test_a_backlog_of_nonces_brings_announces_closer_together():
    """Ten thousand SOLICITs at once: 64 echoed per announce, each twice, must not take
    20 ms an announce (six seconds): while more wait than one carries, 0.2 ms apart."""
    s = AnnounceSchedule(0.0, interval=0.5, fast=0)
    s.sent(0.0)
    s.solicited(backlog=10_000)
    assert s.deadline == pytest.approx(0.0002)
    s.sent(0.0002, backlog=65)
    assert s.deadline == pytest.approx(0.0004)
    s.sent(0.0004, backlog=64)
    assert s.deadline == pytest.approx(0.0004 + 0.02)
    s.sent(0.0204)
    assert s.deadline == pytest.approx(0.5204)
