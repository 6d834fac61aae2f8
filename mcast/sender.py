"""The sans-I/O sender core: one paced multicast stream of a package, repaired by parity.

It owns the send schedule: what goes out next (an announce when due, repairs ahead of fresh
data but never all of the sends while the first pass is incomplete, END copies once it
closes), the decision to end, and its phase (sending, ending, closed), which changes only
through ``_set_phase`` and its table. It hands the rest to parts that each own one job:

- ``FirstPass`` (``mcast/first_pass.py``): one pass over every source shard in block order,
  held back by ``set_available_units`` to what the source can read (a master streaming its
  own download), and by the rendezvous hold (``hold_s``) at the start;
- ``AnnounceSchedule``, ``EndSchedule`` (``mcast/announce_schedule.py``): quick announces at
  the start and when the pass ends, then one per ``announce_interval``, one soon after a
  SOLICIT for its package; the END copies;
- ``RepairQueue`` (``mcast/repair_queue.py``): what each NAK adds (only what is not already
  queued or in flight beyond the receiver's horizon, so equivalent NAKs cost one repair),
  lowest block first; repair sequence numbers walk parity then source shards
  (``Geometry.repair_symbol``), so a late joiner that missed a whole block is served by the
  same demand-driven cycling, with no blind second pass;
- ``PeerTable`` (``mcast/peers.py``): the receivers heard, bounded, and when the last one
  that has not finished times out;
- ``Pacer`` (``mcast/pacing.py``): a token bucket whose rate an AIMD controller sets under
  the configured cap from receivers' overrun reports; random loss does not slow it;
- ``BlockEncoder`` (``mcast/encoder.py``): reading shards from the ``PackageSource`` and
  encoding parity on demand.

The session ends when the pass is done, no repair is queued, and every receiver heard from is
done or has gone silent for ``receiver_timeout``, after ``linger`` seconds without activity;
``get_timer()`` is the earliest of the parts' deadlines that matter in the phase.

Feedback is authenticated first (the session's tag key), then checked for freshness (each
receiver's counter must grow: a replayed NAK or STATUS changes nothing, see
:mod:`mcast.freshness`), then rate-limited per receiver id: a host that spoofs a receiver's
address cannot use up that receiver's share. The nonce of each SOLICIT is echoed by the next
announces, which is how receivers tell this live session from a recording of another. No
clock, socket or trio: ``now`` is passed in.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mcast.announce_schedule import AnnounceSchedule, EndSchedule
from mcast.encoder import BlockEncoder, BytesSource, PackageSource
from mcast.events import Event, SenderFinished
from mcast.first_pass import FirstPass
from mcast.freshness import Counter, Echoes, ReplayGuard
from mcast.geometry import Geometry
from mcast.ledbat import DelayController
from mcast.pacing import Pacer, SourceLimiter
from mcast.peers import MAX_PEERS, PeerTable
from mcast.repair_queue import RepairQueue
from mcast.snapshot import Snapshot
from mcast.wire import (
    MAX_HOLD_MS,
    MAX_REPORT_MS,
    MIN_REPORT_MS,
    Announce,
    BadPacket,
    End,
    Message,
    MsgType,
    Nak,
    Solicit,
    Status,
    check_key,
    decode_untrusted,
    encode,
    encode_shard,
    peek_session_untrusted,
)


@dataclass(frozen=True)
class SenderConfig:
    group: str = "239.255.77.1"
    port: int = 47000
    packet_size: int = 1432  # shard payload; 1,500-byte MTU minus IP, UDP and our 36 bytes
    units_per_block: int = 16  # 16 x 64 KiB units = 736 shards per FEC block
    parity_ratio_pct: int = 100  # parity shards available per block, % of its source shards
    rate_bps: int = 100_000_000  # the cap; 0 = no cap: find the receivers' pace (AIMD)
    start_rate_bps: int = 400_000_000  # where an uncapped session starts
    congestion_loss_permille: int = 150  # a status above this means "too fast" too
    burst_bytes: int = 256 * 1024  # a late wake-up may catch up this much (tbf bursts 256k)
    wake_bytes: int = 16 * 1500  # sleep until this much may be sent: fewer, larger wake-ups
    wire_overhead: int = 42  # Ethernet + IPv4 + UDP bytes per datagram, counted by the pacer
    announce_interval: float = 0.5
    repair_holdoff: float = 0.025  # parity sent this recently may still be on its way (the
    # receivers' NAK back-off, 20 ms, and the LAN's round trip): a NAK for it is not answered
    linger: float = 1.0
    receiver_timeout: float = 5.0
    feedback_rate: float = 200.0  # NAK/status datagrams per second per receiver
    feedback_burst: float = 100.0
    parity_cache_blocks: int = 8
    max_batch: int = 256
    hold_s: float = 0.0  # announce this long before the first data: arrivals start together
    rank: int = 0  # this master's Rank, announced for the election (mcast.discovery)
    # --yield: back off when other traffic needs the link (mcast.ledbat). Announces go out
    # every yield_probe_s (their seq is our clock: each is a one-way delay sample at every
    # receiver), receivers report their queueing delay every yield_report_ms, and the rate is
    # steered to keep the worst of them near yield_target_ms, never under yield_floor of the cap.
    yield_bandwidth: bool = False
    yield_target_ms: float = 5.0
    yield_gain: float = 0.5  # the share of the cap the rate moves per second, on target by 1x
    yield_floor: float = 0.02
    yield_probe_s: float = 0.025
    yield_report_ms: int = 50


class SenderPhase(Enum):
    SENDING = "sending"
    ENDING = "ending"  # the END copies are going out
    CLOSED = "closed"


_PHASES: dict[SenderPhase, frozenset[SenderPhase]] = {  # the phases each phase may move to
    SenderPhase.SENDING: frozenset({SenderPhase.ENDING}),
    SenderPhase.ENDING: frozenset({SenderPhase.CLOSED}),
    SenderPhase.CLOSED: frozenset(),
}


@dataclass
class SenderStats:
    data_sent: int = 0
    parity_sent: int = 0
    announces_sent: int = 0
    bytes_sent: int = 0
    naks_received: int = 0
    nak_entries: int = 0
    parity_requested: int = 0
    status_received: int = 0
    feedback_refused: int = 0
    bad_packets: int = 0
    other_session: int = 0
    replays: int = 0  # authentic feedback dropped as not newer than its receiver's last
    receivers_heard: int = 0
    rate_cuts: int = 0
    rate_bps: int = 0
    yield_backed_off_s: float = 0.0  # --yield: time spent below 90% of the cap
    yield_min_rate_bps: int = 0  # --yield: the lowest rate it yielded to
    yield_max_qdelay_us: int = 0  # --yield: the worst queueing delay a receiver reported


__all__ = ["BytesSource", "PackageSource", "Sender", "SenderConfig", "SenderPhase", "SenderStats"]

_FEEDBACK = (MsgType.NAK, MsgType.STATUS, MsgType.SOLICIT)
_REPAIRS_PER_FRESH = 3  # while the pass is incomplete, at least 1 send in 4 is fresh data
_log = logging.getLogger(__name__)


class Sender:
    def __init__(
        self,
        snapshot: Snapshot,
        source: PackageSource,
        *,
        session_id: int,
        sender_id: int,
        now: float,
        key: bytes | None = None,
        config: SenderConfig | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.config = cfg = config or SenderConfig()
        self.session_id = session_id
        self.sender_id = sender_id
        self.geometry = g = Geometry(
            snapshot.total_size, snapshot.block_size,
            cfg.packet_size, cfg.units_per_block, cfg.parity_ratio_pct,
        )  # fmt: skip
        self.stats = SenderStats()
        self.phase = SenderPhase.SENDING
        self.peers = PeerTable(self.stats, receiver_timeout=cfg.receiver_timeout)
        self._key = check_key(key)
        self._encoder = BlockEncoder(source, g, cache_blocks=cfg.parity_cache_blocks)
        self._repairs = RepairQueue(g, holdoff=cfg.repair_holdoff)
        self._yield: DelayController | None = None
        if cfg.yield_bandwidth:  # an uncapped session yields under the rate it starts at
            self._yield = DelayController(
                cfg.rate_bps or cfg.start_rate_bps, now,
                target_us=round(cfg.yield_target_ms * 1000), gain=cfg.yield_gain,
                floor_share=cfg.yield_floor, stale_s=max(1.0, 10 * cfg.yield_report_ms / 1000),
            )  # fmt: skip
        self._pacer = Pacer(
            cfg.rate_bps, cfg.start_rate_bps, cfg.burst_bytes, now, yielding=self._yield
        )
        self._sync_rate()
        self._limiter = SourceLimiter(cfg.feedback_rate, cfg.feedback_burst, MAX_PEERS)
        self._guard = ReplayGuard(MAX_PEERS)
        self._seq = Counter()
        self._echoes = Echoes()
        self._pass = FirstPass(g, hold_until=now + cfg.hold_s if cfg.hold_s > 0 else 0.0)
        self._repairs_in_row = 0
        self._pending: bytes | None = None  # built, waiting for pacing tokens
        interval = cfg.announce_interval
        self._report_ms = 0  # what the announces ask of the receivers: 0, their own interval
        if self._yield is not None:  # each announce is a delay sample for the receivers
            interval = min(interval, cfg.yield_probe_s)
            self._report_ms = max(MIN_REPORT_MS, min(MAX_REPORT_MS, cfg.yield_report_ms))
        self._announces = AnnounceSchedule(now, interval=interval)
        self._ends = EndSchedule()
        self._last_activity = now
        self._events: deque[Event] = deque()

    # -- public API ------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: object, now: float) -> None:
        try:
            kind, session = peek_session_untrusted(data)
        except BadPacket:
            self.stats.bad_packets += 1
            return
        if kind not in _FEEDBACK:
            return  # our own multicast looped back, or another sender's
        if session != self.session_id and (kind is not MsgType.SOLICIT or session != 0):
            self.stats.other_session += 1
            return
        try:
            msg = decode_untrusted(data, self._key)
        except BadPacket:
            self.stats.bad_packets += 1
            return
        assert isinstance(msg, Nak | Status | Solicit)
        if not self._guard.fresh(msg.receiver_id, msg.seq):
            self.stats.replays += 1
            return
        if not self._limiter.allow(msg.receiver_id, now):
            self.stats.feedback_refused += 1
            return
        _HANDLERS[type(msg)](self, msg, addr, now)

    def handle_timer(self, now: float) -> None:
        self._pass.end_hold(now)
        self._pacer.tick(self.stats.bytes_sent, now)
        self._sync_rate()
        if self.phase is SenderPhase.SENDING and self._idle(now):
            self.close(now, "all receivers done" if self.peers else "no receivers")
        elif self.phase is SenderPhase.ENDING and self._ends.over(now):
            self._set_phase(SenderPhase.CLOSED)
            done, lost = self.peers.tally()
            self._events.append(SenderFinished(self._ends.reason, done, lost))

    def get_timer(self) -> float | None:
        """The earliest of the next announce and the pacer's or the peer table's deadline."""
        if self.phase is SenderPhase.CLOSED:
            return None
        if self.phase is SenderPhase.ENDING:
            return self._ends.deadline
        times = [self._announces.deadline]
        if self._pass.holding:
            times.append(self._pass.hold_until)
        if self._has_work():
            size = len(self._pending) if self._pending else self.config.packet_size + 64
            size = max(size + self.config.wire_overhead, self.config.wake_bytes)
            times.append(self._pacer.ready_at(size))
        elif self.pass_done:
            times.append(self._idle_check_at())
        # else: waiting for set_available_units (the driver wakes us), and for announces
        return min(times)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        if self.phase is SenderPhase.CLOSED:
            return out
        if self.phase is SenderPhase.ENDING:
            if self._ends.due(now):
                end = End(self.session_id, self._ends.reason, self._seq.next(now))
                out.append(encode(end, self._key))
            return out
        self._pass.end_hold(now)
        if self._announces.due(now):
            out.append(self._announce_datagram(now))
            self._announces.sent(now, len(self._echoes), self._echoes.limit)
        overhead = self.config.wire_overhead
        while len(out) < self.config.max_batch:
            dgram = self._pending or self._next_datagram(now)
            if dgram is None:
                break
            if not self._pacer.try_send(len(dgram) + overhead, now):
                self._pending = dgram
                break
            self._pending = None
            self._last_activity = now
            out.append(dgram)
        self.stats.bytes_sent += sum(len(d) for d in out)
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def statistics(self) -> SenderStats:
        return self.stats

    @property
    def rate_bps(self) -> float:
        return self._pacer.rate_bps

    @property
    def yield_qdelay_us(self) -> int:
        """--yield: the worst queueing delay the rate was last steered by (0 without)."""
        return self._yield.worst_us if self._yield is not None else 0

    def set_available_units(self, units: int) -> None:
        """Only the first ``units`` hash units can be read yet: a master that streams the
        package from HTTP as it downloads sends each block once all of its units are in."""
        self._pass.set_available_units(units)

    def close(self, now: float, reason: str = "closed") -> None:
        """Stop sending: the END message goes out a few times, then SenderFinished."""
        if self.phase is not SenderPhase.SENDING:
            return
        self._set_phase(SenderPhase.ENDING)
        self._ends.start(now, reason)

    @property
    def progress(self) -> float:
        return self._pass.progress

    @property
    def pass_done(self) -> bool:
        return self._pass.done

    def active_receivers(self, now: float) -> int:
        return self.peers.active(now)

    # -- phase -------------------------------------------------------------------------------
    def _set_phase(self, phase: SenderPhase) -> None:
        """Every phase change goes through here; one the table does not allow is a bug."""
        if phase not in _PHASES[self.phase]:
            raise RuntimeError(f"sender {self.sender_id}: {self.phase.value} -> {phase.value}")
        _log.debug("sender %d: %s -> %s", self.sender_id, self.phase.value, phase.value)
        self.phase = phase

    def _sync_rate(self) -> None:
        self.stats.rate_cuts = self._pacer.cuts
        self.stats.rate_bps = int(self._pacer.rate_bps)
        if self._yield is not None:
            self.stats.yield_backed_off_s = round(self._yield.backed_off_s, 3)
            self.stats.yield_min_rate_bps = int(self._yield.min_rate)
            self.stats.yield_max_qdelay_us = self._yield.max_reported_us

    # -- feedback ----------------------------------------------------------------------------
    def _handle_nak(self, msg: Nak, addr: object, now: float) -> None:
        self.stats.naks_received += 1
        self.peers.heard(msg.receiver_id, now)
        self._last_activity = now
        first_unsent = self._pass.first_unsent
        for entry in msg.entries:
            self.stats.nak_entries += 1
            if entry.block >= first_unsent:
                continue  # not sent yet, or not a block at all
            self.stats.parity_requested += self._repairs.request(
                entry.block, entry.need, entry.horizon, now, spares=self.pass_done
            )

    def _handle_solicit(self, msg: Solicit, addr: object, now: float) -> None:
        wanted = msg.package_hash == self.snapshot.package_hash
        if not wanted or msg.session not in (0, self.session_id):
            return
        self.peers.heard(msg.receiver_id, now, solicit=True)  # waiting: do not end without it
        self._echoes.add(msg.nonce)
        self._announces.solicited(len(self._echoes), self._echoes.limit)

    def _handle_status(self, msg: Status, addr: object, now: float) -> None:
        self.stats.status_received += 1
        peer = self.peers.heard(msg.receiver_id, now)
        if peer is None:
            return
        overrun = peer.report(msg)
        if self._yield is not None:
            if peer.finished:
                self._yield.forget(msg.receiver_id)  # its link no longer matters to it
            else:
                self._yield.report(msg.receiver_id, msg.qdelay_us, now)
            self._pacer.steer(now)
            self._sync_rate()
        too_fast = msg.loss_permille > self.config.congestion_loss_permille or msg.backlog_pct > 50
        if overrun or too_fast:
            self._pacer.congested(now)
            self._sync_rate()
        if not peer.finished:
            self._last_activity = now

    # -- building datagrams --------------------------------------------------------------------
    def _has_work(self) -> bool:
        return self._pending is not None or bool(self._repairs) or self._pass.ready()

    def _next_datagram(self, now: float) -> bytes | None:
        # Repairs go first, but the first pass keeps a share: a forged NAK asking for whole
        # blocks must not be able to stop it.
        fresh = self._pass.ready()
        if self._repairs and not (fresh and self._repairs_in_row >= _REPAIRS_PER_FRESH):
            self._repairs_in_row += 1
            b, seq = self._repairs.pop(now)
            self.stats.parity_sent += 1
            payload = self._encoder.repair(b, seq)
            return encode_shard(MsgType.PARITY, self.session_id, b, seq, payload, self._key)
        if fresh:
            self._repairs_in_row = 0
            return self._next_fresh(now)
        return None

    def _next_fresh(self, now: float) -> bytes:
        b, i = self._pass.advance()
        shard = self._encoder.shard(b, i)
        dgram = encode_shard(MsgType.DATA, self.session_id, b, i, shard, self._key)
        self.stats.data_sent += 1
        if self._pass.done:  # that was the last shard of the pass
            self._encoder.pass_done()
            self._announces.pass_done(now)  # tell receivers at once that the tail is passed
        return dgram

    def _announce_datagram(self, now: float) -> bytes:
        cfg = self.config
        units = self._pass.available_units
        msg = Announce(
            session=self.session_id,
            package_hash=self.snapshot.package_hash,
            sender_id=self.sender_id,
            packet_size=cfg.packet_size,
            units_per_block=cfg.units_per_block,
            parity_ratio_pct=cfg.parity_ratio_pct,
            rate_bps=int(self._pacer.rate_bps),
            group=cfg.group,
            port=cfg.port,
            next_block=self._pass.cursor[0],
            pass_done=self.pass_done,
            receivers=len(self.peers),
            progress_pct=int(self.progress * 100),
            complete=units >= self.geometry.unit_count,
            rank=cfg.rank,
            verified_units=units,
            hold_ms=min(round(self._pass.hold_left(now) * 1000), MAX_HOLD_MS),
            seq=self._seq.next(now),
            echoes=self._echoes.take(),
            report_ms=self._report_ms,
        )
        self.stats.announces_sent += 1
        return encode(msg, self._key)

    # -- ending ------------------------------------------------------------------------------
    def _idle(self, now: float) -> bool:
        if not self.pass_done or self._has_work():
            return False  # a master still waiting for its own download is not idle
        if now - self._last_activity < self.config.linger:
            return False
        return not self.peers.any_active(now)

    def _idle_check_at(self) -> float:
        t = self._last_activity + self.config.linger
        quiet = self.peers.quiet_at()
        return t if quiet is None else max(t, quiet)


_HANDLERS: dict[type[Message], Callable[[Sender, Any, object, float], None]] = {
    Nak: Sender._handle_nak,
    Status: Sender._handle_status,
    Solicit: Sender._handle_solicit,
}
