"""CPU cost of the cores per datagram, without any network: one sender feeds one receiver.

    python -m bench.core_speed --size 64M [--loss 2]

Prints one JSON object: microseconds per datagram for the sender to build and the receiver
to take in (verify tag, store, hash, hand up), lossless, and under ``decoding`` the same
with ``--loss`` percent of the first pass dropped at random, so that the receiver
Reed-Solomon decodes every damaged block and the sender encodes the parity its NAKs ask for.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

from bench.sim import make_package
from mcast.events import UnitVerified
from mcast.receiver import Receiver
from mcast.sender import BytesSource, Sender, SenderConfig
from mcast.snapshot import Snapshot
from mcast.units import parse_size


def _joined(snap: Snapshot, data: bytes, key: bytes) -> tuple[Sender, Receiver]:
    """A sender and a receiver that has joined its session (its SOLICIT echoed)."""
    sender = Sender(snap, BytesSource(data), session_id=1, sender_id=1, now=0.0, key=key,
                    config=SenderConfig(rate_bps=10**12, max_batch=4096))  # fmt: skip
    receiver = Receiver(snap, receiver_id=2, now=0.0, key=key, rng=random.Random(1))
    receiver.handle_timer(0.0)
    for d in receiver.datagrams_to_send(0.0):
        sender.receive_datagram(d, None, 0.0)
    return sender, receiver


class _Clock:
    """Wall time spent in each core, and how many datagrams each handled."""

    def __init__(self) -> None:
        self.send_s = self.recv_s = 0.0
        self.sent = self.received = 0

    def send(self, sender: Sender, now: float) -> list[bytes]:
        t0 = time.perf_counter()
        out = sender.datagrams_to_send(now)
        self.send_s += time.perf_counter() - t0
        self.sent += len(out)
        return out

    def feed(self, receiver: Receiver, dgrams: list[bytes], now: float) -> None:
        t0 = time.perf_counter()
        for d in dgrams:
            receiver.receive_datagram(d, None, now)
            while receiver.next_event() is not None:
                pass
        self.recv_s += time.perf_counter() - t0
        self.received += len(dgrams)

    def figures(self) -> dict[str, float]:
        return {
            "sender_us_per_datagram": round(self.send_s / max(1, self.sent) * 1e6, 2),
            "receiver_us_per_datagram": round(self.recv_s / max(1, self.received) * 1e6, 2),
        }


def with_decoding(snap: Snapshot, data: bytes, key: bytes, loss: float) -> dict[str, Any]:
    """The first pass with ``loss`` of it dropped at random, then the NAK/repair rounds until
    the receiver completes: the receiver's cost includes Reed-Solomon decoding, the
    sender's the encoding of the parity it was asked for."""
    sender, receiver = _joined(snap, data, key)
    rng = random.Random(2)
    clock = _Clock()
    now = 0.0
    while not sender.pass_done:
        kept = [d for d in clock.send(sender, now) if rng.random() >= loss]
        clock.feed(receiver, kept, now)
        now += 0.01
    deadline = now + 600.0
    while not receiver.complete and now < deadline:
        timer = receiver.get_timer()
        if timer is not None and timer <= now:
            receiver.handle_timer(now)
        for d in receiver.datagrams_to_send(now):
            sender.receive_datagram(d, None, now)
        timer = sender.get_timer()
        if timer is not None and timer <= now:
            sender.handle_timer(now)
        clock.feed(receiver, clock.send(sender, now), now)
        now += 0.005
    return {
        "loss": loss,
        "complete": receiver.complete,
        "datagrams": clock.received,
        "decodes": receiver.statistics().decodes,
        "repairs_sent": sender.stats.parity_sent,
        **clock.figures(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.core_speed")
    ap.add_argument("--size", type=parse_size, default=64 * 2**20)
    ap.add_argument("--loss", type=float, default=2.0,
                    help="percent of the first pass dropped for the decoding run (0: skip it)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the receiver")
    args = ap.parse_args(argv)
    if not 0 <= args.loss < 50:
        ap.error("--loss is a percentage in [0, 50)")
    snap, data = make_package(args.size, 1)
    key = b"k" * 32
    sender, receiver = _joined(snap, data, key)
    t0 = time.perf_counter()
    dgrams: list[bytes] = []
    now = 0.0
    while not sender.pass_done:
        dgrams.extend(sender.datagrams_to_send(now))
        now += 0.01  # pacing is not what this measures: let the bucket refill
    send_s = time.perf_counter() - t0

    def run() -> int:
        units = 0
        for d in dgrams:
            receiver.receive_datagram(d, None, 0.001)
            while (ev := receiver.next_event()) is not None:
                units += isinstance(ev, UnitVerified)
        return units

    t0 = time.perf_counter()
    if args.profile:
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            units = run()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(12)
    else:
        units = run()
    recv_s = time.perf_counter() - t0
    n = len(dgrams)
    result: dict[str, Any] = {
        "datagrams": n, "size": args.size, "units_verified": units,
        "complete": receiver.complete,
        "sender_us_per_datagram": round(send_s / n * 1e6, 2),
        "receiver_us_per_datagram": round(recv_s / n * 1e6, 2),
        "receiver_datagrams_per_s": round(n / recv_s),
        "receiver_MB_per_s": round(args.size / recv_s / 1e6, 1),
    }  # fmt: skip
    ok = receiver.complete
    if args.loss:
        result["decoding"] = decoded = with_decoding(snap, data, key, args.loss / 100)
        ok = ok and decoded["complete"]
    json.dump(result, sys.stdout)
    print()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
