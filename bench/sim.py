"""Virtual-time simulation: one sender, N receivers with independent random loss.

    python -m bench.sim --receivers 100 --loss 0.02 --size 8388608 --seed 1

Prints one JSON object. Every receiver runs the real receiver core and the sender the real
sender core, over :class:`mcast.simnet.SimNet`; every unit a receiver reports verified is
compared byte for byte with the package (``all_bytes_verified``; receivers that share one
bytes object for a unit have it compared once) and then let go: nothing of the package is
kept per receiver. The receivers share their parsing, erasure decoding and unit hashing
(:mod:`mcast.shared_decode`: the same answers, each computed once), so that ten thousand
receivers hold one copy of each payload between them. ``us_per_delivery`` is wall time per
datagram delivered to a node, ``peak_rss_mb`` the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mcast.events import Completed, SessionFailed, SessionJoined, UnitVerified
from mcast.receiver import Receiver, ReceiverConfig
from mcast.sender import BytesSource, Sender, SenderConfig
from mcast.shared_decode import SharedBlockDecoder, SharedDecoder, SharedUnitDigest
from mcast.simnet import Link, SimNet
from mcast.snapshot import Snapshot, build_snapshot, generate_key
from mcast.units import parse_rate, parse_size
from mcast.wire import MsgType


def make_package(size: int, seed: int) -> tuple[Snapshot, bytes]:
    data = random.Random(seed).randbytes(size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "package.bin"
        path.write_bytes(data)
        snap = build_snapshot(path, "sim").signed(generate_key())
    return snap, data


def _solicit(datagram: bytes) -> bool:
    """Receivers discard each other's SOLICITs unread (they are for the sender), so they are
    not delivered to them: at ten thousand receivers that saves 10**8 deliveries of nothing."""
    return len(datagram) > 3 and datagram[3] == MsgType.SOLICIT


def simulate(
    *,
    receivers: int,
    loss: float,
    size: int,
    seed: int,
    rate_bps: int = 100_000_000,
    late_join: float = 0.0,
    late_fraction: float = 0.0,
    delay: float = 0.0005,
    jitter: float = 0.0,
    keyed: bool = True,
    sender_config: SenderConfig | None = None,
    receiver_config: ReceiverConfig | None = None,
    time_limit: float = 3600.0,
) -> dict[str, Any]:
    started = time.perf_counter()
    snap, data = make_package(size, seed)
    rng = random.Random(seed)
    key = rng.randbytes(32) if keyed else None
    net = SimNet(seed=seed, delay=delay, by_node=True)
    scfg = sender_config or SenderConfig(rate_bps=rate_bps)
    net.add(
        "sender",
        lambda now: Sender(
            snap, BytesSource(data), session_id=rng.getrandbits(64), sender_id=1,
            now=now, key=key, config=scfg,
        ),
    )  # fmt: skip
    late = set(rng.sample(range(receivers), int(receivers * late_fraction)))
    completed_at: dict[str, float] = {}
    joined_at: dict[str, float] = {}
    failed: dict[str, str] = {}
    wrong_bytes = 0
    verified_units: dict[str, int] = {}
    unit = snap.block_size
    units = [data[off : off + unit] for off in range(0, len(data), unit)]  # one copy in all
    checked: dict[int, bytes] = {}  # unit -> the last bytes object found equal to it

    def on_event(now: float, name: str, event: Any) -> None:
        nonlocal wrong_bytes
        if isinstance(event, UnitVerified):
            if event.offset != event.unit * unit:
                wrong_bytes += 1
            elif checked.get(event.unit) is not event.data:  # each distinct object compared
                if units[event.unit] == event.data:
                    checked[event.unit] = event.data
                else:
                    wrong_bytes += 1
            verified_units[name] = verified_units.get(name, 0) + 1
        elif isinstance(event, SessionJoined):
            joined_at[name] = now
        elif isinstance(event, Completed):
            completed_at[name] = now
        elif isinstance(event, SessionFailed):
            failed[name] = event.reason

    net.on_event = on_event
    shared = SharedDecoder(key)
    blocks = SharedBlockDecoder()
    digests = SharedUnitDigest()

    def receiver(r: int, now: float) -> Receiver:
        return Receiver(
            snap, receiver_id=1000 + r, now=now, rng=random.Random(seed * 7919 + r),
            key=key, config=receiver_config, decode_shard=shared.shard,
            decode_message=shared.message, decode_block=blocks, digest_unit=digests,
        )  # fmt: skip

    for r in range(receivers):
        name = f"r{r}"
        net.add(
            name,
            functools.partial(receiver, r),
            start_at=late_join if r in late else 0.0,
            link=Link(loss=loss, jitter=jitter, drop=_solicit, drop_by_content=True),
        )  # fmt: skip
    sender_link = net.nodes["sender"].link
    sender_link.loss = loss  # feedback is lost as often as data
    names = [f"r{r}" for r in range(receivers)]

    def finished() -> bool:
        return len(completed_at) + len(failed) == receivers

    run_started = time.perf_counter()
    net.run(time_limit, finished)
    run_wall = time.perf_counter() - run_started
    sender = net.core("sender")
    assert isinstance(sender, Sender)
    rstats = [net.core(n).statistics() for n in names]  # type: ignore[attr-defined]
    all_units = snap.block_count
    complete = [n for n in names if n in completed_at]
    source_packets = sender.geometry.shard_count
    line_rate_s = size * 8 / rate_bps if rate_bps else 0.0
    virtual = max(completed_at.values(), default=net.now)
    wall = time.perf_counter() - started
    packets = sender.stats.data_sent + sender.stats.parity_sent
    return {
        "receivers": receivers,
        "loss": loss,
        "size": size,
        "seed": seed,
        "rate_bps": rate_bps,
        "completed": len(complete),
        "failed": len(failed),
        "failures": sorted(set(failed.values()))[:5],
        "all_bytes_verified": wrong_bytes == 0
        and all(verified_units.get(n, 0) == all_units for n in complete)
        and len(complete) == receivers,
        "wrong_units": wrong_bytes,
        "source_packets": source_packets,
        "data_packets_sent": sender.stats.data_sent,
        "repair_packets_sent": sender.stats.parity_sent,
        "repair_overhead": round(sender.stats.parity_sent / max(1, source_packets), 4),
        "packets_ratio": round(packets / max(1, source_packets), 4),
        "nak_packets_sent": sum(s.naks_sent for s in rstats),
        "nak_entries_sent": sum(s.nak_entries_sent for s in rstats),
        "naks_suppressed": sum(s.naks_suppressed for s in rstats),
        "decodes": sum(s.decodes for s in rstats),
        "virtual_seconds": round(virtual, 4),
        "joined": len(joined_at),
        "last_join_seconds": round(max(joined_at.values(), default=0.0), 4),
        "line_rate_seconds": round(line_rate_s, 4),
        "ratio_to_line_rate": round(virtual / line_rate_s, 4) if line_rate_s else None,
        "wall_seconds": round(wall, 2),
        "deliveries": net.delivered,
        "us_per_delivery": round(run_wall * 1e6 / max(1, net.delivered), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "blocks_decoded": blocks.computed,
        "blocks_decoded_shared": blocks.shared,
        "sender": asdict(sender.stats),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__.splitlines()[0])
    ap.add_argument("--receivers", type=int, default=10)
    ap.add_argument("--loss", type=float, default=0.02, help="loss probability per datagram")
    ap.add_argument("--size", type=parse_size, default=8 * 1024 * 1024, help="bytes (8M, 1G)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=parse_rate, default=100_000_000, help="e.g. 100mbit")
    ap.add_argument("--late-fraction", type=float, default=0.0, help="share of late joiners")
    ap.add_argument("--late-join", type=float, default=0.0, help="when late joiners start, s")
    ap.add_argument("--jitter", type=float, default=0.0, help="extra random delay, s")
    ap.add_argument("--units-per-block", type=int, default=16)
    args = ap.parse_args(argv)
    if args.receivers < 1 or not 0 <= args.loss < 1 or args.size < 0:
        ap.error("need --receivers >= 1, 0 <= --loss < 1, --size >= 0")
    result = simulate(
        receivers=args.receivers,
        loss=args.loss,
        size=args.size,
        seed=args.seed,
        rate_bps=args.rate,
        late_join=args.late_join,
        late_fraction=args.late_fraction,
        jitter=args.jitter,
        sender_config=SenderConfig(rate_bps=args.rate, units_per_block=args.units_per_block),
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result["all_bytes_verified"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
