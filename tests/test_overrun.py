"""The receiver's overrun signals alone: loss, socket drops and backlog over windows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcast.overrun import OverrunMonitor

WINDOW = 0.1


def make(now: float = 0.0) -> OverrunMonitor:
    return OverrunMonitor(now, window=WINDOW, loss_permille=150, backlog=0.5)


def test_a_window_closes_only_when_due():
    o = make()
    assert o.deadline() == 0.0
    assert not o.poll(0.0)  # the first window: nothing seen, nothing to report
    assert o.deadline() == WINDOW
    o.note_socket_drops(5)
    assert not o.poll(WINDOW - 1e-9)  # not due: the drops wait for the window
    assert o.poll(WINDOW)


def test_loss_over_the_threshold_says_too_fast():
    o = make()
    o.poll(0.0)
    for pos in range(100):
        if pos % 5:  # 20% lost
            o.note_shard(pos)
    assert o.poll(WINDOW)
    assert o.loss_permille == pytest.approx(200, abs=11)


def test_random_loss_under_the_threshold_does_not():
    o = make()
    o.poll(0.0)
    for pos in range(100):
        if pos % 50:  # 2% lost
            o.note_shard(pos)
    assert not o.poll(WINDOW)
    assert 0 < o.loss_permille <= 30


def test_a_late_joiner_lost_nothing_before_it_joined():
    o = make()
    o.poll(0.0)
    for pos in range(5000, 5100):
        o.note_shard(pos)
    assert not o.poll(WINDOW) and o.loss_permille == 0


def test_too_few_shards_are_not_judged():
    o = make()
    o.poll(0.0)
    for pos in range(0, 40, 4):  # 75% loss over 37 positions: judged
        o.note_shard(pos)
    o.poll(WINDOW)
    judged = o.loss_permille
    assert judged > 150
    o.note_shard(45)  # a handful of positions: the last judgement stands
    o.poll(2 * WINDOW)
    assert o.loss_permille == judged
    o.poll(3 * WINDOW)  # nothing passed at all: no loss
    assert o.loss_permille == 0


def test_socket_drops_are_reported_once_per_increase():
    o = make()
    o.poll(0.0)
    o.note_socket_drops(3)
    assert o.poll(WINDOW) and o.socket_drops == 3
    o.note_socket_drops(2)  # a cumulative count never goes back
    assert not o.poll(2 * WINDOW) and o.socket_drops == 3
    o.note_socket_drops(4)
    assert o.poll(3 * WINDOW)


def test_a_full_socket_queue_says_too_fast():
    o = make()
    o.poll(0.0)
    o.note_backlog(0.9)
    assert o.poll(WINDOW)
    assert o.backlog_pct == 90


def test_a_backlog_is_reported_for_its_own_window_only():
    o = make()
    o.poll(0.0)
    o.note_backlog(0.9)
    assert o.poll(WINDOW)
    assert not o.poll(2 * WINDOW)  # the queue was read down: the next window says so
    assert o.backlog_pct == 0


@given(st.lists(st.integers(0, 10_000), max_size=300))
def test_loss_is_a_permille(positions):
    o = make()
    o.poll(0.0)
    for pos in positions:
        o.note_shard(pos)
    o.poll(WINDOW)
    assert 0 <= o.loss_permille <= 1000
