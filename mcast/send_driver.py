"""The trio driver of a sender: package bytes out at the configured rate, feedback in.

Owns the loop around :class:`mcast.sender.Sender`: a feedback task reads every datagram on the
group (its own looped-back data is dropped by the core after a header peek) and wakes the send
loop; the send loop fires the core's timer, sends what the pacer allows as GSO batches, and
sleeps until the core's next timer or new feedback. It returns when the core has sent its END,
or raises :class:`mcast.source.SourceMismatch` if the files on disk change under it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from mcast.events import SenderFinished
from mcast.sender import PackageSource, Sender, SenderConfig, SenderStats
from mcast.snapshot import Snapshot
from mcast.source import FileSource, SourceMismatch
from mcast.udp import Channel, Endpoint, is_loopback
from mcast.wire import BadPacket, MsgType, reseal, reseal_untrusted

_PROGRESS_EVERY = 0.5
_AVAILABLE_POLL = 0.02  # how often a streaming master looks for newly downloaded units
_BEACON_TYPES = (int(MsgType.ANNOUNCE), int(MsgType.END))
# A yielding session announces every 25 ms on its data group (each announce is a delay
# sample); the discovery group, which every agent of the subnet hears, still gets about one
# per BEACON_EVERY, and the next ECHO_BEACONS after a SOLICIT heard there (they echo it).
BEACON_EVERY = 0.45
ECHO_BEACONS = 2


@dataclass
class SendProgress:
    session_id: int
    progress: float  # first pass, 0..1
    pass_done: bool
    receivers_active: int
    receivers_heard: int
    bytes_sent: int
    repairs_sent: int
    rate_bps: float = 0.0  # the pace now
    qdelay_us: int = 0  # --yield: the worst queueing delay the rate is steered by


@dataclass
class SendResult:
    session_id: int
    reason: str
    receivers_done: int
    receivers_lost: int
    bytes_sent: int
    wall_s: float
    stats: SenderStats
    timeline: dict[str, float] = field(default_factory=dict)  # time.monotonic() of milestones


async def send(
    snapshot: Snapshot,
    source: Path | PackageSource,
    *,
    channel: Channel | None = None,
    key: bytes | None = None,
    config: SenderConfig | None = None,
    session_id: int | None = None,
    progress: Callable[[SendProgress], None] | None = None,
    discovery: Channel | None = None,
    discovery_key: bytes | None = None,
    available: Callable[[], int] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> SendResult:
    """Serve ``snapshot`` on ``channel`` until every receiver heard is done or gone.

    With ``discovery``, announces and END also go to the subnet's discovery group, and
    solicits heard there are answered; there they carry ``discovery_key`` (the site's, so
    every agent can count every session; the session key when None). With ``available``,
    only the units it says are readable are sent (a master streaming its own download).
    ``task_status.started`` reports the session id once the sockets are open.
    """
    ch = channel or Channel()
    cfg = config or SenderConfig(group=ch.group, port=ch.port)
    own_source = isinstance(source, Path)
    src: PackageSource = FileSource(snapshot, source) if isinstance(source, Path) else source
    sid = session_id if session_id is not None else random.getrandbits(63) | 1
    started = time.monotonic()
    timeline = {"start": started}
    try:
        # On a real interface the sender needs none of its own traffic back; on loopback the
        # receivers are on this host and must get it.
        loop = is_loopback(ch.interface)
        endpoint = Endpoint.open(ch.group, ch.port, ch.interface, loop=loop)
        beacon = None
        try:
            if discovery is not None:
                beacon = _Beacon(
                    Endpoint.open(discovery.group, discovery.port, ch.interface, loop=True),
                    key if discovery_key is None else discovery_key, key,
                    thin=cfg.yield_bandwidth,
                )  # fmt: skip
            core = Sender(
                snapshot, src, session_id=sid, sender_id=random.getrandbits(63),
                now=trio.current_time(), key=key, config=cfg,
            )  # fmt: skip
            task_status.started(sid)
            finished = await _run(core, endpoint, beacon, available, progress, timeline)
        finally:
            endpoint.close()
            if beacon is not None:
                beacon.endpoint.close()
    finally:
        if own_source:
            src.close()  # type: ignore[attr-defined]
    return SendResult(
        session_id=sid,
        reason=finished.reason,
        receivers_done=finished.receivers_done,
        receivers_lost=finished.receivers_lost,
        bytes_sent=core.stats.bytes_sent,
        wall_s=time.monotonic() - started,
        stats=core.stats,
        timeline=timeline,
    )


@dataclass
class _Beacon:
    """The subnet's discovery group: the session's announces and END go there under the
    discovery key, and SOLICITs come from there."""

    endpoint: Endpoint
    key: bytes | None  # the discovery group's
    session_key: bytes | None
    thin: bool = False  # announces come often (--yield): pass on only some of them
    _last: float = field(default=-math.inf, init=False)
    _echo_left: int = field(default=0, init=False)

    def outgoing(self, out: list[bytes], now: float) -> list[bytes]:
        beacons = [d for d in out if d[3] in _BEACON_TYPES and self._passes(d, now)]
        return beacons if self.key == self.session_key else [reseal(d, self.key) for d in beacons]

    def _passes(self, datagram: bytes, now: float) -> bool:
        if not self.thin or datagram[3] != MsgType.ANNOUNCE:
            return True
        if self._echo_left:
            self._echo_left -= 1
        elif now - self._last < BEACON_EVERY:
            return False
        self._last = now
        return True

    def incoming(self, data: bytes) -> bytes | None:
        """A datagram heard there, as the core (which knows only the session key) reads it."""
        if len(data) > 3 and data[3] == MsgType.SOLICIT:
            self._echo_left = ECHO_BEACONS  # the announces that answer it go out here too
        if self.key == self.session_key:
            return data
        try:
            return reseal_untrusted(data, self.key, self.session_key)
        except BadPacket:
            return None


class _Wakeup:
    """Set by the feedback task, awaited (with a deadline) by the send loop."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait_until(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await self._event.wait()
        self._event = trio.Event()


