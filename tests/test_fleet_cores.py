"""The cores' part in fleet sessions: the rendezvous hold, what announces tell the election,
liveness from the master's own progress, the slow-session floor, and who takes over."""

from __future__ import annotations

import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcast.events import SessionFailed
from mcast.receiver import Receiver, ReceiverConfig
from mcast.sender import BytesSource, Sender, SenderConfig
from mcast.simnet import Link
from mcast.wire import Announce, Data, decode_untrusted
from tests.harness import make_snapshot

KEY = b"k" * 32
DATA = random.Random(5).randbytes(40_000)
SNAP = make_snapshot(DATA, 4096)
CFG = SenderConfig(packet_size=256, units_per_block=4, rate_bps=20_000_000, burst_bytes=8192)


def sender(now: float = 0.0, **cfg: object) -> Sender:
    config = SenderConfig(**{**CFG.__dict__, **cfg})  # type: ignore[arg-type]
    return Sender(SNAP, BytesSource(DATA), session_id=0xABC, sender_id=3, now=now, key=KEY,
                  config=config)  # fmt: skip


def drain(s: Sender, now: float) -> list[object]:
    return [decode_untrusted(d, KEY) for d in s.datagrams_to_send(now)]


def test_a_held_session_announces_but_sends_no_data_until_the_hold_ends() -> None:
    s = sender(hold_s=2.0)
    t, holds, first_data = 0.0, [], None
    while first_data is None and t < 5:
        for msg in drain(s, t):
            if isinstance(msg, Announce):
                holds.append((t, msg.hold_ms))
            elif isinstance(msg, Data) and first_data is None:
                first_data = t
        t = max(t + 0.001, s.get_timer() or t + 0.01)
    assert first_data is not None and 2.0 <= first_data < 2.05
    assert holds[0][1] == 2000
    during = [h for when, h in holds if when < 2.0]
    assert during == sorted(during, reverse=True) and all(h > 0 for h in during)
    assert all(h == 0 for when, h in holds if when >= 2.0)


def test_without_a_hold_data_goes_out_at_once() -> None:
    s = sender()
    assert any(isinstance(m, Data) for m in drain(s, 0.0))


def test_announces_tell_the_election_what_the_master_holds() -> None:
    s = sender(rank=3)
    s.set_available_units(2)  # a master streaming its own download
    ann = next(m for m in drain(s, 0.0) if isinstance(m, Announce))
    assert (ann.complete, ann.rank, ann.verified_units) == (False, 3, 2)
    s.set_available_units(SNAP.block_count)
    t = s.get_timer() or 0.0
    later = [m for m in drain(s, max(t, 0.6)) if isinstance(m, Announce)]
    assert later and later[0].complete and later[0].verified_units == SNAP.block_count
    full = next(m for m in drain(sender(), 0.0) if isinstance(m, Announce))
    assert full.complete and full.verified_units == SNAP.block_count  # serving from disk


# ---------------------------------------------------------------------------------------
# receivers: a slow or stalled master keeps them, one under the floor loses them, a dead one
# is taken over by the receiver that holds the most

from collections.abc import Callable  # noqa: E402

from mcast.events import Completed, FailureKind  # noqa: E402
from mcast.simnet import SimNet  # noqa: E402

RCFG = ReceiverConfig(silence_timeout=1.5, min_progress_bytes_per_s=2048, slow_grace=3.0)


class Streaming:
    """A master whose own download has made ``units_at(now)`` units readable."""

    def __init__(self, core: Sender, units_at: Callable[[float], int], step: float) -> None:
        self.core, self.units_at, self.step = core, units_at, step
        self._next = 0.0

    def _sync(self, now: float) -> None:
        self.core.set_available_units(self.units_at(now))
        if now >= self._next:
            self._next = now + self.step

    def receive_datagram(self, data: bytes, addr: object, now: float) -> None:
        self.core.receive_datagram(data, addr, now)

    def handle_timer(self, now: float) -> None:
        self._sync(now)
        self.core.handle_timer(now)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        self._sync(now)
        return self.core.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        t = self.core.get_timer()
        if self.units_at(self._next) <= SNAP.block_count or t is None:
            return self._next if t is None else min(t, self._next)
        return t

    def next_event(self) -> object:
        return self.core.next_event()


