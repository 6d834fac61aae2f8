"""Phase tables of both cores: every change goes through one place, and what is not in the
table is refused with both phases named."""

from __future__ import annotations

import random

import pytest

from mcast import receiver as receiver_mod
from mcast import sender as sender_mod
from mcast.events import Completed, FailureKind, SenderFinished, SessionFailed
from mcast.receiver import Phase, Receiver
from mcast.sender import BytesSource, Sender, SenderPhase
from tests.harness import make_snapshot

DATA = random.Random(5).randbytes(10_000)
SNAP = make_snapshot(DATA, 4096)


def test_every_receiver_phase_is_in_the_table_and_the_ends_are_final():
    table = receiver_mod._PHASES
    assert set(table) == set(Phase)
    assert table[Phase.COMPLETE] == table[Phase.FAILED] == frozenset()
    assert Phase.WAITING not in set().union(*table.values())  # nothing goes back to waiting


def test_a_receiver_phase_change_outside_the_table_is_refused():
    rcv = Receiver(SNAP, receiver_id=1, now=0.0, rng=random.Random(0))
    rcv.handle_timer(10.0)  # no session announced: failed
    assert rcv.phase is Phase.FAILED
    assert isinstance(rcv.next_event(), SessionFailed)
    with pytest.raises(RuntimeError, match="failed -> receiving"):
        rcv._set_phase(Phase.RECEIVING)
    rcv._fail(FailureKind.SILENT, "again", 11.0)  # failing twice is a no-op, not an error
    assert rcv.next_event() is None


def test_a_complete_copy_goes_straight_from_waiting_to_complete():
    rcv = Receiver(SNAP, receiver_id=1, now=0.0, verified_units=range(SNAP.block_count))
    assert rcv.phase is Phase.COMPLETE and isinstance(rcv.next_event(), Completed)
    while (timer := rcv.get_timer()) is not None:  # the final-status repeats run out...
        rcv.handle_timer(timer)
    assert rcv.datagrams_to_send(1.0) == []  # ...with nothing sent: no session id to report to


def test_every_sender_phase_is_in_the_table():
    table = sender_mod._PHASES
    assert set(table) == set(SenderPhase)
    assert table[SenderPhase.CLOSED] == frozenset()


def test_a_sender_closes_once_sends_its_end_copies_then_finishes():
    snd = Sender(SNAP, BytesSource(DATA), session_id=3, sender_id=1, now=0.0)
    snd.close(0.0, "stop")
    snd.close(0.1, "again")  # a second close changes nothing
    ends, now = 0, 0.0
    while snd.phase is not SenderPhase.CLOSED:
        ends += len(snd.datagrams_to_send(now))
        timer = snd.get_timer()
        assert timer is not None
        now = max(now, timer)
        snd.handle_timer(now)
    assert ends == 3
    ev = snd.next_event()
    assert isinstance(ev, SenderFinished) and ev.reason == "stop"
    with pytest.raises(RuntimeError, match="closed -> sending"):
        snd._set_phase(SenderPhase.SENDING)
