"""Test harness: small signed packages, a sender + receivers run on SimNet, and waits that
order processes by the events they report (JSON lines, files, joined groups)."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from bench.labnet import Proc
from mcast.events import Completed, SenderFinished, SessionFailed, UnitVerified
from mcast.receiver import Receiver, ReceiverConfig
from mcast.sender import BytesSource, Sender, SenderConfig
from mcast.simnet import Link, SimNet
from mcast.snapshot import Snapshot, build_snapshot, generate_key
from mcast.wire import Announce, Solicit, decode_untrusted, encode

KEY = generate_key()
T = TypeVar("T")


def make_snapshot(data: bytes, block_size: int = 4096, name: str = "pkg") -> Snapshot:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "payload.bin"
        path.write_bytes(data)
        os.utime(path, (1_700_000_000, 1_700_000_000))
        return build_snapshot(path, name, block_size=block_size, now=1_700_000_000).signed(KEY)


def answered(rcv: Receiver, ann: Announce, now: float = 0.0, key: bytes | None = None) -> bytes:
    """``ann`` as the live sender sends it once it has heard ``rcv``'s SOLICIT: echoing its
    nonce, the only kind of announce a receiver joins on. Lets ``rcv`` send that SOLICIT
    (its first is due at once); what else it sends now is dropped."""
    rcv.handle_timer(now)
    nonces = tuple(
        m.nonce
        for d in rcv.datagrams_to_send(now)
        if isinstance(m := decode_untrusted(d, key), Solicit)
    )
    assert nonces, "the receiver sent no SOLICIT"
    return encode(replace(ann, echoes=nonces), key)


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


# ---------------------------------------------------------------------------------------
# Ordering processes by the events they report, never by fixed sleeps.
#
# A test that starts processes (or tasks) in an order waits for the event the next step
# needs: a JSON line on a child's stdout, a file, a multicast membership, a predicate on
# state. Every wait has a generous deadline that exists only so that a broken build fails
# instead of hanging; reaching it fails the test with what was awaited. Deadlines are never
# how a test measures speed: wall-clock bounds belong in bench/.

WAIT_S = 60.0  # the default deadline of every wait: generous, for a loaded 2-core machine


class WaitTimeout(AssertionError):
    """An awaited event did not happen before the deadline (the message says which)."""


def wait_for(
    pred: Callable[[], T | None], what: str, timeout: float = WAIT_S, interval: float = 0.02
) -> T:
    """Poll ``pred`` until it returns something truthy; return that. Fails with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise WaitTimeout(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def await_for(
    pred: Callable[[], T | None], what: str, limit: float = WAIT_S, interval: float = 0.02
) -> T:
    """:func:`wait_for` for trio tests: polls without blocking the other tasks."""
    import trio

    deadline = trio.current_time() + limit
    while True:
        got = pred()
        if got:
            return got
        if trio.current_time() > deadline:
            raise WaitTimeout(f"gave up after {limit:g} s waiting for {what}")
        await trio.sleep(interval)


@contextlib.contextmanager
def within(seconds: float, what: str) -> Iterator[None]:
    """A trio deadline for a block that must end by itself (a generous bound, not a
    measurement): fails with ``what`` instead of hanging the suite."""
    import trio

    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise WaitTimeout(f"gave up after {seconds:g} s waiting for {what}") from None


def JsonProc(argv: list[str], **kwargs: Any) -> Proc:
    """A local subprocess whose stdout JSON lines a thread collects as they arrive: the lab's
    :class:`bench.labnet.Proc` on this host, so :func:`expect_json` orders tests on loopback
    and on the lab alike."""
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True, bufsize=1, **kwargs)  # fmt: skip
    return Proc("local", argv, popen)


def expect_json(
    proc: Any, pred: Callable[[dict[str, Any]], object], what: str, timeout: float = WAIT_S
) -> dict[str, Any]:
    """Read ``proc``'s JSON lines (a :class:`JsonProc` or a lab ``Proc``) until one makes
    ``pred`` true and return it; fail with ``what`` and the process's state otherwise."""
    got = proc.wait_json(pred, timeout)
    if got is None:
        raise WaitTimeout(f"no JSON line showing {what} within {timeout:g} s: "
                          f"{proc.describe()}")  # fmt: skip
    return got[1]


def event_is(*names: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: obj.get("event") in names


def igmp_members(group: str, device: str = "lo") -> int:
    """Sockets of this network namespace that joined multicast ``group`` on ``device``
    (the kernel's own count, /proc/net/igmp): the event "the receiver is listening"."""
    want = socket.inet_aton(group)[::-1].hex().upper()  # the file prints it little-endian
    current = None
    with open("/proc/net/igmp") as fh:
        for line in fh:
            if not line.startswith("\t"):
                head = line.split()
                current = head[1] if len(head) > 1 else None
            elif current == device:
                fields = line.split()
                if fields and fields[0].upper() == want:
                    return int(fields[1])
    return 0


def wait_joined(group: str, members: int = 1, device: str = "lo", timeout: float = WAIT_S) -> None:
    """Wait until ``members`` sockets have joined ``group`` on ``device``."""
    wait_for(lambda: igmp_members(group, device) >= members,
             f"{members} member(s) of {group} on {device}", timeout)  # fmt: skip


async def await_joined(
    group: str, members: int = 1, device: str = "lo", limit: float = WAIT_S
) -> None:
    await await_for(lambda: igmp_members(group, device) >= members,
                    f"{members} member(s) of {group} on {device}", limit)  # fmt: skip
