"""The sans-I/O receiver core: from datagrams to verified hash units.

It owns the session: its phase (waiting for an announce, receiving, complete, failed; every
change goes through ``_set_phase`` and its table), joining on an announce for our snapshot
(and following only announces of that session and geometry), routing each datagram to the
part it concerns, and deciding what counts as progress. It hands each other job to a part
that owns it and reports its own deadline, as aioquic's connection does with its streams and
loss recovery:

- ``Assembler`` (``mcast/assembler.py``): shards checked against the geometry, per-block
  reception state, Reed-Solomon decoding, verification of every unit against the signed
  snapshot, and the map of verified units on which completion alone rests;
- ``NakSchedule`` (``mcast/nak_schedule.py``): the sender's frontier, random back-off
  scaled to the group size the sender announces, suppression on hearing an equivalent NAK,
  re-NAK when a block makes no progress;
- ``OverrunMonitor`` (``mcast/overrun.py``): first-pass loss, socket backlog and drops over
  short windows, the signals the sender's rate control reads;
- ``Reports`` (``mcast/reports.py``): NAK datagrams, SOLICITs while no session is heard,
  periodic and final STATUS;
- ``Liveness`` (``mcast/liveness.py``): the silence timeout (a sign of the master that its
  tag authenticates, or without a key one nobody can forge: a verified unit), the grace after
  an END, and the slow-session floor (``ProgressFloor``: our own
  progress or the master's announced progress, over windows; a hold is not slowness);
- ``PeerView`` (``mcast/peer_view.py``): the other receivers' STATUS, so that when the master
  goes silent the failure says whether this receiver is the one to take the session over;
- ``EarlyBuffer`` (``mcast/early.py``): datagrams from before the join, replayed on it.

It joins only a session whose announce echoes one of its SOLICIT nonces (``Reports``
remembers them): a recorded announce of a session that is over cannot pin it. Announces it
cannot trust yet make it ask again at once. After that, every control message must carry a
counter newer than the last from its origin (``ReplayGuard``, ``mcast/freshness.py``), so a
replay from earlier in the session changes nothing.

``get_timer()`` is the earliest deadline of the parts the phase runs. No clock, no socket, no
trio: the driver passes ``now`` into ``receive_datagram`` and ``handle_timer``, sends what
``datagrams_to_send`` returns, re-arms ``get_timer()`` and handles ``next_event()``
(``UnitVerified`` carries the bytes to write).
"""

from __future__ import annotations

import functools
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mcast import fec
from mcast.assembler import Assembler, BlockDecoder, UnitDigest, join_and_hash
from mcast.early import EarlyBuffer
from mcast.events import Completed, Event, FailureKind, SessionFailed, SessionJoined
from mcast.freshness import ReplayGuard
from mcast.geometry import Geometry
from mcast.ledbat import DelayMeter
from mcast.liveness import Liveness
from mcast.nak_schedule import NakSchedule
from mcast.overrun import OverrunMonitor
from mcast.peer_view import PeerView
from mcast.reports import Reports
from mcast.snapshot import Snapshot
from mcast.wire import (
    MAX_ECHOES,
    Announce,
    BadPacket,
    Data,
    End,
    Message,
    MsgType,
    Nak,
    Parity,
    Solicit,
    Status,
    check_key,
    decode_shard_untrusted,
    decode_untrusted,
)

ShardDecoder = Callable[[bytes, bytes | None], tuple[int, int, int, int, bytes] | None]
MessageDecoder = Callable[[bytes, bytes | None], Message]

_log = logging.getLogger(__name__)
_PARITY_AHEAD = 1  # parity is kept up to the block the sender is known to be sending
_MAX_GROUP = 65536  # no sender tracks more receivers (mcast.peers.MAX_PEERS)


def _same_shape(g: Geometry, a: Announce) -> bool:
    """Whether an announce describes the geometry we joined (cheaply: no Geometry built)."""
    shape = (a.packet_size, a.units_per_block, a.parity_ratio_pct)
    return shape == (g.packet_size, g.units_per_block, g.parity_ratio_pct)


def _geometry_of(snapshot: Snapshot, a: Announce) -> Geometry | None:
    """The geometry an announce describes for our snapshot; None if it cannot be one."""
    try:
        return _geometry(
            snapshot.total_size,
            snapshot.block_size,
            a.packet_size,
            a.units_per_block,
            a.parity_ratio_pct,
        )
    except ValueError:
        return None


