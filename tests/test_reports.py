"""The receiver's report schedules alone: SOLICITs, periodic and final STATUS."""

from __future__ import annotations

import random

from mcast import wire
from mcast.overrun import OverrunMonitor
from mcast.receiver import ReceiverConfig, ReceiverStats
from mcast.reports import Reports

HASH = b"h" * 32
KEY = b"k" * 32
CFG = ReceiverConfig()


def make(session_id: int | None = None, seed: int = 0):
    sent: list[bytes] = []
    stats = ReceiverStats()
    overrun = OverrunMonitor(0.0, window=0.1, loss_permille=150, backlog=0.5)
    verified = [0]
    reports = Reports(
        0.0, session_id=session_id, receiver_id=77, package_hash=HASH, key=KEY,
        rng=random.Random(seed), overrun=overrun, verified=lambda: verified[0],
        send=sent.append, stats=stats, config=CFG,
    )  # fmt: skip
    return reports, sent, stats, overrun, verified


def decoded(sent: list[bytes]) -> list[wire.Message]:
    return [wire.decode_untrusted(d, KEY) for d in sent]


def test_solicits_are_jittered_around_their_interval():
    reports, sent, *_ = make(seed=3)
    now, gaps = 0.0, []
    for _ in range(50):
        reports.solicit(now)
        gaps.append(reports.next_solicit - now)
        now = reports.next_solicit
    assert len(sent) == 50
    assert all(0.5 * CFG.solicit_interval <= g <= 1.5 * CFG.solicit_interval for g in gaps)
    assert len(set(gaps)) > 40  # jittered: receivers that start together do not stay in step
    msgs = decoded(sent)
    assert msgs[0] == wire.Solicit(0, HASH, 77, msgs[0].seq, msgs[0].nonce)
    seqs = [m.seq for m in msgs]
    assert seqs == sorted(set(seqs))  # strictly increasing: the sender drops a repeat
    assert len({m.nonce for m in msgs}) == 50 and all(m.nonce for m in msgs)
    assert reports.nonces.echoed([msgs[-1].nonce]) and not reports.nonces.echoed([msgs[0].nonce])


def test_an_announce_we_cannot_trust_brings_the_next_solicit_forward_but_not_a_flood():
    reports, sent, *_ = make(seed=4)
    reports.solicit(0.0)
    assert reports.next_solicit >= 0.5 * CFG.solicit_interval
    reports.solicit_soon(0.01)
    assert reports.next_solicit <= 0.05 + 1e-9  # the gap after the last solicit, at most
    now, n = 0.01, 0
    while now < 1.0:  # an announce heard every millisecond
        reports.solicit_soon(now)
        before = len(sent)
        reports.solicit(now)
        n += len(sent) - before
        now += 0.001
    assert 10 <= n <= 20  # one per 50 ms


def test_a_solicit_is_not_sent_before_it_is_due():
    reports, sent, *_ = make()
    reports.solicit(0.0)
    reports.solicit(reports.next_solicit - 1e-6)
    assert len(sent) == 1


def test_no_status_goes_out_before_a_session_is_known():
    reports, sent, stats, *_ = make()
    reports.status(0.5, done=False)
    reports.final(1.0, done=True)
    assert sent == [] and stats.status_sent == 0


def test_joining_reports_at_once_then_every_interval_or_when_urgent():
    reports, sent, stats, overrun, verified = make()
    verified[0] = 4
    overrun.note_socket_drops(9)
    reports.joined(0xABC, 1.0)
    (first,) = decoded(sent)
    assert first == wire.Status(0xABC, 77, 4, False, False, 0, 9, 0, seq=first.seq)
    assert reports.next_status == 1.0 + CFG.status_interval
    reports.periodic(1.5, urgent=False)
    assert len(sent) == 1
    reports.periodic(1.6, urgent=True)  # the overrun monitor says "too fast"
    assert len(sent) == 2 and reports.next_status == 1.6 + CFG.status_interval
    reports.periodic(2.6, urgent=False)
    assert len(sent) == 3 and stats.status_sent == 3


def test_the_final_done_status_is_repeated_spaced_out():
    reports, sent, *_ = make(session_id=5)
    reports.final(2.0, done=True)
    now = 2.0
    while (due := reports.final_deadline()) is not None:
        assert due == now + CFG.done_status_spacing
        reports.repeat_final(due - 1e-6, done=True)  # not yet
        now = due
        reports.repeat_final(now, done=True)
    msgs = decoded(sent)
    assert len(msgs) == CFG.done_status_repeats
    assert all(isinstance(m, wire.Status) and m.done and not m.failed for m in msgs)


def test_a_failed_status_goes_out_once():
    reports, sent, *_ = make(session_id=5)
    reports.final(2.0, done=False)
    assert reports.final_deadline() is None
    reports.repeat_final(10.0, done=False)
    (msg,) = decoded(sent)
    assert isinstance(msg, wire.Status) and msg.failed and not msg.done


def test_nak_entries_are_packed_max_nak_entries_to_a_datagram():
    reports, sent, stats, *_ = make()
    entries = [wire.NakEntry(b, 3, 0) for b in range(CFG.max_nak_entries * 2 + 1)]
    reports.naks(entries, 1.0)
    assert sent == []  # no session yet: nobody to NAK
    reports.session_id = 9
    reports.naks(entries, 1.0)
    msgs = decoded(sent)
    assert [len(m.entries) for m in msgs] == [CFG.max_nak_entries, CFG.max_nak_entries, 1]
    assert [e for m in msgs for e in m.entries] == entries
    assert stats.naks_sent == 3 and stats.nak_entries_sent == len(entries)
    assert len({m.seq for m in msgs}) == 3  # one counter, even within one instant
    reports.naks([], 1.0)
    assert len(sent) == 3


def test_a_small_group_reports_at_once_on_joining_and_every_interval():
    reports, sent, *_ = make()
    reports.group = 50
    reports.joined(5, 1.0)
    assert len(sent) == 1 and reports.next_status == 1.0 + CFG.status_interval
    assert reports.final_spread() == 0.0


def test_a_large_group_spreads_its_statuses_as_rtcp_does():
    """Ten thousand receivers, at most status_rate STATUS a second from all of them: each
    reports every group / status_rate seconds, the first at a random point of that."""
    firsts = []
    for seed in range(40):
        reports, sent, *_ = make(seed=seed)
        reports.group = 10_000
        interval = reports.interval()
        assert interval == 10_000 / CFG.status_rate
        reports.joined(5, 1.0)
        assert sent == []  # not at the join: ten thousand would report at once
        assert 1.0 <= reports.next_status <= 1.0 + interval
        firsts.append(reports.next_status)
        reports.periodic(reports.next_status, urgent=False)
        assert len(sent) == 1 and reports.next_status == firsts[-1] + interval
    assert len(set(firsts)) == len(firsts)


def test_a_large_group_sends_its_final_status_once_within_the_spread():
    reports, sent, *_ = make(seed=4)
    reports.group = 10_000
    reports.joined(5, 0.0)
    reports.final(3.0, done=True)
    assert sent == [] and 3.0 <= reports.next_status <= 3.0 + reports.final_spread()
    assert reports.final_spread() == 2.0
    deadline = reports.final_deadline()
    assert deadline is not None
    reports.repeat_final(deadline, done=True)
    reports.repeat_final(deadline + 5, done=True)
    assert [type(m) for m in decoded(sent)] == [wire.Status] and reports.final_deadline() is None
    assert decoded(sent)[0].done  # type: ignore[union-attr]
