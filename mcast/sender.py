"""The sans-I/O sender core: one paced multicast stream of a package, repaired by parity.

It owns the send schedule: announces, one pass over every source shard in block order, and
parity repairs answering NAKs (lowest block first, ahead of fresh data). A NAK says how many
shards a receiver still needs for a block and how far it has seen that block's parity; the
sender issues only the parity that is not already queued or recently sent beyond that point,
so equivalent NAKs from many receivers cost one repair. Repair sequence numbers grow without
bound and walk the block's parity, then its source shards (``Geometry.repair_symbol``), so a
late joiner that missed a whole block is served by the same mechanism: demand-driven
cycling, no blind second pass. A SOLICIT for its package is answered with an announce.

The pace is a token bucket whose rate an AIMD controller sets under the configured cap from
receivers' overrun reports (socket backlog or drops, heavy first-pass loss); random loss does
not slow it. ``set_available_units`` holds fresh data back to what the source can read (a
master streaming its own download). The session ends when the pass is done, no repair is
queued, and every receiver heard from is done or has gone silent for ``receiver_timeout``,
after ``linger`` seconds without activity. Feedback is rate-limited per source address.
No clock, socket or trio: ``now`` is passed in.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from mcast import fec
from mcast.events import Event, SenderFinished
from mcast.geometry import Geometry
from mcast.pacing import RateController, SourceLimiter, TokenBucket
from mcast.snapshot import Snapshot
from mcast.wire import (
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


class PackageSource(Protocol):
    """Where the sender reads package bytes (offsets into the concatenated content)."""

    def read(self, offset: int, length: int) -> bytes: ...


class BytesSource:
    """A package held in memory (tests and the simulator)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


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
    burst_bytes: int = 128 * 1024  # a late wake-up may catch up this much (tbf bursts 256k)
    wake_bytes: int = 16 * 1500  # sleep until this much may be sent: fewer, larger wake-ups
    wire_overhead: int = 42  # Ethernet + IPv4 + UDP bytes per datagram, counted by the pacer
    announce_interval: float = 0.5
    repair_holdoff: float = 0.05  # parity sent this recently may still be on its way
    linger: float = 1.0
    receiver_timeout: float = 5.0
    feedback_rate: float = 200.0  # NAK/status datagrams per second per source address
    feedback_burst: float = 100.0
    parity_cache_blocks: int = 8
    max_batch: int = 256


class SenderPhase(Enum):
    SENDING = "sending"
    ENDING = "ending"
    CLOSED = "closed"


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
    receivers_heard: int = 0
    rate_cuts: int = 0
    rate_bps: int = 0


@dataclass
class _Peer:
    last_heard: float
    verified_units: int = 0
    done: bool = False
    failed: bool = False
    socket_drops: int = 0
    solicit_only: bool = False  # heard only asking for an announce (see Sender._peer)


