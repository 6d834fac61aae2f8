"""Session liveness alone: the silence timeout and the grace after an END."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from mcast.events import FailureKind
from mcast.liveness import UNKEYED_HOLD_CAP, Liveness
from mcast.progress_floor import ProgressFloor
from mcast.wire import Announce


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


# ---------------------------------------------------------------- what counts as life

ANNOUNCE = Announce(
    session=1, package_hash=bytes(32), sender_id=2, packet_size=1432, units_per_block=16,
    parity_ratio_pct=25, rate_bps=10**8, group="239.255.1.1", port=47000, next_block=0,
    pass_done=False, receivers=0, progress_pct=0,
)  # fmt: skip


def test_unkeyed_shards_are_not_life_keyed_ones_are():
    live = make()
    live.shard(3.0, authentic=False)
    assert live.deadline() == 5.0
    live.shard(3.0, authentic=True)
    assert live.deadline() == 8.0


def test_an_unkeyed_announce_is_life_only_when_the_master_moved():
    live = make()
    live.announced(replace(ANNOUNCE, verified_units=4), 1.0, 0, authentic=False)
    assert live.last_heard == 1.0  # new progress: life
    live.announced(replace(ANNOUNCE, verified_units=4), 4.0, 0, authentic=False)
    assert live.last_heard == 1.0  # the same announce again (a replay?): not life
    live.announced(replace(ANNOUNCE, verified_units=4), 4.0, 0, authentic=True)
    assert live.last_heard == 4.0


def test_an_unkeyed_hold_keeps_the_receiver_only_up_to_the_cap():
    live = make()
    live.joined(1.0, 0)
    live.announced(replace(ANNOUNCE, hold_ms=2000), 1.5, 0, authentic=False)
    assert live.last_heard == 3.5  # a genuine rendezvous hold is waited out
    live.announced(replace(ANNOUNCE, hold_ms=3_600_000), 2.0, 0, authentic=False)
    assert live.last_heard == 1.0 + UNKEYED_HOLD_CAP


def test_a_quiet_master_is_judged_by_silence_not_by_the_floor():
    floor = ProgressFloor(0.0, min_bytes_per_s=1000, grace=4.0, unit_size=100)
    live = Liveness(0.0, silence_timeout=10.0, end_grace=0.5, floor=floor)
    live.joined(0.0, 0)
    live.progress(1.0)  # then nothing: the master died
    assert live.deadline(joined=True) == 11.0  # the window ends at 4.0, when it is quiet
    assert live.dead(4.0, joined=True) is None
    assert live.dead(11.0, joined=True) == (FailureKind.SILENT, "sender silent for 10s")
    talking = Liveness(0.0, silence_timeout=10.0, end_grace=0.5, floor=floor)
    talking.progress(3.5)  # heard lately: a live master under the floor is slow
    assert talking.deadline(joined=True) == 4.0
    assert talking.dead(4.0, joined=True) is not None
    assert talking.dead(4.0, joined=True)[0] is FailureKind.SLOW  # type: ignore[index]
