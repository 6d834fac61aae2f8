"""The slow-session floor alone: windows, the master's progress, holds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mcast.progress_floor import ProgressFloor


def make(now: float = 0.0) -> ProgressFloor:
    return ProgressFloor(now, min_bytes_per_s=1000, grace=10.0, unit_size=1000)


def test_a_window_under_the_floor_ends_the_session() -> None:
    f = make()
    assert f.deadline() == 10.0 and f.check(9.9, 0) is None
    assert f.check(10.0, 9) is not None  # 9 units in 10 s: 900 B/s < 1000


def test_a_window_at_the_floor_starts_the_next_one() -> None:
    f = make()
    assert f.check(10.0, 10) is None and f.deadline() == 20.0
    assert f.check(20.0, 15) is not None  # only 5 more in the second window


def test_the_masters_own_progress_counts_when_ours_comes_in_blocks() -> None:
    f = make()
    for t in range(10):
        f.master_holds(2 * t)
    assert f.check(10.0, 0) is None  # the master gained 18 units, we none yet


def test_a_hold_moves_the_window_past_it() -> None:
    f = make()
    f.hold(1.0, 6.0, 0)
    assert f.deadline() == 16.0 and f.check(15.0, 0) is None


def test_no_floor_never_ends_a_session() -> None:
    f = ProgressFloor(0.0, min_bytes_per_s=0, grace=10.0, unit_size=1000)
    assert f.deadline() is None and f.check(1e9, 0) is None


@given(st.lists(st.integers(0, 50), min_size=1, max_size=30))
def test_the_verdict_is_the_larger_gain_against_the_floor(gains) -> None:
    f = make()
    own = master = 0
    for g in gains:
        own += g
        master += g // 2
        f.master_holds(master)
    assert (f.check(10.0, own) is None) == (own >= 10)