def run_fleet(
    units_at: Callable[[float], int] | None = None,
    *,
    receivers: int = 3,
    crash_at: float | None = None,
    ranks: list[int] | None = None,
    losses: list[float] | None = None,
    until: float = 60.0,
    sender_cfg: dict[str, object] | None = None,
) -> tuple[SimNet, dict[str, object]]:
    net = SimNet(seed=3)
    ends: dict[str, object] = {}

    def master(now: float) -> object:
        core = sender(now, **(sender_cfg or {}))
        return Streaming(core, units_at, 0.1) if units_at else core

    net.add("sender", master)  # type: ignore[arg-type]
    for i in range(receivers):
        cfg = ReceiverConfig(**{**RCFG.__dict__, "rank": (ranks or [0] * receivers)[i]})
        net.add(f"r{i}", lambda now, i=i, cfg=cfg: Receiver(
            SNAP, receiver_id=100 + i, now=now, rng=random.Random(i), key=KEY, config=cfg),
            link=Link(loss=(losses or [0.0] * receivers)[i]))  # fmt: skip

    def on_event(now: float, name: str, event: object) -> None:
        if isinstance(event, Completed | SessionFailed):
            ends[name] = event

    net.on_event = on_event
    if crash_at is not None:
        net.run(crash_at)
        net.stop("sender")
    net.run(until, lambda: len(ends) == receivers)
    return net, ends


def test_a_slow_but_moving_master_keeps_its_receivers() -> None:
    """One unit every 0.8 s (5 KB/s, over the 2 KB/s floor): a block of 4 units is sent
    every 3.2 s, more than twice the silence timeout, yet announces show the master's own
    progress, so nobody leaves."""
    _net, ends = run_fleet(lambda now: int(now / 0.8), until=60)
    assert all(isinstance(e, Completed) for e in ends.values()), ends
    assert len(ends) == 3


def test_a_master_that_stalls_for_a_while_keeps_its_receivers() -> None:
    """A package server still replicating: nothing new for 2.5 s, then everything."""
    _net, ends = run_fleet(lambda now: 2 if now < 2.5 else SNAP.block_count, until=30)
    assert len(ends) == 3 and all(isinstance(e, Completed) for e in ends.values()), ends


def test_a_master_under_the_floor_is_left_for_http() -> None:
    """Stuck at two units: the announces keep coming, but the floor ends the session."""
    net, ends = run_fleet(lambda now: 2, until=30)
    assert len(ends) == 3
    for e in ends.values():
        assert isinstance(e, SessionFailed) and e.kind is FailureKind.SLOW and not e.take_over
    assert net.now < 2 * RCFG.slow_grace + 1  # within a window or two of joining


def test_a_held_session_is_not_slow_and_not_silent() -> None:
    _net, ends = run_fleet(sender_cfg={"hold_s": 5.0}, until=30)
    assert len(ends) == 3 and all(isinstance(e, Completed) for e in ends.values()), ends


@settings(max_examples=30, deadline=None)
@example(crash_at=0.015625, ranks=[0, 0, 0, 0], losses=[0.0, 0.0, 0.3, 0.05])  # one never joins
@given(crash_at=st.floats(0.01, 0.12), ranks=st.lists(st.integers(0, 3), min_size=4,
                                                       max_size=4),
       losses=st.lists(st.sampled_from([0.0, 0.05, 0.3]), min_size=4, max_size=4))  # fmt: skip
def test_when_the_master_dies_the_best_receiver_takes_over(crash_at, ranks, losses):
    """The receiver with the most verified units (then rank, then lower id) always names
    itself; a receiver that lost the best one's reports may name itself too, and the claim
    election between them settles it (mcast.discovery). Without loss, exactly one does."""
    net, ends = run_fleet(crash_at=crash_at, receivers=4, ranks=ranks, losses=losses,
                          sender_cfg={"rate_bps": 1_000_000}, until=30)  # fmt: skip
    assert len(ends) == 4
    ended = {n: e for n, e in ends.items() if isinstance(e, SessionFailed)}
    # a receiver that lost every announce before the crash never joined: no session, no heir
    never = {n for n, e in ended.items() if e.kind is FailureKind.NO_SESSION}
    assert all(not ended[n].take_over and net.core(n).verified_units == 0  # type: ignore[attr-defined]
               for n in never)  # fmt: skip
    failed = {n: e for n, e in ended.items() if n not in never}
    if not failed:
        return  # everyone completed before the crash
    assert all(e.kind is FailureKind.SILENT for e in failed.values())
    heirs = [n for n, e in failed.items() if e.take_over]
    units = {n: net.core(n).verified_units for n in failed}  # type: ignore[attr-defined]
    best = max(failed, key=lambda n: (units[n], ranks[int(n[1:])], -int(n[1:])))
    assert best in heirs, (failed, units)
    if not any(losses):
        assert heirs == [best]
