"""Whether the receiver's session is still worth staying in: silence, END, and slowness.

It owns two times: when the session last showed it lives and when an END was heard. The
session is dead once ``silence_timeout`` passes without a sign of life (the master died: a
receiver may take over), or ``end_grace`` passes after an END with none since. An END alone
ends nothing: without a session key anyone can send one, so genuine traffic after it keeps the
session. A master that lives but does not move is judged by the slow-session floor
(:class:`ProgressFloor`), which also bounds a replayed announce that looks like life; a master
that has gone quiet is judged by the silence timeout instead, so that its death reads as
silence (followed, taken over), not as slowness.

What is a sign of life depends on whether anything can be authenticated. With a session key,
any datagram of the session that passes its tag comes from a key holder: a shard that fits
the geometry and an announce both count. Without one (``--insecure``) any host can forge
them, so only what cannot be forged counts: a unit verified against the signed snapshot, an
announce that shows the master holding more units than before (bounded by the package's unit
count), and an announced rendezvous hold, up to ``UNKEYED_HOLD_CAP`` after the join.
"""

from __future__ import annotations

from typing import Protocol

from mcast.events import FailureKind
from mcast.progress_floor import ProgressFloor
from mcast.wire import Announce

# A live master announces every 0.5 s: one quiet for longer may be dead, and its silence, not
# the floor, judges it.
QUIET_S = 2.0
# Without a key, announced holds keep a joined receiver waiting at most this long after it
# joined: anyone can announce a hold.
UNKEYED_HOLD_CAP = 10.0


class LivenessConfig(Protocol):
    @property
    def silence_timeout(self) -> float: ...
    @property
    def end_grace(self) -> float: ...
    @property
    def min_progress_bytes_per_s(self) -> float: ...
    @property
    def slow_grace(self) -> float: ...


class Liveness:
    def __init__(
        self,
        now: float,
        *,
        silence_timeout: float,
        end_grace: float,
        floor: ProgressFloor | None = None,
    ) -> None:
        self.silence_timeout = silence_timeout
        self.end_grace = end_grace
        self.last_heard = now
        self.end_heard: float | None = None
        self.joined_at = now
        self.floor = floor or ProgressFloor(now, min_bytes_per_s=0, grace=1.0, unit_size=1)

    @classmethod
    def of(cls, cfg: LivenessConfig, now: float, *, unit_size: int) -> Liveness:
        floor = ProgressFloor(now, min_bytes_per_s=cfg.min_progress_bytes_per_s,
                              grace=cfg.slow_grace, unit_size=unit_size)  # fmt: skip
        return cls(now, silence_timeout=cfg.silence_timeout, end_grace=cfg.end_grace, floor=floor)

    def joined(self, now: float, own_units: int) -> None:
        self.joined_at = now
        self.progress(now)
        self.floor.start(now, own_units)

    def announced(
        self, msg: Announce, now: float, own_units: int, *, authentic: bool = True
    ) -> None:
        """An announce of our session. What it holds feeds the floor; a hold it announces is
        not slowness. ``authentic`` (keyed): the master lives. Unkeyed, only new progress or a
        hold (capped) is taken as life, since anyone can repeat or forge an announce."""
        moved = msg.verified_units > self.floor.master_units
        self.floor.master_holds(msg.verified_units)
        if msg.hold_ms:
            until = now + msg.hold_ms / 1000
            if not authentic:
                until = min(until, self.joined_at + UNKEYED_HOLD_CAP)
                self.last_heard = max(self.last_heard, until)
            self.floor.hold(now, until, own_units)
        if authentic or moved:
            self.progress(now)

    def shard(self, now: float, *, authentic: bool) -> None:
        """A shard that fits the session's geometry: life if its tag proved the sender.
        Unkeyed, the receiver calls :meth:`progress` only once a unit verifies."""
        if authentic:
            self.progress(now)

    def progress(self, now: float) -> None:
        """A sign of life that cannot be forged, or an authenticated one."""
        self.last_heard = max(self.last_heard, now)

    def end(self, now: float) -> None:
        self.end_heard = now

    def deadline(self, *, joined: bool = False) -> float:
        deadline = self.last_heard + self.silence_timeout
        if self.end_heard is not None:
            deadline = min(deadline, max(self.end_heard, self.last_heard) + self.end_grace)
        floor = self.floor.deadline() if joined else None
        if floor is None or floor >= self.last_heard + QUIET_S:
            return deadline  # the master will be quiet by then: silence judges it
        return min(deadline, floor)

    def dead(
        self, now: float, *, joined: bool, own_units: int = 0
    ) -> tuple[FailureKind, str] | None:
        """Why the session is over at ``now``, or None while it lives."""
        quiet = now >= self.last_heard + QUIET_S
        slow = self.floor.check(now, own_units) if joined and not quiet else None
        if slow is not None:
            return FailureKind.SLOW, slow
        if now < self.deadline():
            return None
        if self.end_heard is not None:
            return FailureKind.ENDED, "sender ended the session"
        if not joined:
            return FailureKind.NO_SESSION, f"no session announced for {self.silence_timeout:g}s"
        return FailureKind.SILENT, f"sender silent for {self.silence_timeout:g}s"
