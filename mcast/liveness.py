"""Whether the receiver's session is still worth staying in: silence, END, and slowness.

It owns two times: when the session last showed it lives (a shard that fits its geometry, an
authentic announce of the session; the receiver core decides what counts) and when an END was
heard. The session is dead once ``silence_timeout`` passes without a sign of life (the master
died: a receiver may take over), or ``end_grace`` passes after an END with none since. An END
alone ends nothing: without a session key anyone can send one, so genuine traffic after it
keeps the session. A master that lives but does not move is judged by the slow-session floor
(:class:`ProgressFloor`), which also bounds a replayed announce that looks like life.
"""

from __future__ import annotations

from typing import Protocol

from mcast.events import FailureKind
from mcast.progress_floor import ProgressFloor
from mcast.wire import Announce


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
        self.floor = floor or ProgressFloor(now, min_bytes_per_s=0, grace=1.0, unit_size=1)

    @classmethod
    def of(cls, cfg: LivenessConfig, now: float, *, unit_size: int) -> Liveness:
        floor = ProgressFloor(now, min_bytes_per_s=cfg.min_progress_bytes_per_s,
                              grace=cfg.slow_grace, unit_size=unit_size)  # fmt: skip
        return cls(now, silence_timeout=cfg.silence_timeout, end_grace=cfg.end_grace, floor=floor)

    def joined(self, now: float, own_units: int) -> None:
        self.progress(now)
        self.floor.start(now, own_units)

    def announced(self, msg: Announce, now: float, own_units: int) -> None:
        """An authentic announce of our session: the master lives. What it holds feeds the
        floor; a hold it announces is not slowness."""
        self.progress(now)
        self.floor.master_holds(msg.verified_units)
        if msg.hold_ms:
            self.floor.hold(now, now + msg.hold_ms / 1000, own_units)

    def progress(self, now: float) -> None:
        self.last_heard = now

    def end(self, now: float) -> None:
        self.end_heard = now

    def deadline(self, *, joined: bool = False) -> float:
        deadline = self.last_heard + self.silence_timeout
        if self.end_heard is not None:
            deadline = min(deadline, max(self.end_heard, self.last_heard) + self.end_grace)
        floor = self.floor.deadline() if joined else None
        return deadline if floor is None else min(deadline, floor)

    def dead(
        self, now: float, *, joined: bool, own_units: int = 0
    ) -> tuple[FailureKind, str] | None:
        """Why the session is over at ``now``, or None while it lives."""
        slow = self.floor.check(now, own_units) if joined else None
        if slow is not None:
            return FailureKind.SLOW, slow
        if now < self.deadline():
            return None
        if self.end_heard is not None:
            return FailureKind.ENDED, "sender ended the session"
        if not joined:
            return FailureKind.NO_SESSION, f"no session announced for {self.silence_timeout:g}s"
        return FailureKind.SILENT, f"sender silent for {self.silence_timeout:g}s"