_FEEDBACK = (MsgType.NAK, MsgType.STATUS, MsgType.SOLICIT)
_MAX_PEERS = 4096  # receivers tracked at once; inactive ones are pruned to make room
_REPAIRS_PER_FRESH = 3  # while the pass is incomplete, at least 1 send in 4 is fresh data
_MIN_ANNOUNCE_GAP = 0.02
_END_COPIES = 3
_END_SPACING = 0.05
_FAST_ANNOUNCES = 3
_FAST_ANNOUNCE_SPACING = 0.01


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
        self.geometry = Geometry(
            snapshot.total_size,
            snapshot.block_size,
            cfg.packet_size,
            cfg.units_per_block,
            cfg.parity_ratio_pct,
        )
        self.stats = SenderStats()
        self.phase = SenderPhase.SENDING
        self.peers: dict[int, _Peer] = {}
        self._source = source
        self._key = check_key(key)
        nblocks = self.geometry.block_count
        self._cursor = (0, 0)  # next fresh (block, shard index)
        self._available_blocks = nblocks  # blocks the source can read (see set_available_units)
        self._repairs_in_row = 0
        self._forgotten_done = 0  # pruned receivers, for the totals in SenderFinished
        self._forgotten_lost = 0
        self.pass_done = nblocks == 0
        self._issued = [0] * nblocks  # parity sequence numbers handed out per block
        self._sent = [0] * nblocks  # of those, how many went out
        self._recent: dict[int, deque[float]] = {}
        self._repair_heap: list[int] = []
        self._in_heap: set[int] = set()
        self._parity_cache: OrderedDict[int, list[bytes]] = OrderedDict()
        self._fresh: tuple[int, list[bytes]] | None = None
        self._pending: bytes | None = None  # built, waiting for pacing tokens
        cap = cfg.rate_bps or 100_000_000_000
        self._rate = RateController(cap, now, start_rate=cfg.rate_bps or cfg.start_rate_bps)
        self._bucket = TokenBucket(self._rate.rate / 8, cfg.burst_bytes, now)
        self.stats.rate_bps = int(self._rate.rate)
        self._pacing_limited = False
        self._limiter = SourceLimiter(cfg.feedback_rate, cfg.feedback_burst)
        self._next_announce = now
        self._last_announce = float("-inf")
        self._fast_announces = _FAST_ANNOUNCES  # a receiver that misses one joins 10 ms later
        self._last_activity = now
        self._end_reason = ""
        self._ends_left = 0
        self._next_end = now
        self._events: deque[Event] = deque()
        self._handlers: dict[type, Callable[[Message, object, float], None]] = {
            Nak: self._handle_nak,  # type: ignore[dict-item]
            Status: self._handle_status,  # type: ignore[dict-item]
            Solicit: self._handle_solicit,  # type: ignore[dict-item]
        }

    # -- public API ------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: object, now: float) -> None:
        try:
            kind, session = peek_session_untrusted(data)
        except BadPacket:
            self.stats.bad_packets += 1
            return
        if kind not in _FEEDBACK:
            return  # our own multicast looped back, or another sender's
        if session != self.session_id and kind is not MsgType.SOLICIT:
            self.stats.other_session += 1
            return
        if not self._limiter.allow(addr, now):
            self.stats.feedback_refused += 1
            return
        try:
            msg = decode_untrusted(data, self._key)
        except BadPacket:
            self.stats.bad_packets += 1
            return
        self._handlers[type(msg)](msg, addr, now)

    def handle_timer(self, now: float) -> None:
        self._rate.observe(self.stats.bytes_sent * 8, now)
        if self._pacing_limited:  # grow only a rate that is in use (cwnd validation)
            self._rate.tick(now)
            self._apply_rate()
            self._pacing_limited = False
        if self.phase is SenderPhase.SENDING and self._idle(now):
            self.close(now, "all receivers done" if self.peers else "no receivers")
        elif self.phase is SenderPhase.ENDING and not self._ends_left and now >= self._next_end:
            self.phase = SenderPhase.CLOSED
            done = sum(1 for p in self.peers.values() if p.done)
            lost = len(self.peers) - done + self._forgotten_lost
            self._events.append(SenderFinished(self._end_reason, done + self._forgotten_done, lost))

    def get_timer(self) -> float | None:
        if self.phase is SenderPhase.CLOSED:
            return None
        if self.phase is SenderPhase.ENDING:
            return self._next_end
        times = [self._next_announce]
        if self._has_work():
            size = len(self._pending) if self._pending else self.config.packet_size + 64
            size = max(size + self.config.wire_overhead, self.config.wake_bytes)
            times.append(self._bucket.ready_at(size))
        elif self.pass_done:
            times.append(self._idle_check_at())
        # else: waiting for set_available_units (the driver wakes us), and for announces
        return min(times)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        if self.phase is SenderPhase.CLOSED:
            return out
        if self.phase is SenderPhase.ENDING:
            self._emit_end(now, out)
            return out
        if now >= self._next_announce:
            out.append(self._announce_datagram())
            self._last_announce = now
            self._schedule_announce(now)
        overhead = self.config.wire_overhead
        while len(out) < self.config.max_batch:
            dgram = self._pending or self._next_datagram(now)
            if dgram is None:
                break
            if not self._bucket.try_take(len(dgram) + overhead, now):
                self._pending = dgram
                self._pacing_limited = True
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
        return self._rate.rate

    def _apply_rate(self) -> None:
        self._bucket.rate = self._rate.rate / 8
        self.stats.rate_cuts = self._rate.cuts
        self.stats.rate_bps = int(self._rate.rate)

    def set_available_units(self, units: int) -> None:
        """Only the first ``units`` hash units can be read yet: a master that streams the
        package from HTTP as it downloads sends each block once all of its units are in."""
        g = self.geometry
        whole = units if units >= g.unit_count else units // g.units_per_block
        self._available_blocks = min(g.block_count, whole)

    def close(self, now: float, reason: str = "closed") -> None:
        """Stop sending: the END message goes out a few times, then SenderFinished."""
        if self.phase is not SenderPhase.SENDING:
            return
        self.phase = SenderPhase.ENDING
        self._end_reason = reason
        self._ends_left = _END_COPIES
        self._next_end = now

    @property
    def progress(self) -> float:
        if self.pass_done:
            return 1.0
        total = self.geometry.shard_count or 1
        b, i = self._cursor
        return (sum(self.geometry.k(x) for x in range(b)) + i) / total

    def active_receivers(self, now: float) -> int:
        return sum(1 for p in self.peers.values() if self._is_active(p, now))

    # -- feedback ----------------------------------------------------------------------------
    def _peer(self, receiver_id: int, now: float, *, solicit: bool = False) -> _Peer | None:
        """The receiver's entry; None when the table is full of active receivers.

        A receiver known only from SOLICITs gets one grace period from its first: a replayed
        SOLICIT (authentic for every session of the package) cannot keep a sender alive."""
        peer = self.peers.get(receiver_id)
        if peer is None:
            if len(self.peers) >= _MAX_PEERS:
                self._prune(now)
                if len(self.peers) >= _MAX_PEERS:
                    self.stats.feedback_refused += 1
                    return None
            peer = self.peers[receiver_id] = _Peer(now, solicit_only=solicit)
            self.stats.receivers_heard += 1
        elif not solicit:
            peer.solicit_only = False
            peer.last_heard = now
        elif not peer.solicit_only:
            peer.last_heard = now
        return peer

    def _prune(self, now: float) -> None:
        for rid in [r for r, p in self.peers.items() if not self._is_active(p, now)]:
            peer = self.peers.pop(rid)
            self._forgotten_done += peer.done
            self._forgotten_lost += not peer.done

    def _handle_nak(self, msg: Nak, addr: object, now: float) -> None:
        self.stats.naks_received += 1
        self._peer(msg.receiver_id, now)
        self._last_activity = now
        g = self.geometry
        first_unsent = g.block_count if self.pass_done else self._cursor[0]
        holdoff = now - self.config.repair_holdoff
        for entry in msg.entries:
            b = entry.block
            self.stats.nak_entries += 1
            if b >= first_unsent:
                continue  # not sent yet, or not a block at all
            need = min(entry.need, g.k(b))
            horizon = min(entry.horizon, self._issued[b])
            recent = self._recent.get(b)
            if recent:
                while recent and recent[0] < holdoff:
                    recent.popleft()
            in_flight = self._issued[b] - self._sent[b] + (len(recent) if recent else 0)
            extra = need - min(self._issued[b] - horizon, in_flight)
            if extra > 0 and self.pass_done:  # after the pass a lost repair costs a retry round
                extra = min(g.k(b), extra + 1 + extra // 10)
            if extra > 0:
                self._issued[b] += extra
                self.stats.parity_requested += extra
                if b not in self._in_heap:
                    self._in_heap.add(b)
                    heapq.heappush(self._repair_heap, b)

    def _handle_solicit(self, msg: Solicit, addr: object, now: float) -> None:
        wanted = msg.package_hash == self.snapshot.package_hash
        if not wanted or msg.session not in (0, self.session_id):
            return
        self._peer(msg.receiver_id, now, solicit=True)  # waiting for us: do not end without it
        self._next_announce = min(self._next_announce, self._last_announce + _MIN_ANNOUNCE_GAP)

    def _handle_status(self, msg: Status, addr: object, now: float) -> None:
        self.stats.status_received += 1
        peer = self._peer(msg.receiver_id, now)
        if peer is None:
            return
        peer.verified_units = max(peer.verified_units, msg.verified_units)
        peer.done = peer.done or msg.done
        peer.failed = msg.failed
        overrun = msg.socket_drops > peer.socket_drops
        peer.socket_drops = max(peer.socket_drops, msg.socket_drops)
        too_fast = msg.loss_permille > self.config.congestion_loss_permille or msg.backlog_pct > 50
        if overrun or too_fast:
            self._rate.congested(now)
            self._apply_rate()
        if not (peer.done or peer.failed):
            self._last_activity = now

    # -- building datagrams --------------------------------------------------------------------
    def _fresh_ready(self) -> bool:
        return not self.pass_done and self._cursor[0] < self._available_blocks

    def _has_work(self) -> bool:
        return self._pending is not None or bool(self._repair_heap) or self._fresh_ready()

    def _next_datagram(self, now: float) -> bytes | None:
        # Repairs go first, but the first pass keeps a share: a forged NAK asking for whole
        # blocks must not be able to stop it.
        fresh = self._fresh_ready()
        if self._repair_heap and not (fresh and self._repairs_in_row >= _REPAIRS_PER_FRESH):
            self._repairs_in_row += 1
            return self._next_repair(now)
        if fresh:
            self._repairs_in_row = 0
            return self._next_fresh(now)
        return None

    def _next_repair(self, now: float) -> bytes:
        b = self._repair_heap[0]
        seq = self._sent[b]
        self._sent[b] += 1
        if self._sent[b] >= self._issued[b]:
            heapq.heappop(self._repair_heap)
            self._in_heap.discard(b)
        self._recent.setdefault(b, deque()).append(now)
        self.stats.parity_sent += 1
        parity = self._parity(b)
        kind, index = self.geometry.repair_symbol(b, seq)
        if kind == "parity":
            payload = parity[index]
        else:  # the parity ran out for this block: cycle through the source shards
            payload = fec.pad(self._source_shards(b)[index], self.geometry.packet_size)
        return encode_shard(MsgType.PARITY, self.session_id, b, seq, payload, self._key)

    def _next_fresh(self, now: float) -> bytes:
        b, i = self._cursor
        if self._fresh is None or self._fresh[0] != b:
            self._fresh = (b, self._source_shards(b))
        dgram = encode_shard(MsgType.DATA, self.session_id, b, i, self._fresh[1][i], self._key)
        self.stats.data_sent += 1
        if i + 1 < self.geometry.k(b):
            self._cursor = (b, i + 1)
        else:
            self._cursor = (b + 1, 0)
            if b + 1 == self.geometry.block_count:
                self.pass_done = True
                self._fresh = None
                self._next_announce = now  # tell receivers at once that the tail is passed
                self._fast_announces = _FAST_ANNOUNCES
        return dgram

    def _source_shards(self, b: int) -> list[bytes]:
        g = self.geometry
        units = g.block_units(b)
        start = units.start * g.unit_size
        data = self._source.read(start, sum(g.unit_len(u) for u in units))
        shards = []
        for i in range(g.k(b)):
            offset, length = g.shard_span(b, i)
            shards.append(data[offset - start : offset - start + length])
        return shards

    def _parity(self, b: int) -> list[bytes]:
        cached = self._parity_cache.get(b)
        if cached is not None:
            self._parity_cache.move_to_end(b)
            return cached
        size = self.geometry.packet_size
        source = [fec.pad(s, size) for s in self._source_shards(b)]
        parity = fec.encode(source, self.geometry.parity_count(b))
        self._parity_cache[b] = parity
        if len(self._parity_cache) > self.config.parity_cache_blocks:
            self._parity_cache.popitem(last=False)
        return parity

    def _announce_datagram(self) -> bytes:
        cfg = self.config
        msg = Announce(
            session=self.session_id,
            package_hash=self.snapshot.package_hash,
            sender_id=self.sender_id,
            packet_size=cfg.packet_size,
            units_per_block=cfg.units_per_block,
            parity_ratio_pct=cfg.parity_ratio_pct,
            rate_bps=int(self._rate.rate),
            group=cfg.group,
            port=cfg.port,
            next_block=self._cursor[0],
            pass_done=self.pass_done,
            receivers=len(self.peers),
            progress_pct=int(self.progress * 100),
        )
        self.stats.announces_sent += 1
        return encode(msg, self._key)

    def _schedule_announce(self, now: float) -> None:
        if self._fast_announces:
            self._fast_announces -= 1
            self._next_announce = now + _FAST_ANNOUNCE_SPACING
        else:
            self._next_announce = now + self.config.announce_interval

    def _emit_end(self, now: float, out: list[bytes]) -> None:
        if self._ends_left and now >= self._next_end:
            out.append(encode(End(self.session_id, self._end_reason), self._key))
            self._ends_left -= 1
            self._next_end = now + _END_SPACING

    # -- ending ------------------------------------------------------------------------------
    def _is_active(self, peer: _Peer, now: float) -> bool:
        return (
            not (peer.done or peer.failed) and now - peer.last_heard < self.config.receiver_timeout
        )

    def _idle(self, now: float) -> bool:
        if not self.pass_done or self._has_work():
            return False  # a master still waiting for its own download is not idle
        if now - self._last_activity < self.config.linger:
            return False
        return not any(self._is_active(p, now) for p in self.peers.values())

    def _idle_check_at(self) -> float:
        t = self._last_activity + self.config.linger
        waiting = [
            p.last_heard + self.config.receiver_timeout
            for p in self.peers.values()
            if not (p.done or p.failed)
        ]
        return max([t, *waiting]) if waiting else t
