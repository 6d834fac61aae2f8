"""The sender's repair queue alone: equivalent NAKs cost one repair, lowest block first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mcast.geometry import Geometry
from mcast.repair_queue import RepairQueue

GEOM = Geometry(64 * 1024, 4096, 256, 4, 50)  # 4 blocks of k = 64, 32 parity each
HOLD = 0.05


def make() -> RepairQueue:
    return RepairQueue(GEOM, holdoff=HOLD)


def drain(q: RepairQueue, now: float) -> list[tuple[int, int]]:
    out = []
    while q:
        out.append(q.pop(now))
    return out


def test_a_nak_issues_what_it_needs():
    q = make()
    assert q.request(1, 5, 0, 0.0, spares=False) == 5
    assert drain(q, 0.0) == [(1, s) for s in range(5)]


def test_equivalent_naks_while_queued_or_in_flight_cost_nothing_more():
    q = make()
    q.request(1, 5, 0, 0.0, spares=False)
    assert q.request(1, 5, 0, 0.0, spares=False) == 0  # queued
    drain(q, 0.01)
    assert q.request(1, 5, 0, 0.02, spares=False) == 0  # sent 10 ms ago: may be on its way
    assert q.request(1, 5, 0, 0.01 + HOLD + 0.001, spares=False) == 5  # lost, asked again


def test_a_receiver_that_saw_the_repairs_and_still_needs_more_gets_more():
    q = make()
    q.request(1, 5, 0, 0.0, spares=False)
    drain(q, 0.0)
    assert q.request(1, 2, 5, 0.001, spares=False) == 2  # horizon 5: saw all five, needs two
    assert drain(q, 0.001) == [(1, 5), (1, 6)]


def test_a_horizon_beyond_what_was_issued_is_clamped():
    q = make()
    q.request(0, 3, 0, 0.0, spares=False)
    assert q.request(0, 3, 2**32 - 1, 0.0, spares=False) == 3
    assert q.issued(0) == 6


def test_need_is_clamped_to_k():
    q = make()
    assert q.request(2, 2**32 - 1, 0, 0.0, spares=False) == GEOM.k(2)


def test_after_the_pass_spares_are_added_but_never_past_k():
    q = make()
    assert q.request(0, 10, 0, 0.0, spares=True) == 10 + 1 + 1
    assert q.request(1, 63, 0, 0.0, spares=True) == GEOM.k(1)
    assert q.request(2, 0, 0, 0.0, spares=True) == 0


def test_the_lowest_block_goes_first_and_each_block_counts_its_own_sequence():
    q = make()
    q.request(3, 2, 0, 0.0, spares=False)
    q.request(0, 1, 0, 0.0, spares=False)
    assert q.pop(0.0) == (0, 0)
    q.request(2, 1, 0, 0.0, spares=False)
    assert drain(q, 0.0) == [(2, 0), (3, 0), (3, 1)]
    assert q.owed(3) == 0 and not q


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 100), st.floats(0, 0.02)),
                max_size=40))  # fmt: skip
def test_naks_within_the_holdoff_never_queue_more_than_the_largest_need(naks):
    """Many receivers NAK the same blocks with the same horizon within the holdoff: the
    repairs issued per block are the most any one of them needed, never the sum."""
    q = make()
    for b, need, dt in naks:
        q.request(b, need, 0, min(dt, HOLD / 2), spares=False)
    for b in range(GEOM.block_count):
        asked = [min(need, GEOM.k(b)) for blk, need, _ in naks if blk == b]
        assert q.issued(b) == max(asked, default=0)


def test_a_block_asked_again_while_queued_is_served_once_in_sequence():
    q = make()
    q.request(1, 2, 0, 0.0, spares=False)
    assert q.request(1, 2, 2, 0.0, spares=False) == 2  # saw both it was promised: two more
    assert drain(q, 0.0) == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert q.owed(1) == 0