@functools.lru_cache(maxsize=64)
def _geometry(total: int, unit: int, packet: int, per_block: int, parity_pct: int) -> Geometry:
    """Geometries are immutable: receivers of one session in one process share one."""
    return Geometry(total, unit, packet, per_block, parity_pct)


@dataclass(frozen=True)
class ReceiverConfig:
    nak_backoff: float = 0.02  # a NAK waits a random time up to this, listening for others
    nak_retry: float = 0.08  # a NAKed block that makes no progress for this long is NAKed again
    nak_min_retry: float = 0.01  # ... or sooner, as fast as repairs have been answering NAKs
    # (a re-NAK within the sender's repair_holdoff of its last repair is answered only for
    # repairs below our horizon: the ones we lost while later ones arrived, the common case)
    status_interval: float = 1.0
    status_rate: float = 100.0  # STATUS a second from the whole group, at most (RTCP-style)
    congestion_window: float = 0.1  # loss and socket drops are judged over windows this long
    congestion_loss_permille: int = 150  # more first-pass loss than this is reported at once
    congestion_backlog: float = 0.5  # a socket queue fuller than this is reported at once
    silence_timeout: float = 5.0  # no valid datagram from the session this long: failed
    end_grace: float = 0.5  # after an END, this long without session traffic: failed
    max_verify_failures: int = 64  # keyed: failed units in all before the session has failed
    max_unit_failures: int = 16  # unkeyed: failures of one unit before the session has failed
    max_nak_entries: int = 128  # per NAK datagram
    done_status_repeats: int = 3  # the final status goes out this many times, spaced by:
    done_status_spacing: float = 0.005  # short: the receiver exits once they are out
    solicit_interval: float = 0.25  # while no session is heard, ask for an announce this often
    early_buffer: int = 1024  # datagrams kept from before the first announce, replayed on join
    min_progress_bytes_per_s: float = 64 * 1024  # the slow-session floor (0: none) ...
    slow_grace: float = 10.0  # ... over windows this long (see ProgressFloor)
    rank: int = 0  # this machine's Rank, reported for a takeover (mcast.discovery.Rank)


class Phase(Enum):
    WAITING = "waiting"  # no announce of a session for our snapshot heard yet
    RECEIVING = "receiving"
    COMPLETE = "complete"
    FAILED = "failed"


