"""Session liveness alone: the silence timeout and the grace after an END."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mcast.events import FailureKind
from mcast.liveness import Liveness


def make(now: float = 0.0) -> Liveness:
    return Liveness(now, silence_timeout=5.0, end_grace=0.5)


def test_silence_ends_a_session_waiting_or_joined():
    live = make()
    assert live.deadline() == 5.0
    assert live.dead(4.999, joined=False) is None
    assert live.dead(5.0, joined=False) == (FailureKind.NO_SESSION, "no session announced for 5s")
    assert live.dead(5.0, joined=True) == (FailureKind.SILENT, "sender silent for 5s")


def test_progress_pushes_the_deadline():
    live = make()
    live.progress(3.0)
    assert live.deadline() == 8.0 and live.dead(7.0, joined=True) is None


def test_an_end_ends_the_session_after_the_grace_unless_progress_follows():
    live = make()
    live.end(1.0)
    assert live.deadline() == 1.5
    assert live.dead(1.5, joined=True) == (FailureKind.ENDED, "sender ended the session")
    live.progress(1.4)  # genuine traffic after a (forged?) END: the grace restarts from it
    assert live.deadline() == 1.9


def test_an_end_never_extends_the_silence_timeout():
    live = make()
    live.end(4.9)
    assert live.deadline() == 5.0


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 10)), max_size=30))
def test_the_deadline_is_never_later_than_silence_after_the_last_progress(steps):
    live, now = make(), 0.0
    for is_end, dt in steps:
        now += dt
        (live.end if is_end else live.progress)(now)
        assert live.deadline() <= live.last_heard + 5.0
        assert live.dead(live.deadline(), joined=True) is not None
