"""The trio driver of a receiver: socket in, verified units to disk, feedback out.

Owns the loop around :class:`mcast.receiver.Receiver`: read every queued datagram (GRO split),
hand them to the core with trio's clock as ``now``, fire its timer, send what it returns,
write each ``UnitVerified`` into the :class:`mcast.partial.PartialDownload`, checkpoint once a
second, and report progress. It returns when the core completes or gives up; a completed
download is renamed into place before returning, a failed or cancelled one stays resumable.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from mcast.events import Completed, FailureKind, SessionFailed, SessionJoined, UnitVerified
from mcast.partial import PartialDownload
from mcast.receiver import Receiver, ReceiverConfig, ReceiverStats
from mcast.reports import MAX_FINAL_SPREAD
from mcast.snapshot import Snapshot
from mcast.udp import Channel, Endpoint
from mcast.wire import Announce

_CHECKPOINT_EVERY = 1.0
_PROGRESS_EVERY = 0.25
# keep running for the final statuses (at most this long: a large group spreads them)
_DONE_LINGER = MAX_FINAL_SPREAD + 0.1


@dataclass
class ReceiveProgress:
    units_verified: int
    units_total: int
    bytes_verified: int
    bytes_total: int
    joined: bool


@dataclass
class ReceiveResult:
    complete: bool
    reason: str
    units_total: int
    units_verified: int
    units_resumed: int
    bytes_total: int
    bytes_received: int  # verified bytes that came over multicast in this run
    wall_s: float
    session_id: int | None
    announce: Announce | None
    files: list[Path] = field(default_factory=list)
    stats: ReceiverStats | None = None
    timeline: dict[str, float] = field(default_factory=dict)  # time.monotonic() of milestones
    failure: FailureKind | None = None  # why the session ended early, if it did
    take_over: bool = False  # the master went silent and this receiver should master now


async def receive(
    snapshot: Snapshot,
    dest: Path,
    *,
    channel: Channel | None = None,
    key: bytes | None = None,
    config: ReceiverConfig | None = None,
    receiver_id: int | None = None,
    session_id: int | None = None,
    progress: Callable[[ReceiveProgress], None] | None = None,
    part: PartialDownload | None = None,
) -> ReceiveResult:
    """Receive ``snapshot`` into ``dest`` from a multicast session on ``channel``.

    Without ``part`` the download is opened here and, once complete, moved into place. With
    ``part`` (the caller's, shared with other attempts and the HTTP fallback) the caller
    decides when to finish it; only verified units are written to it either way.
    """
    ch = channel or Channel()
    started = time.monotonic()
    owned = part is None
    if part is None:
        part = PartialDownload.open(snapshot, dest)
    bytes_before = part.bytes_written
    rid = receiver_id if receiver_id is not None else random.getrandbits(63)
    core = Receiver(
        snapshot,
        receiver_id=rid,
        now=trio.current_time(),
        key=key,
        config=config,
        verified_units=part.verified_units(),
        load_unit=part.read_unit,
        session_id=session_id,
    )
    reason, files = "", []
    timeline = {"start": time.monotonic()}
    ended: list[SessionFailed] = []

    def on_complete() -> None:
        if owned:
            files.extend(part.finish())  # in place at once; statuses still go out after

    try:
        if not core.complete:
            endpoint = Endpoint.open(ch.group, ch.port, ch.interface, stamps=True)
            try:
                reason = await _loop(core, endpoint, part, progress, timeline, on_complete,
                                     ended.append)  # fmt: skip
            finally:
                endpoint.close()
        else:
            reason = "already complete"
            on_complete()
    finally:
        if not (core.complete and owned):
            part.checkpoint()
            if owned:
                part.close()
    return ReceiveResult(
        complete=core.complete,
        reason=reason or ("complete" if core.complete else "stopped"),
        units_total=snapshot.block_count,
        units_verified=core.verified_units,
        units_resumed=part.resumed_units,
        bytes_total=snapshot.total_size,
        bytes_received=part.bytes_written - bytes_before,
        wall_s=time.monotonic() - started,
        session_id=core.session_id,
        announce=core.announce,
        files=files,
        stats=core.stats,
        timeline=timeline,
        failure=ended[0].kind if ended else None,
        take_over=bool(ended) and ended[0].take_over,
    )


async def _loop(
    core: Receiver,
    endpoint: Endpoint,
    part: PartialDownload,
    progress: Callable[[ReceiveProgress], None] | None,
    timeline: dict[str, float],
    on_complete: Callable[[], None],
    on_failed: Callable[[SessionFailed], None],
) -> str:
    now = trio.current_time()
    next_checkpoint = now + _CHECKPOINT_EVERY
    next_progress = now
    ended_at: float | None = None
    offset: float | None = None  # time.time() - trio.current_time()
    reason = ""
    try:
        while True:
            timer = core.get_timer()
            if ended_at is not None:
                timer = min(timer if timer is not None else math.inf, ended_at + _DONE_LINGER)
            with trio.move_on_at(timer if timer is not None else math.inf):
                batch = await endpoint.receive_batch()
                now = trio.current_time()
                if endpoint.arrivals:  # each datagram's kernel receive time, on trio's clock
                    offset = _realtime_offset(offset)
                if endpoint.arrivals and offset is not None:
                    for (data, addr), at in zip(batch, endpoint.arrivals, strict=True):
                        core.receive_datagram(data, addr, now, arrived=at - offset)
                else:
                    for data, addr in batch:
                        core.receive_datagram(data, addr, now)
                core.note_socket_drops(endpoint.socket_drops)
                if len(batch) > 64:  # only a long queue is worth a look at its depth
                    core.note_backlog(endpoint.backlog())
            now = trio.current_time()
            if timer is not None and now >= timer:
                core.handle_timer(now)
            await endpoint.send_many(core.datagrams_to_send(now))
            while (event := core.next_event()) is not None:
                if isinstance(event, UnitVerified):
                    part.write_unit(event.unit, event.data)
                elif isinstance(event, Completed | SessionFailed) and ended_at is None:
                    ended_at = now
                    reason = event.reason if isinstance(event, SessionFailed) else "complete"
                    if isinstance(event, Completed):
                        on_complete()
                    else:
                        on_failed(event)
                    timeline["end"] = time.monotonic()
                elif isinstance(event, SessionJoined):
                    next_progress = now
                    timeline["joined"] = time.monotonic()
            if ended_at is not None and (
                now >= ended_at + _DONE_LINGER or core.get_timer() is None
            ):
                return reason
            if now >= next_checkpoint:
                part.checkpoint()
                next_checkpoint = now + _CHECKPOINT_EVERY
            if progress is not None and now >= next_progress:
                progress(_progress(core))
                next_progress = now + _PROGRESS_EVERY
    finally:
        if progress is not None:
            progress(_progress(core))


_CLOCK_PAIR_S = 0.0002  # two reads of trio's clock closer than this bracket time.time()


def _realtime_offset(previous: float | None) -> float | None:
    """time.time() - trio.current_time(), read so that being preempted between the reads
    cannot skew it (a skew would be an error in every delay sample, and a base delay set
    too low stays for minutes): trio's clock is read on both sides of time.time(), and a
    pair too far apart keeps the previous offset."""
    before = trio.current_time()
    real = time.time()
    after = trio.current_time()
    if after - before > _CLOCK_PAIR_S:
        return previous
    return real - (before + after) / 2


def _progress(core: Receiver) -> ReceiveProgress:
    snap = core.snapshot
    verified = core.verified_units
    approx_bytes = min(snap.total_size, verified * snap.block_size)
    return ReceiveProgress(
        verified, snap.block_count, approx_bytes, snap.total_size, core.session_id is not None
    )
