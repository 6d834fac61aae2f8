"""Who takes over a session, from the STATUS reports one receiver heard."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mcast.peer_view import PeerView
from mcast.wire import Status


def status(rid: int, units: int, rank: int = 0, done: bool = False) -> Status:
    return Status(1, rid, units, done, False, 0, 0, 0, rank)


def test_most_units_then_rank_then_lower_id() -> None:
    v = PeerView(stale_after=3.0)
    v.heard(status(5, 10, rank=0), 0.0)
    v.heard(status(6, 10, rank=2), 0.0)
    v.heard(status(4, 10, rank=2), 0.0)
    assert v.successor(9, 9, 3, 1.0) == 4
    assert v.successor(9, 11, 0, 1.0) == 9  # we hold more than anyone heard


def test_finished_and_stale_receivers_do_not_take_over() -> None:
    v = PeerView(stale_after=3.0)
    v.heard(status(5, 99, done=True), 0.0)
    v.heard(status(6, 50), 0.0)
    assert v.successor(9, 1, 0, 1.0) == 6
    assert v.successor(9, 1, 0, 3.5) == 9  # 6 not heard for longer than stale_after


def test_the_table_is_bounded_and_keeps_the_best_candidates() -> None:
    v = PeerView(stale_after=3.0, capacity=3)
    for rid in range(10):
        v.heard(status(rid, rid), 0.0)
    assert len(v) == 3 and v.successor(100, 0, 0, 0.0) == 9
    for rid in range(20, 30):  # later, but holding less: the best are kept
        v.heard(status(rid, 1), 0.5)
    assert len(v) == 3 and v.successor(100, 0, 0, 1.0) == 9
    v.heard(status(40, 2), 3.6)  # 7, 8, 9 went stale: room is made, and 40 is the one
    assert len(v) == 3 and v.successor(100, 0, 0, 3.6) == 40


def test_a_receiver_that_finished_is_forgotten() -> None:
    v = PeerView(stale_after=3.0)
    v.heard(status(5, 99), 0.0)
    v.heard(status(5, 100, done=True), 0.5)
    assert len(v) == 0 and v.successor(9, 1, 0, 1.0) == 9


@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 100), st.integers(0, 3)),
                max_size=20))  # fmt: skip
def test_every_receiver_that_heard_the_same_reports_names_the_same_one(reports) -> None:
    latest = {rid: (u, r) for rid, u, r in reports}
    names = set()
    for me, (units, rank) in latest.items():
        v = PeerView(stale_after=3.0)
        for rid, u, r in reports:
            v.heard(status(rid, u, r), 0.0)
        names.add(v.successor(me, units, rank, 0.0))
    assert len(names) <= 1
