"""The sans-I/O receiver core: from datagrams to verified hash units.

It owns the per-block reception state, the NAK schedule (random back-off, suppression on
hearing an equivalent NAK, re-NAK when a block makes no progress), Reed-Solomon decoding,
verification of every unit against the signed snapshot, status reports (with the overrun
signals the sender's rate control reads: first-pass loss, socket backlog and drops, judged
over short windows), soliciting an announce while no session is heard, and the decision that
the package is complete, which rests on its own map of verified units alone.

No clock, no socket, no trio: the driver passes ``now`` into ``receive_datagram`` and
``handle_timer``, sends what ``datagrams_to_send`` returns, re-arms ``get_timer()`` and
handles ``next_event()`` (``UnitVerified`` carries the bytes to write).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from mcast import fec
from mcast.events import Completed, Event, SessionFailed, SessionJoined, UnitVerified
from mcast.geometry import Geometry
from mcast.snapshot import Snapshot
from mcast.wire import (
    Announce,
    BadPacket,
    Data,
    End,
    Message,
    MsgType,
    Nak,
    NakEntry,
    Parity,
    Solicit,
    Status,
    check_key,
    decode_shard_untrusted,
    decode_untrusted,
    encode,
)

_MAX_HORIZON = 2**32 - 1
_EARLY_BYTES = 4 * 1024 * 1024  # datagrams kept from before the join, at most
_PARITY_AHEAD = 1  # parity is kept up to the block the sender is known to be sending


def _progress_of(a: Announce) -> tuple[int, int, bool, int]:
    return a.next_block, a.progress_pct, a.pass_done, a.receivers


@dataclass(frozen=True)
class ReceiverConfig:
    nak_backoff: float = 0.02  # a NAK waits a random time up to this, listening for others
    nak_retry: float = 0.08  # a NAKed block that makes no progress for this long is NAKed again
    # (longer than the sender's repair_holdoff, or the re-NAK is taken for one in flight)
    status_interval: float = 1.0
    congestion_window: float = 0.1  # loss and socket drops are judged over windows this long
    congestion_loss_permille: int = 150  # more first-pass loss than this is reported at once
    congestion_backlog: float = 0.5  # a socket queue fuller than this is reported at once
    silence_timeout: float = 5.0  # no valid datagram from the session this long: failed
    end_grace: float = 0.5  # after an END, this long without session traffic: failed
    max_verify_failures: int = 64
    max_nak_entries: int = 128  # per NAK datagram
    done_status_repeats: int = 3  # the final status goes out this many times, spaced by:
    done_status_spacing: float = 0.02
    solicit_interval: float = 0.25  # while no session is heard, ask for an announce this often
    early_buffer: int = 1024  # datagrams kept from before the first announce, replayed on join


class Phase(Enum):
    WAITING = "waiting"  # no announce of a session for our snapshot heard yet
    RECEIVING = "receiving"
    COMPLETE = "complete"
    FAILED = "failed"


class NakState(Enum):
    IDLE = 0  # not yet passed by the sender, or complete
    BACKOFF = 1  # a NAK is due at ``due`` unless an equivalent one is heard first
    WAIT = 2  # NAKed (or suppressed): re-NAK at ``due`` unless the block progresses


@dataclass
class ReceiverStats:
    datagrams: int = 0
    bad_packets: int = 0
    other_session: int = 0
    data_shards: int = 0
    parity_shards: int = 0
    duplicates: int = 0
    wrong_length: int = 0
    decodes: int = 0
    decode_failures: int = 0
    units_verified: int = 0
    verify_failures: int = 0
    naks_sent: int = 0
    nak_entries_sent: int = 0
    naks_suppressed: int = 0
    status_sent: int = 0


@dataclass
class _Block:
    k: int
    parity_count: int
    shards: dict[int, bytes] = field(default_factory=dict)  # source shards held, unpadded
    held: dict[int, int] = field(default_factory=dict)  # unit -> source shards held of it
    parity: dict[int, bytes] = field(default_factory=dict)  # recovery index -> shard
    on_disk: int = 0  # source shards held only as verified units on disk (after a resume)
    horizon: int = 0
    state: NakState = NakState.IDLE
    due: float = 0.0

    @property
    def need(self) -> int:
        return max(0, self.k - len(self.shards) - self.on_disk - len(self.parity))


class Receiver:
    def __init__(
        self,
        snapshot: Snapshot,
        *,
        receiver_id: int,
        now: float,
        rng: random.Random | None = None,
        key: bytes | None = None,
        config: ReceiverConfig | None = None,
        verified_units: Iterable[int] = (),
        load_unit: Callable[[int], bytes] | None = None,
        session_id: int | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.receiver_id = receiver_id
        self.config = config or ReceiverConfig()
        self.stats = ReceiverStats()
        self.phase = Phase.WAITING
        self.session_id = session_id
        self.announce: Announce | None = None
        self.geometry: Geometry | None = None
        self._rng = rng or random.Random()
        self._key = check_key(key)
        self._load_unit = load_unit
        self._verified = bytearray(snapshot.block_count)
        for unit in verified_units:
            self._verified[unit] = 1
        self._verified_count = sum(self._verified)
        if self._verified_count and self._verified_count < snapshot.block_count and not load_unit:
            raise ValueError("resuming from verified units needs load_unit to read them back")
        self._blocks: dict[int, _Block] = {}
        self._block_done: bytearray = bytearray()
        self._timers: list[tuple[float, int]] = []  # (due, block), stale entries skipped
        self._frontier = 0  # blocks below this have been passed by the sender
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []
        self._nak_queue: list[NakEntry] = []
        self._early: deque[bytes] = deque(maxlen=self.config.early_buffer)
        self._early_bytes = 0
        self._last_heard = now
        self._end_heard: float | None = None
        self._next_status = now
        self._next_solicit = now
        self._done_repeats = 0
        self._high = -1  # furthest first-pass shard position seen
        self._window_high = -1
        self._window_received = 0
        self._window_ends = now
        self._socket_drops = 0
        self._reported_drops = 0
        self._loss_permille = 0
        self._backlog = 0.0  # the fullest the socket queue was in this window
        self._backlog_pct = 0
        self._handlers: dict[type, Callable[[Message, float], None]] = {
            Announce: self._handle_announce,  # type: ignore[dict-item]
            Data: self._handle_data,  # type: ignore[dict-item]
            Parity: self._handle_parity,  # type: ignore[dict-item]
            Nak: self._handle_nak,  # type: ignore[dict-item]
            End: self._handle_end,  # type: ignore[dict-item]
            Status: self._handle_status,  # type: ignore[dict-item]
            Solicit: self._handle_status,  # type: ignore[dict-item]
        }
        if self._verified_count == snapshot.block_count:
            self._finish(now)

    # -- public API ------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.phase is Phase.COMPLETE

    @property
    def verified_units(self) -> int:
        return self._verified_count

    def receive_datagram(self, data: bytes, addr: object, now: float) -> None:
        self.stats.datagrams += 1
        if self.phase is not Phase.RECEIVING:
            if self.phase is Phase.WAITING:
                self._receive_message(data, now)
            return
        try:
            shard = decode_shard_untrusted(data, self._key)
        except BadPacket:
            self.stats.bad_packets += 1
            return
        if shard is None:
            self._receive_message(data, now)
        elif shard[1] != self.session_id:
            self.stats.other_session += 1
        elif shard[0] == MsgType.DATA:
            self._handle_data(Data(*shard[1:]), now)
        else:
            self._handle_parity(Parity(*shard[1:]), now)

    def _receive_message(self, data: bytes, now: float) -> None:
        try:
            msg = decode_untrusted(data, self._key)
        except BadPacket:
            self.stats.bad_packets += 1
            return
        if self.session_id is not None and msg.session != self.session_id:
            self.stats.other_session += 1
            return
        if self.phase is Phase.WAITING and not isinstance(msg, Announce):
            self._keep_early(data)  # shards need the session's geometry: keep for later
            return
        self._handlers[type(msg)](msg, now)

    def handle_timer(self, now: float) -> None:
        if self.phase in (Phase.COMPLETE, Phase.FAILED):
            self._send_done_status(now)
            return
        if now >= self._silence_deadline():
            if self._end_heard is not None:
                self._fail("sender ended the session")
            elif self.phase is Phase.WAITING:
                self._fail(f"no session announced for {self.config.silence_timeout:g}s")
            else:
                self._fail(f"sender silent for {self.config.silence_timeout:g}s")
            return
        while self._timers and self._timers[0][0] <= now:
            due, b = heapq.heappop(self._timers)
            blk = self._blocks.get(b)
            if blk is None or blk.state is NakState.IDLE or blk.due != due:
                continue
            if blk.state is NakState.BACKOFF:
                if blk.need:
                    self._nak_queue.append(NakEntry(b, blk.need, blk.horizon))
                self._arm(b, blk, NakState.WAIT, now + self.config.nak_retry)
            else:  # WAIT ran out with no progress: NAK again, after a fresh back-off
                self._arm(b, blk, NakState.BACKOFF, now + self._backoff())
        self._flush_naks()
        if self.phase is Phase.WAITING and now >= self._next_solicit:
            msg = Solicit(self.session_id or 0, self.snapshot.package_hash, self.receiver_id)
            self._out.append(encode(msg, self._key))
            self._next_solicit = now + self.config.solicit_interval * self._rng.uniform(0.5, 1.5)
        if self.phase is Phase.RECEIVING:
            congested = False
            if now >= self._window_ends:
                congested = self._close_window()
                self._window_ends = now + self.config.congestion_window
            if congested or now >= self._next_status:
                self._queue_status(done=False)
                self._next_status = now + self.config.status_interval

    def get_timer(self) -> float | None:
        if self.phase in (Phase.COMPLETE, Phase.FAILED):
            return self._next_status if self._done_repeats else None
        while self._timers:
            due, b = self._timers[0]
            blk = self._blocks.get(b)
            if blk is not None and blk.state is not NakState.IDLE and blk.due == due:
                break
            heapq.heappop(self._timers)
        candidates = [self._silence_deadline()]
        if self._timers:
            candidates.append(self._timers[0][0])
        if self.phase is Phase.RECEIVING:
            candidates.append(self._next_status)
            candidates.append(self._window_ends)
        elif self.phase is Phase.WAITING:
            candidates.append(self._next_solicit)
        return min(candidates)

    def note_backlog(self, fraction: float) -> None:
        """The driver saw its socket queue this full (0..1)."""
        self._backlog = max(self._backlog, fraction)

    def note_socket_drops(self, total: int) -> None:
        """The driver's count of datagrams its socket dropped (SO_RXQ_OVFL), cumulative."""
        self._socket_drops = max(self._socket_drops, total)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def statistics(self) -> ReceiverStats:
        return self.stats

    def missing_units(self) -> list[int]:
        return [u for u, ok in enumerate(self._verified) if not ok]

    # -- handlers ----------------------------------------------------------------------------
    def _keep_early(self, data: bytes) -> None:
        """Bounded by count and by bytes: before a join nothing is authenticated by geometry."""
        if len(self._early) == self._early.maxlen:
            self._early_bytes -= len(self._early[0])
        self._early.append(data)
        self._early_bytes += len(data)
        while self._early_bytes > _EARLY_BYTES:
            self._early_bytes -= len(self._early.popleft())

    def _handle_announce(self, msg: Announce, now: float) -> None:
        if msg.package_hash != self.snapshot.package_hash:
            self.stats.other_session += 1
            return
        if self.phase is Phase.WAITING:
            try:
                geometry = Geometry(
                    self.snapshot.total_size,
                    self.snapshot.block_size,
                    msg.packet_size,
                    msg.units_per_block,
                    msg.parity_ratio_pct,
                )
            except ValueError:
                self.stats.bad_packets += 1
                return
            self._join(msg, geometry, now)
            self._last_heard = now
        elif msg.session != self.session_id:
            return
        else:
            g = self.geometry
            assert g is not None and self.announce is not None
            if (msg.packet_size, msg.units_per_block, msg.parity_ratio_pct) != (
                g.packet_size, g.units_per_block, g.parity_ratio_pct
            ):
                self.stats.bad_packets += 1  # not the session we joined: no say in it
                return
            if _progress_of(msg) != _progress_of(self.announce):
                self._last_heard = now  # a replayed announce shows no progress: not liveness
        self.announce = msg
        assert self.geometry is not None
        frontier = self.geometry.block_count if msg.pass_done else msg.next_block
        self._advance_frontier(min(frontier, self.geometry.block_count), now)
        early, self._early_bytes = list(self._early), 0
        self._early.clear()
        for data in early:
            self.receive_datagram(data, None, now)

    def _join(self, msg: Announce, geometry: Geometry, now: float) -> None:
        """Adopt the session. Only shards that fit its geometry and announces that show
        progress keep it alive afterwards (see _handle_data, _handle_parity, _last_heard), so
        a forged first announce or a replayed one ends in a silence timeout, not a hang."""
        self.session_id = msg.session
        self.geometry = geometry
        self.phase = Phase.RECEIVING
        self._block_done = bytearray(geometry.block_count)
        for b in range(geometry.block_count):
            units = geometry.block_units(b)
            held = sum(self._verified[u] for u in units)
            if held == len(units):
                self._block_done[b] = 1
            elif held:
                blk = self._block(b)
                blk.on_disk = sum(geometry.unit_shards(u) for u in units if self._verified[u])
        self._events.append(SessionJoined(msg))
        self._queue_status(done=False)
        self._next_status = now + self.config.status_interval

    def _handle_data(self, msg: Data, now: float) -> None:
        g = self.geometry
        assert g is not None
        if msg.block >= g.block_count or msg.index >= g.k(msg.block):
            self.stats.bad_packets += 1
            return
        if len(msg.payload) != g.shard_span(msg.block, msg.index)[1]:
            self.stats.wrong_length += 1
            return
        self._last_heard = now
        if msg.block + 1 > self._frontier:
            self._advance_frontier(msg.block, now)  # the sender has moved past earlier blocks
        self.stats.data_shards += 1
        pos = g.first_shard(msg.block) + msg.index
        if self._window_high < 0:
            self._window_high = pos - 1  # a late joiner lost nothing before it joined
        self._window_received += 1
        self._high = max(self._high, pos)
        if self._block_done[msg.block]:
            self.stats.duplicates += 1
            return
        self._accept_source(msg.block, self._block(msg.block), msg.index, msg.payload, now)

    def _accept_source(self, b: int, blk: _Block, index: int, payload: bytes, now: float) -> None:
        g = self.geometry
        assert g is not None
        unit = g.shard_unit(b, index)
        if index in blk.shards or self._verified[unit]:
            self.stats.duplicates += 1
            return
        blk.shards[index] = payload
        held = blk.held[unit] = blk.held.get(unit, 0) + 1
        self._progress(b, blk, now)
        if held == g.unit_shards(unit):
            self._verify_unit(b, blk, unit)
        self._after_arrival(b, blk, now)

    def _handle_parity(self, msg: Parity, now: float) -> None:
        g = self.geometry
        assert g is not None
        if msg.block >= g.block_count:
            self.stats.bad_packets += 1
            return
        if len(msg.payload) != g.packet_size:
            self.stats.wrong_length += 1
            return
        if msg.block >= self._frontier + _PARITY_AHEAD:
            self.stats.bad_packets += 1  # repairs never precede the pass: nothing to hold
            return
        self._last_heard = now
        self.stats.parity_shards += 1
        if self._block_done[msg.block]:
            self.stats.duplicates += 1
            return
        blk = self._block(msg.block)
        # capped to what a NAK can carry: a forged seq of 2**32-1 must not make our NAKs
        # unencodable for the sender (which clamps a horizon to what it has issued anyway)
        blk.horizon = max(blk.horizon, min(msg.seq + 1, _MAX_HORIZON))
        kind, index = g.repair_symbol(msg.block, msg.seq)
        if kind == "source":  # a source shard resent as a repair: padded to full size
            length = g.shard_span(msg.block, index)[1]
            self._accept_source(msg.block, blk, index, msg.payload[:length], now)
            return
        if index in blk.parity:
            self.stats.duplicates += 1
            return
        blk.parity[index] = msg.payload
        self._progress(msg.block, blk, now)
        self._after_arrival(msg.block, blk, now)

    def _handle_nak(self, msg: Nak, now: float) -> None:
        if msg.receiver_id == self.receiver_id:
            return
        for entry in msg.entries:
            blk = self._blocks.get(entry.block)
            if blk is None or blk.state is not NakState.BACKOFF:
                continue
            if entry.need >= blk.need and entry.horizon <= blk.horizon:
                self.stats.naks_suppressed += 1
                self._arm(entry.block, blk, NakState.WAIT, now + self.config.nak_retry)

    def _handle_status(self, msg: Status | Solicit, now: float) -> None:
        return  # other receivers' reports and requests are for the sender

    def _handle_end(self, msg: End, now: float) -> None:
        # Not final on its own: without a session key anyone can send END, so the session
        # only ends if no genuine traffic follows within end_grace.
        self._end_heard = now

    def _silence_deadline(self) -> float:
        deadline = self._last_heard + self.config.silence_timeout
        if self._end_heard is not None:
            deadline = min(deadline, max(self._end_heard, self._last_heard) + self.config.end_grace)
        return deadline

    # -- blocks ------------------------------------------------------------------------------
    def _block(self, b: int) -> _Block:
        blk = self._blocks.get(b)
        if blk is None:
            g = self.geometry
            assert g is not None
            blk = self._blocks[b] = _Block(g.k(b), g.parity_count(b))
        return blk

    def _advance_frontier(self, frontier: int, now: float) -> None:
        """Blocks below ``frontier`` were sent once: schedule NAKs for the incomplete ones."""
        for b in range(self._frontier, frontier):
            if not self._block_done[b]:
                blk = self._block(b)
                if blk.state is NakState.IDLE:
                    self._arm(b, blk, NakState.BACKOFF, now + self._backoff())
        self._frontier = max(self._frontier, frontier)

    def _progress(self, b: int, blk: _Block, now: float) -> None:
        if blk.state is NakState.WAIT:  # repairs are arriving: give them time
            self._arm(b, blk, NakState.WAIT, now + self.config.nak_retry)

    def _after_arrival(self, b: int, blk: _Block, now: float) -> None:
        if not self._block_done[b] and blk.need == 0:
            self._decode(b, blk)
        if self._block_done[b]:
            blk.state = NakState.IDLE
            del self._blocks[b]
            if self._verified_count == self.snapshot.block_count:
                self._finish(now)

    def _verify_unit(self, b: int, blk: _Block, unit: int) -> bool:
        g = self.geometry
        assert g is not None
        first = g.unit_first_shard(unit)
        indices = range(first, first + g.unit_shards(unit))
        data = b"".join(blk.shards[i] for i in indices)
        if hashlib.sha256(data).digest() != self.snapshot.block_hashes[unit]:
            self.stats.verify_failures += 1
            for i in indices:  # forged or corrupt: drop and ask again
                del blk.shards[i]
            blk.held[unit] = 0
            if self.stats.verify_failures > self.config.max_verify_failures:
                self._fail(f"{self.stats.verify_failures} units failed verification")
            return False
        self._verified[unit] = 1
        self._verified_count += 1
        self.stats.units_verified += 1
        self._events.append(UnitVerified(unit, unit * self.snapshot.block_size, data))
        if all(self._verified[u] for u in g.block_units(b)):
            self._block_done[b] = 1
        return True

    def _decode(self, b: int, blk: _Block) -> None:
        g = self.geometry
        assert g is not None
        source = {i: fec.pad(s, g.packet_size) for i, s in blk.shards.items()}
        if blk.on_disk:
            source.update(self._shards_from_disk(b))
            blk.on_disk = 0
        try:
            recovered = fec.decode(blk.k, blk.parity_count, source, blk.parity)
        except fec.FecError:
            self.stats.decode_failures += 1
            blk.parity.clear()
            return
        self.stats.decodes += 1
        for i, shard in recovered.items():
            blk.shards[i] = shard[: g.shard_span(b, i)[1]]
        for i, shard in source.items():
            blk.shards.setdefault(i, shard[: g.shard_span(b, i)[1]])
        bad = [
            u
            for u in g.block_units(b)
            if not self._verified[u] and not self._verify_unit(b, blk, u)
        ]
        if bad:  # a forged shard poisoned the decode: parity is suspect, start the block over
            blk.parity.clear()
            self.stats.decode_failures += 1

    def _shards_from_disk(self, b: int) -> dict[int, bytes]:
        g = self.geometry
        assert g is not None and self._load_unit is not None
        out: dict[int, bytes] = {}
        for u in g.block_units(b):
            if not self._verified[u]:
                continue
            data = self._load_unit(u)
            first = g.unit_first_shard(u)
            for n in range(g.unit_shards(u)):
                chunk = data[n * g.packet_size : (n + 1) * g.packet_size]
                out[first + n] = fec.pad(chunk, g.packet_size)
        return out

    # -- timers and output -------------------------------------------------------------------
    def _backoff(self) -> float:
        return self._rng.uniform(0.0, self.config.nak_backoff)

    def _arm(self, b: int, blk: _Block, state: NakState, due: float) -> None:
        blk.state, blk.due = state, due
        heapq.heappush(self._timers, (due, b))

    def _flush_naks(self) -> None:
        if not self._nak_queue or self.session_id is None:
            return
        n = self.config.max_nak_entries
        for i in range(0, len(self._nak_queue), n):
            chunk = tuple(self._nak_queue[i : i + n])
            self._out.append(encode(Nak(self.session_id, self.receiver_id, chunk), self._key))
            self.stats.naks_sent += 1
            self.stats.nak_entries_sent += len(chunk)
        self._nak_queue.clear()

    def _close_window(self) -> bool:
        """Loss over the window that ends now; True if it says the sender is too fast."""
        expected = self._high - self._window_high
        if expected >= 20:
            lost = max(0, expected - self._window_received)
            self._loss_permille = min(1000, lost * 1000 // expected)
        elif expected <= 0:
            self._loss_permille = 0
        self._backlog = 0.0  # the fullest the socket queue was in this window
        self._backlog_pct = 0
        self._window_high, self._window_received = self._high, 0
        drops = self._socket_drops > self._reported_drops
        self._reported_drops = self._socket_drops
        self._backlog_pct = int(self._backlog * 100)
        self._backlog = 0.0
        return (
            drops
            or self._loss_permille > self.config.congestion_loss_permille
            or self._backlog_pct > self.config.congestion_backlog * 100
        )

    def _queue_status(self, done: bool, failed: bool = False) -> None:
        if self.session_id is None:
            return
        msg = Status(
            self.session_id, self.receiver_id, self._verified_count, done, failed,
            self._loss_permille, self._socket_drops, self._backlog_pct,
        )  # fmt: skip
        self._out.append(encode(msg, self._key))
        self.stats.status_sent += 1

    def _send_done_status(self, now: float) -> None:
        if self._done_repeats and now >= self._next_status:
            self._queue_status(done=self.phase is Phase.COMPLETE, failed=self.phase is Phase.FAILED)
            self._done_repeats -= 1
            self._next_status = now + self.config.done_status_spacing

    def _finish(self, now: float) -> None:
        self.phase = Phase.COMPLETE
        self._blocks.clear()
        self._timers.clear()
        self._events.append(Completed())
        self._queue_status(done=True)  # repeated a few times: the sender may lose one
        self._done_repeats = self.config.done_status_repeats - 1
        self._next_status = now + self.config.done_status_spacing

    def _fail(self, reason: str) -> None:
        if self.phase in (Phase.COMPLETE, Phase.FAILED):
            return
        self.phase = Phase.FAILED
        self._blocks.clear()
        self._timers.clear()
        self._events.append(SessionFailed(reason))
        self._queue_status(done=False, failed=True)
        self._done_repeats = 0
