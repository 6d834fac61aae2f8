"""A hostile host on the LAN: forged shards, parity and END may cost repairs, never a wrong
byte. With the session key, forgeries are dropped before they cost anything."""

from __future__ import annotations

import random

from mcast import wire
from mcast.geometry import Geometry
from mcast.simnet import Link
from tests.harness import simulate


class Forger:
    """Hears the announce, then floods forged DATA and PARITY for every shard, and END."""

    def __init__(self, now: float, *, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.out: list[bytes] = []
        self.sent_forgeries = False
        self.forged = 0

    def receive_datagram(self, data: bytes, addr: object, now: float) -> None:
        try:
            msg = wire.decode_untrusted(data)  # no key: it sees what a bystander sees
        except wire.BadPacket:
            return
        if isinstance(msg, wire.Announce) and not self.sent_forgeries:
            self.sent_forgeries = True
            self._forge_everything(msg)

    def _forge_everything(self, a: wire.Announce) -> None:
        total = self.total_size
        g = Geometry(total, self.block_size, a.packet_size, a.units_per_block, a.parity_ratio_pct)
        key = self.rng.randbytes(32)  # a guess at the session key
        for b in range(g.block_count):
            for i in range(g.k(b)):
                length = g.shard_span(b, i)[1]
                payload = self.rng.randbytes(length)
                self.out.append(wire.encode_shard(wire.MsgType.DATA, a.session, b, i, payload, key))
            for seq in range(4):
                payload = self.rng.randbytes(a.packet_size)
                self.out.append(
                    wire.encode_shard(wire.MsgType.PARITY, a.session, b, seq, payload, key)
                )
        self.out.append(wire.encode(wire.End(a.session, "forged end"), key))
        self.forged = len(self.out)

    def handle_timer(self, now: float) -> None:
        pass

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out, self.out = self.out, []
        return out

    def get_timer(self) -> float | None:
        return None

    def next_event(self) -> object:
        return None


def _forger_factory(data_len: int, block_size: int):
    holder: dict[str, Forger] = {}

    def make(now: float) -> Forger:
        f = Forger(now)
        f.total_size, f.block_size = data_len, block_size  # type: ignore[attr-defined]
        holder["f"] = f
        return f

    return make, holder


def test_forgeries_without_a_key_cost_repairs_but_never_a_wrong_byte():
    data = random.Random(1).randbytes(80_000)
    make, holder = _forger_factory(len(data), 4096)
    run = simulate(data, [Link(loss=0.02)] * 3, key=None, extra_nodes={"mallory": make})
    assert holder["f"].forged > 0
    assert run.failed == {}
    for name, out in run.outputs.items():
        assert bytes(out) == data, name
    failures = sum(run.receiver(n).stats.verify_failures for n in run.outputs)
    assert failures > 0  # the attack really reached the receivers and was caught


def test_with_the_session_key_forgeries_are_dropped_before_they_cost_anything():
    data = random.Random(2).randbytes(80_000)
    make, holder = _forger_factory(len(data), 4096)
    run = simulate(data, [Link(loss=0.02)] * 3, key=b"s" * 32, extra_nodes={"mallory": make})
    assert holder["f"].forged > 0
    assert run.failed == {}
    for name, out in run.outputs.items():
        assert bytes(out) == data, name
        stats = run.receiver(name).stats
        assert stats.verify_failures == 0
        assert stats.bad_packets >= holder["f"].forged * 0.9


def test_a_forged_end_does_not_end_a_live_session():
    data = random.Random(3).randbytes(300_000)

    class EndSpammer(Forger):
        def _forge_everything(self, a: wire.Announce) -> None:
            self.out.append(wire.encode(wire.End(a.session, "forged end")))
            self.forged = 1

    run = simulate(data, [Link()] * 2, key=None, extra_nodes={"mallory": EndSpammer})
    assert run.failed == {}
    assert all(bytes(out) == data for out in run.outputs.values())


def test_receivers_ignore_other_packages_and_sessions():
    data = random.Random(4).randbytes(30_000)
    other = random.Random(5).randbytes(30_000)

    class OtherSender(Forger):
        def _forge_everything(self, a: wire.Announce) -> None:
            fake = wire.Announce(
                **{
                    **{f: getattr(a, f) for f in a.__slots__},
                    "session": a.session + 1,
                    "package_hash": b"\x01" * 32,
                }
            )
            self.out.append(wire.encode(fake))
            for i in range(20):
                self.out.append(
                    wire.encode_shard(wire.MsgType.DATA, a.session + 1, 0, i, other[:256], None)
                )
            self.forged = 21

    run = simulate(data, [Link()] * 2, key=None, extra_nodes={"mallory": OtherSender})
    assert all(bytes(out) == data for out in run.outputs.values())
    assert all(run.receiver(n).stats.other_session >= 1 for n in run.outputs)
