"""The sender's peer table alone: bounded, pruned, and not kept alive by replayed SOLICITs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mcast.peers import PeerTable
from mcast.sender import SenderStats
from mcast.wire import Status

TIMEOUT = 5.0


def make(max_peers: int = 4) -> tuple[PeerTable, SenderStats]:
    stats = SenderStats()
    return PeerTable(stats, receiver_timeout=TIMEOUT, max_peers=max_peers), stats


def status(rid: int, *, verified: int = 0, done: bool = False, failed: bool = False,
           drops: int = 0) -> Status:  # fmt: skip
    return Status(1, rid, verified, done, failed, 0, drops, 0)


def test_a_new_receiver_is_counted_once():
    peers, stats = make()
    assert peers.heard(7, 0.0) is peers.heard(7, 1.0)
    assert stats.receivers_heard == 1 and len(peers) == 1 and 7 in peers
    assert peers[7].last_heard == 1.0


def test_a_full_table_forgets_inactive_receivers_to_make_room():
    peers, _ = make(max_peers=2)
    peers.heard(1, 0.0)
    peers.heard(2, 0.0)
    peers[1].report(status(1, done=True))
    assert peers.heard(3, 1.0) is not None
    assert 1 not in peers and len(peers) == 2
    assert peers.tally() == (1, 2)  # the forgotten receiver still counts as done


def test_a_table_full_of_active_receivers_refuses_a_new_one():
    peers, stats = make(max_peers=2)
    peers.heard(1, 0.0)
    peers.heard(2, 0.0)
    assert peers.heard(3, 1.0) is None
    assert stats.feedback_refused == 1 and 3 not in peers
    assert peers.heard(3, TIMEOUT + 0.1) is not None  # once the others time out, room


def test_a_solicit_only_receiver_gets_one_grace_period_from_its_first():
    peers, _ = make()
    peers.heard(9, 0.0, solicit=True)
    peers.heard(9, 4.0, solicit=True)  # replayed: does not refresh
    assert peers[9].last_heard == 0.0
    assert not peers.any_active(TIMEOUT)
    peers.heard(9, 6.0)  # a NAK or STATUS: a real receiver now
    assert peers[9].last_heard == 6.0 and not peers[9].solicit_only
    peers.heard(9, 7.0, solicit=True)  # and from then on its SOLICITs count
    assert peers[9].last_heard == 7.0


def test_a_status_reports_progress_and_socket_drops_once():
    peers, _ = make()
    peer = peers.heard(1, 0.0)
    assert peer is not None
    assert not peer.report(status(1, verified=5))
    assert peer.report(status(1, verified=3, drops=2))  # drops grew: overrun
    assert not peer.report(status(1, drops=2))
    assert peer.verified_units == 5 and peer.socket_drops == 2  # counts never go back


def test_done_sticks_and_failed_follows_the_last_report():
    peers, _ = make()
    peer = peers.heard(1, 0.0)
    assert peer is not None
    peer.report(status(1, done=True))
    peer.report(status(1, done=False, failed=True))
    assert peer.done and peer.failed
    peer.report(status(1, failed=False))
    assert peer.done and not peer.failed


def test_quiet_at_is_when_the_last_unfinished_receiver_times_out():
    peers, _ = make()
    assert peers.quiet_at() is None
    peers.heard(1, 1.0)
    peers.heard(2, 3.0)
    peers.heard(3, 9.0)
    peers[3].report(status(3, done=True))
    assert peers.quiet_at() == 3.0 + TIMEOUT
    assert peers.active(3.0 + TIMEOUT - 0.01) == 1
    assert peers.active(3.0 + TIMEOUT) == 0
    assert peers.tally() == (1, 2)


@given(st.lists(st.tuples(st.integers(0, 20), st.booleans(), st.floats(0, 3)), max_size=80))
def test_the_table_never_exceeds_its_bound_and_the_tally_covers_everyone(events):
    peers, stats = make(max_peers=5)
    now = 0.0
    for rid, done, dt in events:
        now += dt
        peer = peers.heard(rid, now)
        if peer is not None and done:
            peer.report(status(rid, done=True))
        assert len(peers) <= 5
    done, lost = peers.tally()
    assert done + lost == stats.receivers_heard


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 6), st.sampled_from(["status", "nak", "solicit", "done"])),
        max_size=60,
    )
)
def test_quiet_at_matches_a_scan_of_the_unfinished_receivers(ops):
    peers, _ = make()
    now = 0.0
    for rid, op in ops:
        now += 0.5
        if op == "done":
            peer = peers.heard(rid, now)
            if peer is not None:
                peer.done = True
        else:
            peers.heard(rid, now, solicit=op == "solicit")
        waiting = [peers[r].last_heard + TIMEOUT for r in peers if not peers[r].finished]
        assert peers.quiet_at() == (max(waiting) if waiting else None)
