"""Sender and receiver cores over the virtual-time LAN: every receiver ends with exactly the
package's bytes, whatever the loss, duplication, reordering and join times."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcast import wire
from mcast.receiver import Receiver, ReceiverConfig
from mcast.sender import SenderConfig
from mcast.simnet import Link
from tests.harness import make_snapshot, simulate

links = st.builds(
    Link,
    loss=st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.4]),
    duplicate=st.sampled_from([0.0, 0.05, 0.3]),
    jitter=st.sampled_from([0.0, 0.0005, 0.005]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(0, 60_000),
    links=st.lists(links, min_size=1, max_size=4),
    starts=st.lists(st.sampled_from([0.0, 0.0, 0.01, 0.05, 0.3]), min_size=4, max_size=4),
    seed=st.integers(0, 2**32),
    units_per_block=st.integers(1, 5),
)
def test_every_receiver_ends_with_exactly_the_package(size, links, starts, seed, units_per_block):
    data = random.Random(seed).randbytes(size)
    cfg = SenderConfig(
        packet_size=256,
        units_per_block=units_per_block,
        rate_bps=20_000_000,
        burst_bytes=8192,
        linger=1.0,
    )
    run = simulate(data, links, seed=seed, starts=starts, sender_config=cfg)
    assert run.failed == {}
    assert set(run.completed) == set(run.outputs)
    for name, out in run.outputs.items():
        assert bytes(out) == data, name
        assert sorted(run.units_seen[name]) == list(range(run.receiver(name).snapshot.block_count))


def test_no_loss_needs_no_repair_and_no_nak():
    data = random.Random(1).randbytes(200_000)
    run = simulate(data, [Link()] * 3)
    assert len(run.completed) == 3
    sender = run.sender()
    assert sender.stats.parity_sent == 0
    assert sender.stats.data_sent == sender.geometry.shard_count
    assert sum(run.receiver(n).stats.naks_sent for n in run.outputs) == 0


def test_parity_repairs_cost_about_the_worst_receivers_loss():
    data = random.Random(2).randbytes(400_000)
    run = simulate(data, [Link(loss=0.05)] * 8, seed=3)
    assert len(run.completed) == 8
    sender = run.sender()
    source = sender.geometry.shard_count
    # Resending every lost packet would cost ~1-(0.95**8) = 34% here; parity costs about
    # the worst receiver's loss per block, plus a little for lost repairs.
    assert sender.stats.parity_sent < 0.2 * source
    assert sender.stats.parity_sent > 0.05 * source


def test_nak_suppression_keeps_nak_traffic_sublinear_in_receivers():
    data = random.Random(4).randbytes(300_000)
    naks = {}
    for n in (4, 40):
        run = simulate(data, [Link(loss=0.03)] * n, seed=5)
        assert len(run.completed) == n
        naks[n] = sum(run.receiver(name).stats.naks_sent for name in run.outputs)
        assert sum(run.receiver(name).stats.naks_suppressed for name in run.outputs) > 0
    assert naks[40] <= 5 * naks[4], naks


def test_late_joiner_gets_blocks_sent_before_it_joined():
    data = random.Random(6).randbytes(150_000)
    run = simulate(data, [Link(), Link(loss=0.02)], starts=[0.0, 0.04])
    assert bytes(run.outputs["r1"]) == data
    assert run.sender().stats.parity_sent > 0  # what r1 missed came as repairs


def test_sender_finishes_when_every_receiver_is_done():
    data = random.Random(7).randbytes(50_000)
    run = simulate(data, [Link(loss=0.05)] * 3)
    run.net.run(run.net.now + 5.0)
    assert run.finished is not None
    assert run.finished.receivers_done == 3
    assert run.finished.receivers_lost == 0


def test_silent_sender_fails_the_session_for_receivers():
    data = random.Random(8).randbytes(120_000)
    rcfg = ReceiverConfig(silence_timeout=1.0)

    def crash_sender_early(run):
        run.net.run(0.01)
        run.net.stop("sender")

    run = simulate(data, [Link()] * 2, receiver_config=rcfg, prepare=crash_sender_early)
    assert set(run.failed) == {"r0", "r1"}
    assert all("silent" in reason for reason in run.failed.values())
    assert run.completed == {}


def test_resumed_receiver_fetches_only_missing_units():
    data = random.Random(9).randbytes(100_000)
    snap = make_snapshot(data)
    have = set(range(0, snap.block_count, 2))

    def load_unit(u: int) -> bytes:
        start, length = snap.block_range(u)
        return data[start : start + length]

    from mcast.sender import BytesSource, Sender
    from mcast.simnet import SimNet

    net = SimNet(seed=1)
    net.add(
        "sender",
        lambda now: Sender(
            snap,
            BytesSource(data),
            session_id=9,
            sender_id=1,
            now=now,
            config=SenderConfig(packet_size=256),
        ),
    )
    net.add(
        "r",
        lambda now: Receiver(
            snap, receiver_id=5, now=now, verified_units=have, load_unit=load_unit
        ),
        link=Link(loss=0.1),
    )
    seen = []
    net.on_event = lambda now, name, ev: seen.append(ev)
    net.run(30.0, lambda: net.nodes["r"].core is not None and net.core("r").complete)
    verified = [ev.unit for ev in seen if type(ev).__name__ == "UnitVerified"]
    assert sorted(verified) == sorted(set(range(snap.block_count)) - have)
    assert net.core("r").complete


def test_resuming_without_a_way_to_read_units_back_is_refused():
    snap = make_snapshot(b"x" * 10_000)
    try:
        Receiver(snap, receiver_id=1, now=0.0, verified_units=[0])
    except ValueError as exc:
        assert "load_unit" in str(exc)
    else:
        raise AssertionError("a partial resume without load_unit was accepted")


def test_receiver_that_has_everything_completes_at_once():
    data = b"y" * 9000
    snap = make_snapshot(data)
    r = Receiver(snap, receiver_id=1, now=0.0, verified_units=range(snap.block_count))
    assert r.complete
    assert type(r.next_event()).__name__ == "Completed"


def test_feedback_flood_from_one_source_is_rate_limited():
    data = random.Random(10).randbytes(20_000)
    snap = make_snapshot(data)
    from mcast.sender import BytesSource, Sender

    s = Sender(
        snap,
        BytesSource(data),
        session_id=1,
        sender_id=1,
        now=0.0,
        config=SenderConfig(packet_size=256),
    )
    s.datagrams_to_send(0.0)
    for seq in range(1, 10_001):  # each one new: replays are dropped before the limiter
        nak = wire.encode(wire.Nak(1, 66, (wire.NakEntry(0, 3, 0),), seq))
        s.receive_datagram(nak, ("198.18.0.66", 1), 0.001)
    assert s.stats.feedback_refused > 9_000
    assert s.stats.naks_received <= 101
    # the same NAK again and again is a replay: dropped before it costs a token
    again = wire.encode(wire.Nak(1, 67, (wire.NakEntry(0, 3, 0),), 5))
    for _ in range(1_000):
        s.receive_datagram(again, ("198.18.0.67", 1), 0.002)
    assert s.stats.replays == 999 and s.stats.naks_received <= 102


def test_nak_cannot_ask_for_more_than_a_block():
    data = random.Random(11).randbytes(20_000)
    snap = make_snapshot(data)
    from mcast.sender import BytesSource, Sender

    s = Sender(
        snap,
        BytesSource(data),
        session_id=1,
        sender_id=1,
        now=0.0,
        config=SenderConfig(packet_size=256, rate_bps=0),
    )
    now = 0.0
    while not s.pass_done:
        s.datagrams_to_send(now)
        now += 0.01
    k = s.geometry.k(0)
    nak = wire.encode(wire.Nak(1, 66, (wire.NakEntry(0, 2**32 - 1, 0),)))
    s.receive_datagram(nak, ("a", 1), now + 1.0)
    assert s.stats.parity_requested == k


def _started_sender(rate_bps: int):
    from mcast.sender import BytesSource, Sender

    data = random.Random(12).randbytes(400_000)
    snap = make_snapshot(data)
    s = Sender(
        snap,
        BytesSource(data),
        session_id=1,
        sender_id=1,
        now=0.0,
        config=SenderConfig(packet_size=1400, rate_bps=rate_bps),
    )
    return s


def test_a_receiver_overrun_report_slows_the_sender():
    s = _started_sender(0)  # uncapped: it starts at start_rate and follows the receivers
    start = s.rate_bps
    s.datagrams_to_send(0.0)
    ok = wire.encode(wire.Status(1, 5, 0, False, socket_drops=0, seq=1))
    s.receive_datagram(ok, ("r", 1), 0.2)
    assert s.rate_bps == start
    overrun = wire.encode(wire.Status(1, 5, 0, False, socket_drops=40, seq=2))
    s.receive_datagram(overrun, ("r", 1), 0.3)
    assert s.rate_bps < start and s.stats.rate_cuts == 1
    backlog = wire.encode(wire.Status(1, 5, 0, False, socket_drops=40, backlog_pct=90, seq=3))
    s.receive_datagram(backlog, ("r", 1), 0.5)
    assert s.stats.rate_cuts == 2


def test_random_wire_loss_does_not_slow_the_sender():
    s = _started_sender(100_000_000)
    for i in range(20):  # 5% loss: parity's job
        lossy = wire.encode(wire.Status(1, 5, 0, False, loss_permille=50, seq=i + 1))
        s.receive_datagram(lossy, ("r", 1), 0.1 * (i + 1))
    assert s.stats.status_received == 20
    assert s.rate_bps == 100_000_000 and s.stats.rate_cuts == 0


def test_an_unused_rate_is_not_grown():
    s = _started_sender(0)
    start = s.rate_bps
    for i in range(50):  # nobody asks it to send more than it can: never pacing-limited
        s.handle_timer(0.1 * (i + 1))
    assert s.rate_bps == start


def test_an_empty_or_short_session_key_is_refused_not_silently_unauthenticated():
    import pytest

    from mcast.sender import BytesSource, Sender

    snap = make_snapshot(b"k" * 1000)
    for bad in (b"", b"short"):
        with pytest.raises(ValueError, match="at least 16 bytes"):
            Receiver(snap, receiver_id=1, now=0.0, key=bad)
        with pytest.raises(ValueError, match="at least 16 bytes"):
            Sender(snap, BytesSource(b"k" * 1000), session_id=1, sender_id=1, now=0.0, key=bad)


def test_a_master_sends_only_blocks_whose_units_it_has():
    from mcast.sender import BytesSource, Sender

    data = random.Random(13).randbytes(300_000)
    snap = make_snapshot(data)  # 4 KiB units
    s = Sender(
        snap,
        BytesSource(data),
        session_id=1,
        sender_id=1,
        now=0.0,
        config=SenderConfig(packet_size=1024, units_per_block=4, rate_bps=10**10),
    )
    s.set_available_units(9)  # two whole blocks of four units, and one unit of the third
    sent, now = [], 0.0
    for _ in range(50):
        sent += [wire.decode_untrusted(d) for d in s.datagrams_to_send(now)]
        now += 0.01
    blocks = {m.block for m in sent if isinstance(m, wire.Data)}
    assert blocks == {0, 1}
    assert not s.pass_done
    timer = s.get_timer()
    assert timer is not None and timer > now - 0.01  # waiting: no spinning on a past timer
    s.set_available_units(snap.block_count)
    for _ in range(200):
        sent += [wire.decode_untrusted(d) for d in s.datagrams_to_send(now)]
        now += 0.01
    assert s.pass_done
    assert {m.block for m in sent if isinstance(m, wire.Data)} == set(range(s.geometry.block_count))


def test_repairs_flow_during_the_pass_and_the_tail_after_it_is_short():
    """Repairs must not wait for the end of the pass, and after it a retry round (80 ms)
    should rarely be needed: the last repairs carry a few spares."""
    data = random.Random(14).randbytes(2_000_000)
    cfg = SenderConfig(packet_size=1432, units_per_block=4, rate_bps=100_000_000)
    pass_done_at = []

    def watch(run):
        def on_event(now, name, event, inner=run.net.on_event):
            inner(now, name, event)

        run.net.on_event = on_event
        original = run.net._fan_out

        def fan_out(src, dgram):
            sender = run.net.nodes["sender"].core
            if src == "sender" and sender is not None and sender.pass_done and not pass_done_at:
                pass_done_at.append((run.net.now, sender.stats.parity_sent))
            original(src, dgram)

        run.net._fan_out = fan_out

    run = simulate(
        data, [Link(loss=0.02)] * 10, seed=15, block_size=65536, sender_config=cfg, prepare=watch
    )
    assert len(run.completed) == 10
    at, parity_before_end = pass_done_at[0]
    assert parity_before_end > 0.6 * run.sender().stats.parity_sent  # most repairs mid-pass
    assert max(run.completed.values()) - at < 0.06  # no retry round in the tail


def _announce(snap, *, receivers: int, echoes: tuple[int, ...] = (), seq: int = 1) -> bytes:
    ann = wire.Announce(
        session=9, package_hash=snap.package_hash, sender_id=1, packet_size=1432,
        units_per_block=16, parity_ratio_pct=100, rate_bps=10**8, group="239.1.1.1",
        port=1, next_block=0, pass_done=False, receivers=receivers, progress_pct=0,
        complete=False, rank=0, verified_units=0, hold_ms=0, seq=seq, echoes=echoes,
    )  # fmt: skip
    return wire.encode(ann)


def test_a_waiting_receiver_keeps_no_solicits_and_waits_its_turn_in_a_crowd():
    """Other receivers' SOLICITs are for the sender: not kept for after the join. An announce
    that echoes a full list of other nonces means the sender is working through a backlog:
    no SOLICIT at once (ten thousand of them would only lengthen it)."""
    snap = make_snapshot(random.Random(1).randbytes(5000), 4096)
    rcv = Receiver(snap, receiver_id=1, now=0.0, rng=random.Random(2))
    rcv.handle_timer(0.0)
    assert len(rcv.datagrams_to_send(0.0)) == 1  # its first SOLICIT
    other = wire.encode(wire.Solicit(0, snap.package_hash, 2, 5, 6))
    rcv.receive_datagram(other, None, 0.001)
    assert len(rcv._early) == 0
    full = tuple(range(1, wire.MAX_ECHOES + 1))
    rcv.receive_datagram(_announce(snap, receivers=10_000, echoes=full), None, 0.002)
    assert rcv._reports.next_solicit > 0.1  # the regular interval, not 20 ms
    rcv.receive_datagram(_announce(snap, receivers=10_000, echoes=(1,), seq=2), None, 0.003)
    assert rcv._reports.next_solicit <= 0.05 + 1e-9  # a short list: ours was lost, ask again


def test_the_announced_group_sets_the_nak_backoff_and_status_spacing():
    snap = make_snapshot(random.Random(1).randbytes(5000), 4096)
    rcv = Receiver(snap, receiver_id=1, now=0.0, rng=random.Random(2))
    rcv.handle_timer(0.0)
    nonce = wire.decode_untrusted(rcv.datagrams_to_send(0.0)[0]).nonce  # type: ignore[union-attr]
    rcv.receive_datagram(_announce(snap, receivers=5000, echoes=(nonce,)), None, 0.01)
    assert rcv.session_id == 9
    assert rcv._naks.group == rcv._reports.group == 5000
    assert rcv.datagrams_to_send(0.01) == []  # no STATUS at the join in a group this large
    rcv.receive_datagram(_announce(snap, receivers=2**32 - 1, seq=2), None, 0.02)
    assert rcv._naks.group == 65536  # capped: no sender tracks more