async def _run(
    core: Sender,
    endpoint: Endpoint,
    beacon: _Beacon | None,
    available: Callable[[], int] | None,
    progress: Callable[[SendProgress], None] | None,
    timeline: dict[str, float],
) -> SenderFinished:
    wakeup = _Wakeup()

    async def feedback(ep: Endpoint, translate: Callable[[bytes], bytes | None]) -> None:
        while True:
            batch = await ep.receive_batch()
            now = trio.current_time()
            for data, addr in batch:
                if (mine := translate(data)) is not None:
                    core.receive_datagram(mine, addr, now)
            wakeup.set()

    failure: SourceMismatch | None = None
    finished: SenderFinished | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feedback, endpoint, lambda d: d)
            if beacon is not None:
                nursery.start_soon(feedback, beacon.endpoint, beacon.incoming)
            try:
                finished = await _send_loop(
                    core, endpoint, beacon, available, wakeup, progress, timeline
                )
            except SourceMismatch as exc:  # raised as itself, not inside an exception group
                failure = exc
            nursery.cancel_scope.cancel()
    finally:
        if progress is not None:
            progress(_progress(core, trio.current_time()))
    if failure is not None:
        raise failure
    assert finished is not None
    return finished


async def _send_loop(
    core: Sender,
    endpoint: Endpoint,
    beacon: _Beacon | None,
    available: Callable[[], int] | None,
    wakeup: _Wakeup,
    progress: Callable[[SendProgress], None] | None,
    timeline: dict[str, float],
) -> SenderFinished:
    next_progress = trio.current_time()
    while True:
        now = trio.current_time()
        if available is not None and not core.pass_done:
            core.set_available_units(available())
        timer = core.get_timer()
        if timer is not None and now >= timer:
            core.handle_timer(now)
        out = core.datagrams_to_send(now)
        if out:
            timeline.setdefault("first_send", time.monotonic())
            await endpoint.send_many(out)
            if beacon is not None:  # the session's announces and END, for the whole subnet
                await beacon.endpoint.send_many(beacon.outgoing(out, now))
            if core.pass_done:
                timeline.setdefault("pass_done", time.monotonic())
        while (event := core.next_event()) is not None:
            if isinstance(event, SenderFinished):
                return event
        if progress is not None and now >= next_progress:
            progress(_progress(core, now))
            next_progress = now + _PROGRESS_EVERY
        timer = core.get_timer()
        if out and timer is not None and timer <= trio.current_time():
            continue  # more is ready now
        deadline = timer if timer is not None else math.inf
        if available is not None and not core.pass_done:
            deadline = min(deadline, trio.current_time() + _AVAILABLE_POLL)
        await wakeup.wait_until(deadline)


def _progress(core: Sender, now: float) -> SendProgress:
    return SendProgress(
        session_id=core.session_id,
        progress=core.progress,
        pass_done=core.pass_done,
        receivers_active=core.active_receivers(now),
        receivers_heard=len(core.peers),
        bytes_sent=core.stats.bytes_sent,
        repairs_sent=core.stats.parity_sent,
        rate_bps=core.rate_bps,
        qdelay_us=core.yield_qdelay_us,
    )
