"""CPU cost of the cores per datagram, without any network: one sender feeds one receiver.

    python -m bench.core_speed --size 64M

Prints one JSON object: microseconds per datagram for the sender to build and the receiver
to take in (verify tag, store, hash, hand up), and the implied datagrams per second.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from bench.sim import make_package
from mcast.events import UnitVerified
from mcast.receiver import Receiver
from mcast.sender import BytesSource, Sender, SenderConfig
from mcast.units import parse_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.core_speed")
    ap.add_argument("--size", type=parse_size, default=64 * 2**20)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the receiver")
    args = ap.parse_args(argv)
    snap, data = make_package(args.size, 1)
    key = b"k" * 32
    sender = Sender(snap, BytesSource(data), session_id=1, sender_id=1, now=0.0, key=key,
                    config=SenderConfig(rate_bps=10**12, max_batch=4096))  # fmt: skip
    receiver = Receiver(snap, receiver_id=2, now=0.0, key=key, rng=random.Random(1))
    receiver.handle_timer(0.0)  # its SOLICIT: the sender's announces echo the nonce
    for d in receiver.datagrams_to_send(0.0):
        sender.receive_datagram(d, None, 0.0)
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
    json.dump({
        "datagrams": n, "size": args.size, "units_verified": units,
        "complete": receiver.complete,
        "sender_us_per_datagram": round(send_s / n * 1e6, 2),
        "receiver_us_per_datagram": round(recv_s / n * 1e6, 2),
        "receiver_datagrams_per_s": round(n / recv_s),
        "receiver_MB_per_s": round(args.size / recv_s / 1e6, 1),
    }, sys.stdout)  # fmt: skip
    print()
    return 0 if receiver.complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
