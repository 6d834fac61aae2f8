"""Test harness: small signed packages, and a sender + receivers run on SimNet."""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcast.events import Completed, SenderFinished, SessionFailed, UnitVerified
from mcast.receiver import Receiver, ReceiverConfig
from mcast.sender import BytesSource, Sender, SenderConfig
from mcast.simnet import Link, SimNet
from mcast.snapshot import Snapshot, build_snapshot, generate_key

KEY = generate_key()


def make_snapshot(data: bytes, block_size: int = 4096, name: str = "pkg") -> Snapshot:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "payload.bin"
        path.write_bytes(data)
        os.utime(path, (1_700_000_000, 1_700_000_000))
        return build_snapshot(path, name, block_size=block_size, now=1_700_000_000).signed(KEY)


@dataclass
class Run:
    """Outcome of one simulated distribution, with every receiver's reassembled bytes."""

    net: SimNet
    data: bytes
    outputs: dict[str, bytearray] = field(default_factory=dict)
    completed: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    finished: SenderFinished | None = None
    units_seen: dict[str, list[int]] = field(default_factory=dict)

    def receiver(self, name: str) -> Receiver:
        core = self.net.core(name)
        assert isinstance(core, Receiver)
        return core

    def sender(self) -> Sender:
        core = self.net.core("sender")
        assert isinstance(core, Sender)
        return core


def simulate(
    data: bytes,
    links: list[Link],
    *,
    seed: int = 0,
    block_size: int = 4096,
    starts: list[float] | None = None,
    key: bytes | None = b"k" * 32,
    sender_config: SenderConfig | None = None,
    receiver_config: ReceiverConfig | None = None,
    until: float = 120.0,
    extra_nodes: dict[str, Any] | None = None,
    prepare: Any = None,
) -> Run:
    snap = make_snapshot(data, block_size)
    net = SimNet(seed=seed)
    run = Run(net, data)
    scfg = sender_config or SenderConfig(
        packet_size=256, units_per_block=4, rate_bps=20_000_000, burst_bytes=8192, linger=1.0
    )
    net.add(
        "sender",
        lambda now: Sender(
            snap,
            BytesSource(data),
            session_id=0xC0FFEE,
            sender_id=7,
            now=now,
            key=key,
            config=scfg,
        ),
    )
    names = []
    for i, link in enumerate(links):
        name = f"r{i}"
        names.append(name)
        run.outputs[name] = bytearray(len(data))
        run.units_seen[name] = []
        net.add(
            name,
            lambda now, i=i: Receiver(
                snap,
                receiver_id=100 + i,
                now=now,
                rng=random.Random(seed * 1000 + i),
                key=key,
                config=receiver_config,
            ),
            start_at=(starts[i] if starts else 0.0),
            link=link,
        )
    for name, factory in (extra_nodes or {}).items():
        net.add(name, factory)

    def on_event(now: float, name: str, event: Any) -> None:
        if isinstance(event, UnitVerified):
            run.outputs[name][event.offset : event.offset + len(event.data)] = event.data
            run.units_seen[name].append(event.unit)
        elif isinstance(event, Completed):
            run.completed[name] = now
        elif isinstance(event, SessionFailed):
            run.failed[name] = event.reason
        elif isinstance(event, SenderFinished):
            run.finished = event

    net.on_event = on_event
    if prepare is not None:
        prepare(run)
    net.run(until, lambda: len(run.completed) + len(run.failed) == len(names))
    return run
