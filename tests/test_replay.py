"""A host that records keyed datagrams and plays them back: every replay is authentic, and
none may change what a sender or receiver does. Before wire version 2 a replayed STATUS that
said "too fast" held a sender at its rate floor, replayed NAKs kept it repairing, and a
replayed announce of an ended session pinned a receiver until it timed out."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mcast import wire
from mcast.receiver import Phase, Receiver
from mcast.sender import BytesSource, Sender, SenderConfig
from tests.harness import answered, make_snapshot

KEY = b"R" * 32
DATA = random.Random(5).randbytes(200_000)
SNAP = make_snapshot(DATA, 4096)
CFG = SenderConfig(packet_size=1024, units_per_block=4, rate_bps=0)


def sender() -> Sender:
    s = Sender(SNAP, BytesSource(DATA), session_id=7, sender_id=1, now=0.0, key=KEY, config=CFG)
    s.datagrams_to_send(0.0)
    return s


def test_a_replayed_too_fast_status_cuts_the_rate_once_not_to_the_floor() -> None:
    s = sender()
    start = s.rate_bps
    slow_down = wire.encode(wire.Status(7, 5, 0, False, backlog_pct=90, seq=1), KEY)
    s.receive_datagram(slow_down, ("198.18.0.5", 1), 0.3)
    assert s.stats.rate_cuts == 1 and s.rate_bps < start
    for i in range(200):  # played back every 50 ms for 10 s
        s.receive_datagram(slow_down, ("198.18.0.5", 1), 0.4 + 0.05 * i)
        s.handle_timer(0.4 + 0.05 * i)
    assert s.stats.rate_cuts == 1 and s.stats.replays == 200
    assert s.rate_bps > 2 * 1_000_000  # grew back: nowhere near the 1 Mbit/s floor


def test_replayed_naks_do_not_keep_the_sender_repairing() -> None:
    s = sender()
    now = 0.0
    while not s.pass_done:
        now += 0.01
        s.datagrams_to_send(now)
    nak = wire.encode(wire.Nak(7, 5, (wire.NakEntry(0, 3, 0),), seq=1), KEY)
    s.receive_datagram(nak, ("198.18.0.5", 1), now)
    for _ in range(100):  # the same NAK again every 100 ms
        now += 0.1
        s.receive_datagram(nak, ("198.18.0.5", 1), now)
        s.datagrams_to_send(now)
    assert s.stats.naks_received == 1 and s.stats.replays == 100
    assert s.stats.parity_requested <= 3 + 1 + 1  # one NAK's worth, with its spares


@settings(max_examples=60, deadline=None)
@given(picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=60), seed=st.integers(0, 99))
def test_any_replay_of_recorded_feedback_changes_nothing_at_the_sender(picks, seed) -> None:
    """Record every NAK and STATUS of a genuine session, then play any of them back, in any
    order, any number of times: the sender drops each before it changes any state."""
    rnd = random.Random(seed)
    s = sender()
    recorded: list[bytes] = []
    for seq in range(1, 30):
        if rnd.random() < 0.5:
            msg: wire.Message = wire.Nak(7, 5, (wire.NakEntry(rnd.randrange(4), 2, 0),), seq)
        else:
            msg = wire.Status(7, 5, seq, False, backlog_pct=rnd.choice([0, 90]), seq=seq)
        recorded.append(wire.encode(msg, KEY))
    now = 0.0
    for d in recorded:
        now += 0.01
        s.receive_datagram(d, ("198.18.0.5", 1), now)
        s.datagrams_to_send(now)
    before = (s.stats.parity_requested, s.stats.rate_cuts, s.stats.naks_received,
              s.stats.status_received, s.peers[5].verified_units)  # fmt: skip
    for p in picks:
        now += 0.01
        s.receive_datagram(recorded[p % len(recorded)], ("198.18.0.99", 1), now)
    after = (s.stats.parity_requested, s.stats.rate_cuts, s.stats.naks_received,
             s.stats.status_received, s.peers[5].verified_units)  # fmt: skip
    assert after == before and s.stats.replays == len(picks)


def test_replayed_announces_of_the_joined_session_are_dropped() -> None:
    s = sender()
    rcv = Receiver(SNAP, receiver_id=5, now=0.0, rng=random.Random(1), key=KEY)
    genuine = wire.decode_untrusted(s.datagrams_to_send(0.6)[0], KEY)
    assert isinstance(genuine, wire.Announce)
    rcv.receive_datagram(answered(rcv, genuine, 0.6, KEY), None, 0.6)
    assert rcv.phase is Phase.RECEIVING
    old = wire.encode(wire.Announce(**{**{f: getattr(genuine, f) for f in genuine.__slots__},
                                       "seq": genuine.seq - 1}), KEY)  # fmt: skip
    rcv.receive_datagram(old, None, 0.7)
    end_replay = wire.encode(wire.End(7, "all receivers done", genuine.seq - 1), KEY)
    rcv.receive_datagram(end_replay, None, 0.7)
    assert rcv.stats.replays == 2


def test_control_messages_heard_before_the_join_are_not_taken_for_replays() -> None:
    """A peer's STATUS and the sender's END heard while waiting are kept with the early
    datagrams and judged once, when they are replayed after the join: judging them on
    arrival too made each one its own replay, so the peer went unheard."""
    s = sender()
    rcv = Receiver(SNAP, receiver_id=5, now=0.0, rng=random.Random(1), key=KEY)
    rcv.receive_datagram(wire.encode(wire.Status(7, 9, 1, False, seq=3), KEY), None, 0.0)
    genuine = wire.decode_untrusted(s.datagrams_to_send(0.6)[0], KEY)
    assert isinstance(genuine, wire.Announce)
    rcv.receive_datagram(answered(rcv, genuine, 0.6, KEY), None, 0.6)
    assert rcv.phase is Phase.RECEIVING and rcv.stats.replays == 0
    rcv.receive_datagram(wire.encode(wire.Status(7, 9, 1, False, seq=3), KEY), None, 0.7)
    assert rcv.stats.replays == 1  # heard again after the join: that one is a replay
