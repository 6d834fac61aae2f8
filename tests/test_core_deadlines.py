"""The cores' timers are their parts' deadlines: get_timer() takes the earliest of those the
phase runs, and handle_timer() at that moment does what the due part asked for."""

from __future__ import annotations

import random

from mcast import wire
from mcast.receiver import Receiver, ReceiverConfig
from mcast.sender import BytesSource, Sender, SenderConfig
from tests.harness import answered, make_snapshot

DATA = random.Random(11).randbytes(40_000)
SNAP = make_snapshot(DATA, 4096)
CFG = ReceiverConfig()


def joined(pass_done: bool) -> Receiver:
    rcv = Receiver(SNAP, receiver_id=5, now=0.0, rng=random.Random(1))
    ann = wire.Announce(9, SNAP.package_hash, 1, 1024, 2, 50, 1, "239.255.1.1", 1, 0, pass_done,
                        0, 0)  # fmt: skip
    rcv.receive_datagram(answered(rcv, ann), None, 0.0)
    rcv.datagrams_to_send(0.0)  # the join's status
    return rcv


def test_a_waiting_receiver_wakes_to_solicit_and_to_give_up():
    rcv = Receiver(SNAP, receiver_id=5, now=0.0, rng=random.Random(1))
    assert rcv.get_timer() == 0.0  # the first SOLICIT is due at once
    rcv.handle_timer(0.0)
    (dgram,) = rcv.datagrams_to_send(0.0)
    assert isinstance(wire.decode_untrusted(dgram), wire.Solicit)
    timer = rcv.get_timer()
    assert timer is not None
    assert 0.5 * CFG.solicit_interval <= timer <= 1.5 * CFG.solicit_interval
    wakes, now = 0, 0.0
    while rcv.phase.value == "waiting":
        now = rcv.get_timer() or now
        rcv.handle_timer(now)
        wakes += 1
    assert now == CFG.silence_timeout  # it gives up exactly at the silence deadline
    assert wakes <= CFG.silence_timeout / (0.5 * CFG.solicit_interval) + 1  # no busy waking


def test_blocks_the_sender_has_passed_wake_the_receiver_within_the_nak_backoff():
    rcv = joined(pass_done=True)
    entries, naked_at = [], []
    while (now := rcv.get_timer()) is not None and now <= CFG.nak_backoff:
        rcv.handle_timer(now)
        for dgram in rcv.datagrams_to_send(now):
            msg = wire.decode_untrusted(dgram)
            assert isinstance(msg, wire.Nak)
            entries.extend(msg.entries)
            naked_at.append(now)
    assert rcv.geometry is not None
    # every block NAKed once, each after its own back-off, before any status is due...
    assert sorted(e.block for e in entries) == list(range(rcv.geometry.block_count))
    # ...and the next wake-up is the first re-NAK, earlier than the next overrun window
    assert rcv.get_timer() == min(naked_at) + CFG.nak_retry < CFG.congestion_window


def test_a_receiver_with_nothing_passed_wakes_for_its_window_and_status_only():
    rcv = joined(pass_done=False)
    assert rcv.get_timer() == 0.0  # the first overrun window closes at once
    rcv.handle_timer(0.0)
    assert rcv.datagrams_to_send(0.0) == []  # the join already reported
    assert rcv.get_timer() == CFG.congestion_window
    now = 0.0
    while now < CFG.status_interval:
        now = rcv.get_timer() or now
        rcv.handle_timer(now)
    (dgram,) = rcv.datagrams_to_send(now)
    assert isinstance(wire.decode_untrusted(dgram), wire.Status)


def test_a_sender_wakes_for_its_announces_and_its_pacer():
    cfg = SenderConfig(packet_size=1024, units_per_block=2, rate_bps=8_000_000,
                       burst_bytes=4096, wake_bytes=2048)  # fmt: skip
    snd = Sender(SNAP, BytesSource(DATA), session_id=9, sender_id=1, now=0.0, config=cfg)
    out = snd.datagrams_to_send(0.0)
    assert isinstance(wire.decode_untrusted(out[0]), wire.Announce) and len(out) > 1
    timer = snd.get_timer()
    # the next quick announce (10 ms) is later than the pacer's next 2 KB (about 2 ms)
    assert timer is not None and 0.0 < timer < 0.01
    assert len(snd.datagrams_to_send(timer)) >= 1
