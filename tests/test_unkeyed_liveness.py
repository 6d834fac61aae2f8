"""Without a session key (``--insecure``) nothing on the wire proves who sent it: the receiver
counts only verified progress as a sign of life, and forged data it cannot authenticate costs
repairs, never the session. All in virtual time on SimNet."""

from __future__ import annotations

import random

import pytest

from mcast import wire
from mcast.events import Completed, FailureKind, SessionFailed, UnitVerified
from mcast.receiver import Receiver, ReceiverConfig
from mcast.sender import BytesSource, Sender, SenderConfig
from mcast.simnet import SimNet
from tests.harness import make_snapshot

SENDER = SenderConfig(packet_size=256, units_per_block=4, rate_bps=2_000_000, burst_bytes=8192)
CLI_RECV = ReceiverConfig(silence_timeout=10.0)  # what `mcast recv` runs (--timeout 10)


class Node:
    """A bystander on the LAN: hears what everybody hears, sends what ``act`` returns."""

    def __init__(self, act, *, every: float | None = None) -> None:
        self.act, self.every = act, every
        self.announce: wire.Announce | None = None
        self.out: list[bytes] = []
        self.next: float | None = None
        self.sent = 0

    def receive_datagram(self, data: bytes, addr: object, now: float) -> None:
        try:
            msg = wire.decode_untrusted(data)  # no key: what any host can read
        except wire.BadPacket:
            return
        if isinstance(msg, wire.Announce) and self.announce is None:
            self.announce = msg
            self.next = now
            self.handle_timer(now)

    def handle_timer(self, now: float) -> None:
        if self.announce is None or self.next is None or now < self.next:
            return
        forged = self.act(self.announce)
        self.out += forged
        self.sent += len(forged)
        self.next = now + self.every if self.every else None

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out, self.out = self.out, []
        return out

    def get_timer(self) -> float | None:
        return self.next

    def next_event(self) -> object:
        return None


class Watch:
    """One receiver's outcome on the net."""

    def __init__(self, net: SimNet, data: bytes) -> None:
        self.data, self.out = data, bytearray(len(data))
        self.failed: SessionFailed | None = None
        self.failed_at: float | None = None
        self.completed_at: float | None = None
        net.on_event = self.on_event

    def on_event(self, now: float, name: str, event: object) -> None:
        if name != "r0":
            return
        if isinstance(event, UnitVerified):
            self.out[event.offset : event.offset + len(event.data)] = event.data
        elif isinstance(event, Completed):
            self.completed_at = now
        elif isinstance(event, SessionFailed):
            self.failed, self.failed_at = event, now

    @property
    def over(self) -> bool:
        return self.failed is not None or self.completed_at is not None


def lan(data: bytes, cfg: ReceiverConfig, source: bytes | None = None) -> tuple[SimNet, Watch]:
    snap = make_snapshot(data)
    net = SimNet(seed=3)
    src = BytesSource(data if source is None else source)
    net.add("sender", lambda now: Sender(snap, src, session_id=0xBEEF, sender_id=1, now=now,
                                         config=SENDER))  # fmt: skip
    net.add("r0", lambda now: Receiver(snap, receiver_id=9, now=now, config=cfg,
                                       rng=random.Random(1)))  # fmt: skip
    return net, Watch(net, data)


def forged_parity(a: wire.Announce) -> list[bytes]:
    payload = random.Random(a.session).randbytes(a.packet_size)
    return [wire.encode_shard(wire.MsgType.PARITY, a.session, 0, 5, payload, None)]


