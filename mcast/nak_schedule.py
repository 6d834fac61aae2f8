"""When the receiver asks for repairs: the NAK schedule of every block the sender has passed.

It owns the frontier (blocks below it have been sent once) and, per incomplete block behind
it, one timer in one of two states. BACKOFF: a NAK is due after a random back-off unless an
equivalent NAK from another receiver is heard first (suppression: it asks for at least as
much and has seen no more of the block's repairs). WAIT: the block was NAKed, or the NAK was
suppressed; if it makes no progress for ``retry`` seconds it goes back to BACKOFF and is
NAKed again. Progress on a waiting block pushes its retry back. A block with no timer is
idle: not yet passed, or complete.

The back-off is scaled to the group, as NORM's is (RFC 5740, after Nonnenmacher and
Biersack): ``group`` is the number of receivers the sender announces it hears. The random
wait is exponentially biased towards the end of a window, ``t = T * ln((e**L - 1) x + 1) / L``
for x uniform in [0, 1) and ``L = ln(group) + 1``, so that among many receivers only a few
timers fall early, and the window ``T`` grows with the decades of the group
(``backoff * max(1, log10(group))``), so that those few are heard before the rest fire:
the NAKs per block grow with the logarithm of the group, not with the group.

What a block still needs comes from a ``BlockView`` (the assembler); the schedule never
holds shards. ``deadline()`` is the earliest live timer; ``fire(now)`` returns the NAK
entries due, which the receiver core packs into datagrams.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable
from enum import Enum
from typing import Protocol

from mcast.wire import NakEntry


class NakState(Enum):
    IDLE = 0  # not yet passed by the sender, or complete
    BACKOFF = 1  # a NAK is due unless an equivalent one is heard first
    WAIT = 2  # NAKed (or suppressed): re-NAK when due unless the block progresses


class BlockView(Protocol):
    def done(self, b: int) -> bool: ...
    def need(self, b: int) -> int: ...
    def horizon(self, b: int) -> int: ...


def backoff_delay(x: float, backoff: float, group: int) -> float:
    """The back-off for a uniform draw ``x`` in [0, 1), in a group of ``group`` receivers:
    exponentially biased towards the end of a window that grows with log10(group)."""
    n = max(1, group)
    window = backoff * max(1.0, math.log10(n))
    lam = math.log(n) + 1.0
    return window * math.log((math.exp(lam) - 1.0) * x + 1.0) / lam


class NakSchedule:
    def __init__(
        self,
        blocks: BlockView,
        rng: random.Random,
        *,
        backoff: float,
        retry: float,
        group: int = 1,
    ) -> None:
        self.backoff = backoff  # the back-off window of a group of up to ten receivers
        self.group = group  # receivers in the session, as the sender announces them
        self.retry = retry  # a NAKed block that makes no progress this long is NAKed again
        self.frontier = 0  # blocks below this have been passed by the sender
        self._blocks = blocks
        self._rng = rng
        self._armed: dict[int, tuple[NakState, float]] = {}  # block -> (state, due)
        self._timers: list[tuple[float, int]] = []  # (due, block); stale entries skipped

    def state(self, b: int) -> NakState:
        armed = self._armed.get(b)
        return NakState.IDLE if armed is None else armed[0]

    def advance(self, frontier: int, now: float) -> None:
        """Blocks below ``frontier`` were sent once: schedule NAKs for the incomplete ones."""
        for b in range(self.frontier, frontier):
            if not self._blocks.done(b) and b not in self._armed:
                self._arm(b, NakState.BACKOFF, now + self._backoff())
        self.frontier = max(self.frontier, frontier)

    def progressed(self, b: int, now: float) -> None:
        """Something new arrived for block ``b``: a waiting block gets more time."""
        if self.state(b) is NakState.WAIT:
            self._arm(b, NakState.WAIT, now + self.retry)

    def heard(self, entries: Iterable[NakEntry], now: float) -> int:
        """Another receiver's NAK; returns how many of our pending NAKs it stands in for."""
        suppressed = 0
        for entry in entries:
            if self.state(entry.block) is not NakState.BACKOFF:
                continue
            b = entry.block
            if entry.need >= self._blocks.need(b) and entry.horizon <= self._blocks.horizon(b):
                suppressed += 1
                self._arm(b, NakState.WAIT, now + self.retry)
        return suppressed

    def forget(self, b: int) -> None:
        """Block ``b`` is complete: it never needs a NAK again."""
        self._armed.pop(b, None)

    def clear(self) -> None:
        self._armed.clear()
        self._timers.clear()

    def deadline(self) -> float | None:
        timers = self._timers
        while timers and not self._live(*timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def fire(self, now: float) -> list[NakEntry]:
        """Run every timer due by ``now``; the NAK entries to send, in block-timer order."""
        naks: list[NakEntry] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, b = heapq.heappop(timers)
            if not self._live(due, b):
                continue
            if self._armed[b][0] is NakState.BACKOFF:
                need = self._blocks.need(b)
                if need:
                    naks.append(NakEntry(b, need, self._blocks.horizon(b)))
                self._arm(b, NakState.WAIT, now + self.retry)
            else:  # WAIT ran out with no progress: NAK again, after a fresh back-off
                self._arm(b, NakState.BACKOFF, now + self._backoff())
        return naks

    def _live(self, due: float, b: int) -> bool:
        armed = self._armed.get(b)
        return armed is not None and armed[1] == due

    def _backoff(self) -> float:
        return backoff_delay(self._rng.random(), self.backoff, self.group)

    def _arm(self, b: int, state: NakState, due: float) -> None:
        self._armed[b] = (state, due)
        heapq.heappush(self._timers, (due, b))