_PHASES: dict[Phase, frozenset[Phase]] = {  # the phases each phase may move to
    Phase.WAITING: frozenset({Phase.RECEIVING, Phase.COMPLETE, Phase.FAILED}),
    Phase.RECEIVING: frozenset({Phase.COMPLETE, Phase.FAILED}),
    Phase.COMPLETE: frozenset(),
    Phase.FAILED: frozenset(),
}


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
    replays: int = 0  # authentic control messages dropped as not newer than their origin's last
    unconfirmed_announces: int = 0  # announces that echoed none of our nonces (not joined)
    naks_sent: int = 0
    nak_entries_sent: int = 0
    naks_suppressed: int = 0
    status_sent: int = 0


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
        decode_shard: ShardDecoder = decode_shard_untrusted,
        decode_message: MessageDecoder = decode_untrusted,
        decode_block: BlockDecoder = fec.decode,
        digest_unit: UnitDigest = join_and_hash,
    ) -> None:
        """``decode_shard``, ``decode_message``, ``decode_block`` and ``digest_unit`` are the
        wire and erasure decoders and the unit hash (pure functions); a simulator of many
        receivers passes memoizing ones that give the same answers, so that one datagram is
        parsed once, and one unit joined and hashed once, not once per receiver."""
        self.snapshot = snapshot
        self.receiver_id = receiver_id
        self.config = cfg = config or ReceiverConfig()
        self.stats = ReceiverStats()
        self.phase = Phase.WAITING
        self.session_id = session_id
        self.announce: Announce | None = None
        self.geometry: Geometry | None = None
        self._rng = rng or random.Random()
        self._key = check_key(key)
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []
        self._decode_shard = decode_shard
        self._decode_message = decode_message
        self._assembler = Assembler(
            snapshot, self.stats, self._events.append,
            verified_units=verified_units, load_unit=load_unit, decode=decode_block,
            digest=digest_unit,
        )  # fmt: skip
        self._naks = NakSchedule(
            self._assembler, self._rng, backoff=cfg.nak_backoff, retry=cfg.nak_retry,
            min_retry=cfg.nak_min_retry,
        )  # fmt: skip
        self._overrun = OverrunMonitor(
            now, window=cfg.congestion_window,
            loss_permille=cfg.congestion_loss_permille, backlog=cfg.congestion_backlog,
        )  # fmt: skip
        self._liveness = Liveness.of(cfg, now, unit_size=snapshot.block_size)
        self._reports = Reports(
            now, session_id=session_id, receiver_id=receiver_id,
            package_hash=snapshot.package_hash, key=self._key, rng=self._rng,
            overrun=self._overrun, verified=lambda: self._assembler.verified_count,
            qdelay=lambda: self._delay.qdelay_us,
            send=self._out.append, stats=self.stats, config=cfg,
        )  # fmt: skip
        self._delay = DelayMeter()  # the sender's announces' one-way delay (mcast.ledbat)
        self._arrived = now  # when the datagram being handled reached this host
        self._early = EarlyBuffer(cfg.early_buffer)  # datagrams from before the join
        self._peers = PeerView(stale_after=3 * cfg.status_interval)
        self._sender_guard = ReplayGuard(max_origins=64)  # by session id
        self._peer_guard = ReplayGuard()  # other receivers, by receiver id
        if self._assembler.complete:
            self._finish(now)

    # -- public API ------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.phase is Phase.COMPLETE

    @property
    def verified_units(self) -> int:
        return self._assembler.verified_count

    def receive_datagram(
        self, data: bytes, addr: object, now: float, *, arrived: float | None = None
    ) -> None:
        """``arrived``: when the datagram reached this host, if the driver knows better than
        ``now`` (a kernel timestamp); only the delay samples of announces use it."""
        self.stats.datagrams += 1
        self._arrived = arrived if arrived is not None and arrived <= now else now  # NaN: now
        if self.phase is not Phase.RECEIVING:
            if self.phase is Phase.WAITING:
                self._receive_message(data, now)
            return
        try:
            shard = self._decode_shard(data, self._key)
        except BadPacket:
            self.stats.bad_packets += 1
            return
        if shard is None:
            self._receive_message(data, now)
            return
        kind, session, block, index, payload = shard
        if session != self.session_id:
            self.stats.other_session += 1
        elif kind == MsgType.DATA:
            self._data(block, index, payload, now)
        else:
            self._parity(block, index, payload, now)

    def _receive_message(self, data: bytes, now: float) -> None:
        try:
            msg = self._decode_message(data, self._key)
        except BadPacket:
            self.stats.bad_packets += 1
            return
        if self.session_id is not None and msg.session != self.session_id:
            self.stats.other_session += 1
            return
        if self.phase is Phase.WAITING and not isinstance(msg, Announce):
            if isinstance(msg, Solicit):
                return  # other receivers' requests are for the sender: nothing to keep
            self._early.keep(data)  # shards need the session's geometry: keep for later
            return  # (its freshness is judged when it is replayed, once, after the join)
        if not self._fresh(msg):
            self.stats.replays += 1
            return
        _HANDLERS[type(msg)](self, msg, now)

    def handle_timer(self, now: float) -> None:
        if self.phase in (Phase.COMPLETE, Phase.FAILED):
            self._reports.repeat_final(now, done=self.phase is Phase.COMPLETE)
            return
        joined = self.phase is not Phase.WAITING
        dead = self._liveness.dead(now, joined=joined, own_units=self.verified_units)
        if dead is not None:
            self._fail(*dead, now)
            return
        self._reports.naks(self._naks.fire(now), now)
        if self.phase is Phase.WAITING:
            self._reports.solicit(now)
        else:  # a window that says "too fast" is reported at once
            self._reports.periodic(now, urgent=self._overrun.poll(now))

    def get_timer(self) -> float | None:
        """The earliest deadline of the parts the current phase runs."""
        phase = self.phase
        if phase is Phase.COMPLETE or phase is Phase.FAILED:
            return self._reports.final_deadline()
        receiving = phase is Phase.RECEIVING
        timer = self._liveness.deadline(joined=receiving)
        nak = self._naks.deadline()
        if nak is not None and nak < timer:
            timer = nak
        if receiving:
            timer = min(timer, self._reports.next_status, self._overrun.deadline())
        else:
            timer = min(timer, self._reports.next_solicit)
        return timer

    def note_backlog(self, fraction: float) -> None:
        """The driver saw its socket queue this full (0..1)."""
        self._overrun.note_backlog(fraction)

    def note_socket_drops(self, total: int) -> None:
        """The driver's count of datagrams its socket dropped (SO_RXQ_OVFL), cumulative."""
        self._overrun.note_socket_drops(total)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        if not self._out:
            return []
        out = self._out.copy()  # the list itself stays: the parts append to it
        self._out.clear()
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def statistics(self) -> ReceiverStats:
        return self.stats

    @property
    def qdelay_us(self) -> int:
        """The queueing delay this receiver reports (mcast.ledbat.DelayMeter)."""
        return self._delay.qdelay_us

    def missing_units(self) -> list[int]:
        return self._assembler.missing_units()

    # -- phase -------------------------------------------------------------------------------
    def _set_phase(self, phase: Phase) -> None:
        """Every phase change goes through here; one the table does not allow is a bug."""
        if phase not in _PHASES[self.phase]:
            raise RuntimeError(f"receiver {self.receiver_id}: {self.phase.value} -> {phase.value}")
        _log.debug("receiver %d: %s -> %s", self.receiver_id, self.phase.value, phase.value)
        self.phase = phase

    def _join(self, msg: Announce, geometry: Geometry, now: float) -> None:
        """Adopt the session. Only shards that fit its geometry and announces that show
        progress keep it alive afterwards (see _handle_data, _handle_parity, Liveness), so
        a forged first announce or a replayed one ends in a silence timeout, not a hang."""
        self.session_id = msg.session
        self.geometry = geometry
        self._set_phase(Phase.RECEIVING)
        self._assembler.start(geometry)
        self._events.append(SessionJoined(msg))
        self._reports.joined(msg.session, now)
        self._liveness.joined(now, self.verified_units)

    def _finish(self, now: float) -> None:
        self._end(Phase.COMPLETE, Completed(), now)

    def _fail(self, kind: FailureKind, reason: str, now: float) -> None:
        if self.phase not in (Phase.COMPLETE, Phase.FAILED):
            me, units, rank = self.receiver_id, self.verified_units, self.config.rank
            heir = kind is FailureKind.SILENT and self._peers.successor(me, units, rank, now) == me
            self._end(Phase.FAILED, SessionFailed(reason, kind, heir), now)

    def _end(self, phase: Phase, event: Event, now: float) -> None:
        self._set_phase(phase)
        self._assembler.clear()
        self._naks.clear()
        self._events.append(event)
        self._reports.final(now, done=phase is Phase.COMPLETE)  # repeated if complete

    # -- handlers ----------------------------------------------------------------------------
    def _handle_announce(self, msg: Announce, now: float) -> None:
        if msg.package_hash != self.snapshot.package_hash:
            self.stats.other_session += 1
            return
        if self.phase is Phase.WAITING:
            if not self._reports.nonces.echoed(msg.echoes):
                self.stats.unconfirmed_announces += 1  # live, or a recording? ask it
                if len(msg.echoes) < MAX_ECHOES:  # a full list: the sender is
                    self._reports.solicit_soon(now)  # working through a backlog: wait
                return
            geometry = _geometry_of(self.snapshot, msg)
            if geometry is None:
                self.stats.bad_packets += 1
                return
            self._note_group(msg)
            self._join(msg, geometry, now)
        elif msg.session != self.session_id:
            return
        else:
            assert self.geometry is not None and self.announce is not None
            if not _same_shape(self.geometry, msg):
                self.stats.bad_packets += 1  # not the session we joined: no say in it
                return
            self._note_group(msg)  # (a joining announce was noted before the join)
        self.announce = msg
        # Fresh (the replay guard passed it) and of our session: its seq is the sender's clock
        # when it left, so its arrival now is a one-way delay sample (mcast.ledbat).
        self._delay.sample(msg.seq, self._arrived)
        self._reports.asked_every(msg.report_ms, now)
        authentic = self._key is not None  # unkeyed, anyone can repeat or forge an announce
        self._liveness.announced(msg, now, self.verified_units, authentic=authentic)
        assert self.geometry is not None
        frontier = self.geometry.block_count if msg.pass_done else msg.next_block
        self._naks.advance(min(frontier, self.geometry.block_count), now)
        for data in self._early.drain():
            self.receive_datagram(data, None, now)

    def _note_group(self, msg: Announce) -> None:
        """The group size the sender announces: NAK back-off and STATUS spacing scale with
        it, so that neither grows with the square of the receivers."""
        self._naks.group = self._reports.group = min(max(1, msg.receivers), _MAX_GROUP)

    def _fresh(self, msg: Message) -> bool:
        """Whether a control message is newer than the last from its origin: the sender
        (its announces and END share one counter) or another receiver. Shards carry no
        counter: a replayed shard is a duplicate, and its bytes are verified anyway."""
        if isinstance(msg, Announce | End):
            return self._sender_guard.fresh(msg.session, msg.seq)
        if isinstance(msg, Nak | Status):
            return self._peer_guard.fresh(msg.receiver_id, msg.seq)
        return True

    def _handle_data(self, msg: Data, now: float) -> None:
        self._data(msg.block, msg.index, msg.payload, now)

    def _handle_parity(self, msg: Parity, now: float) -> None:
        self._parity(msg.block, msg.seq, msg.payload, now)

    def _data(self, block: int, index: int, payload: bytes, now: float) -> None:
        """DATA, the hot path: taken apart by the caller, not built into a message object."""
        g = self.geometry
        assert g is not None
        assembler = self._assembler
        if not assembler.fits_source(block, index, len(payload)):
            return
        self._liveness.shard(now, authentic=self._key is not None)
        if block > self._naks.frontier:
            self._naks.advance(block, now)  # the sender has moved past earlier blocks
        self.stats.data_shards += 1
        self._overrun.note_shard(g.first_shard(block) + index)
        before = assembler.verified_count
        if assembler.add_source(block, index, payload):
            self._after_arrival(block, now, before)

    def _parity(self, block: int, seq: int, payload: bytes, now: float) -> None:
        if not self._assembler.fits_parity(block, len(payload)):
            return
        if block >= self._naks.frontier + _PARITY_AHEAD:
            self.stats.bad_packets += 1  # repairs never precede the pass: nothing to hold
            return
        self._liveness.shard(now, authentic=self._key is not None)
        self.stats.parity_shards += 1
        before = self._assembler.verified_count
        if self._assembler.add_parity(block, seq, payload):
            self._after_arrival(block, now, before)

    def _after_arrival(self, b: int, now: float, verified_before: int) -> None:
        """Something new arrived for block ``b``: give a waiting NAK more time, decode when
        the block can be, and see whether the block, or the package, is complete. A unit
        verified is life that nobody can forge."""
        self._naks.progressed(b, now)
        if self._assembler.settle(b):
            self._naks.forget(b)
            if self._assembler.complete:
                self._finish(now)
        if self._assembler.verified_count > verified_before:
            self._liveness.progress(now)
        if self.stats.verify_failures:  # nothing to judge until a unit has failed
            self._check_failures(now)

    def _check_failures(self, now: float) -> None:
        """Keyed, every shard came from a key holder: a session whose data keeps failing has
        failed. Unkeyed, a failure may be anyone's forgery, which must cost a repair, not the
        session; only one unit failing again and again (the sender's copy is wrong, or a
        forger chases that unit) ends it."""
        if self._key is not None:
            failures = self.stats.verify_failures
            if failures > self.config.max_verify_failures:
                self._fail(FailureKind.VERIFY, f"{failures} units failed verification", now)
            return
        unit, failures = self._assembler.worst_unit()
        if failures > self.config.max_unit_failures:
            self._fail(FailureKind.VERIFY, f"unit {unit} failed verification {failures} times",
                       now)  # fmt: skip

    def _handle_nak(self, msg: Nak, now: float) -> None:
        if msg.receiver_id == self.receiver_id:
            return
        self.stats.naks_suppressed += self._naks.heard(msg.entries, now)

    def _handle_status(self, msg: Status, now: float) -> None:
        if msg.receiver_id != self.receiver_id:
            self._peers.heard(msg, now)  # who would take over if the master dies

    def _handle_end(self, msg: End, now: float) -> None:
        # Not final on its own: without a session key anyone can send END, so the session
        # only ends if no genuine traffic follows within end_grace.
        self._liveness.end(now)


def _ignore(receiver: Receiver, msg: Solicit, now: float) -> None:
    return


_HANDLERS: dict[type[Message], Callable[[Receiver, Any, float], None]] = {
    Announce: Receiver._handle_announce,
    Data: Receiver._handle_data,
    Parity: Receiver._handle_parity,
    Nak: Receiver._handle_nak,
    End: Receiver._handle_end,
    Status: Receiver._handle_status,
    Solicit: _ignore,  # other receivers' requests are for the sender
}