@pytest.mark.parametrize(
    "cfg",
    [CLI_RECV, ReceiverConfig(silence_timeout=10.0, min_progress_bytes_per_s=0)],
    ids=["mcast-recv", "no-floor"],
)
def test_a_forged_parity_every_4s_does_not_keep_a_receiver_alive_after_its_sender_died(
    cfg: ReceiverConfig,
) -> None:
    data = random.Random(4).randbytes(300_000)
    net, watch = lan(data, cfg)
    net.add("mallory", lambda now: Node(forged_parity, every=4.0))

    def half_way() -> bool:
        core = net.nodes["r0"].core
        return isinstance(core, Receiver) and core.verified_units >= 20

    net.run(60.0, half_way)
    receiver = net.core("r0")
    assert isinstance(receiver, Receiver) and not receiver.complete
    net.stop("sender")  # SIGKILL: no END
    died = net.now
    net.run(600.0, lambda: watch.over)
    mallory = net.core("mallory")
    assert isinstance(mallory, Node) and mallory.sent >= 3  # it kept forging past the timeout
    assert watch.failed is not None and watch.failed_at is not None, "forgeries kept it alive"
    # a dead master, judged by the silence timeout: `mcast recv` follows a new sender and a
    # fetch may take over; not "slow", which would send everything to HTTP
    assert watch.failed.kind is FailureKind.SILENT, watch.failed
    assert watch.failed_at <= died + cfg.silence_timeout + 0.1


def forge_one_shard_per_unit(a: wire.Announce, units: int) -> list[bytes]:
    """A forged first shard for ``units`` units: each completes a unit with wrong bytes."""
    rng = random.Random(7)
    shards_per_unit = 4096 // a.packet_size
    out = []
    for u in range(units):
        b, index = divmod(u * shards_per_unit, a.units_per_block * shards_per_unit)
        out.append(wire.encode_shard(wire.MsgType.DATA, a.session, b, index,
                                     rng.randbytes(a.packet_size), None))  # fmt: skip
    return out


def test_65_forged_datagrams_cost_repairs_not_the_session():
    data = random.Random(5).randbytes(100 * 4096)
    net, watch = lan(data, CLI_RECV)
    mallory = Node(lambda a: forge_one_shard_per_unit(a, 100))
    net.add("mallory", lambda now: mallory)
    net.run(600.0, lambda: watch.over)
    assert mallory.sent == 100 > CLI_RECV.max_verify_failures
    receiver = net.core("r0")
    assert isinstance(receiver, Receiver)
    assert receiver.stats.verify_failures > CLI_RECV.max_verify_failures  # they all landed
    assert watch.failed is None and watch.completed_at is not None
    assert bytes(watch.out) == data


def test_a_unit_the_session_keeps_getting_wrong_ends_it_while_the_rest_verifies():
    """Not every failure is a forgery: a sender whose copy of one unit is wrong would be asked
    for it again forever. After ``max_unit_failures`` of one unit the session has failed."""
    data = random.Random(6).randbytes(40 * 4096)
    bad = bytearray(data)
    bad[17 * 4096 + 100] ^= 0xFF  # unit 17 is corrupt in the sender's copy
    net, watch = lan(data, CLI_RECV, source=bytes(bad))
    net.run(600.0, lambda: watch.over)
    assert watch.failed is not None and watch.failed.kind is FailureKind.VERIFY, watch.failed
    receiver = net.core("r0")
    assert isinstance(receiver, Receiver)
    assert receiver.missing_units() == [17]
    assert receiver.stats.verify_failures == CLI_RECV.max_unit_failures + 1


def test_with_a_key_the_session_still_gives_up_on_data_that_keeps_failing():
    """Keyed, every shard that passes the tag comes from the key holder: failures are the
    session's, and the total limit stands."""
    data = random.Random(8).randbytes(100 * 4096)
    bad = bytes(b ^ 0x55 for b in data)  # the sender serves the wrong package throughout
    snap = make_snapshot(data)
    net = SimNet(seed=3)
    key = b"k" * 32
    net.add("sender", lambda now: Sender(snap, BytesSource(bad), session_id=0xBEEF, sender_id=1,
                                         now=now, key=key, config=SENDER))  # fmt: skip
    net.add("r0", lambda now: Receiver(snap, receiver_id=9, now=now, key=key, config=CLI_RECV,
                                       rng=random.Random(1)))  # fmt: skip
    watch = Watch(net, data)
    net.run(600.0, lambda: watch.over)
    assert watch.failed is not None and watch.failed.kind is FailureKind.VERIFY
    receiver = net.core("r0")
    assert isinstance(receiver, Receiver)
    limit = CLI_RECV.max_verify_failures
    assert limit < receiver.stats.verify_failures <= limit + SENDER.units_per_block
