"""When the receiver asks for repairs: the NAK schedule of every block the sender has passed.

It owns the frontier (blocks below it have been sent once) and, per incomplete block behind
it, one timer in one of two states. BACKOFF: a NAK is due after a random back-off unless an
equivalent NAK from another receiver is heard first (suppression: it asks for at least as
much and has seen no more of the block's repairs). WAIT: the block was NAKed, or the NAK was
suppressed; if it makes no progress for a retry time it goes back to BACKOFF and is NAKed
again. Progress on a waiting block pushes its retry back. A block with no timer is idle: not
yet passed, or complete.

The retry time follows how fast repairs answer a NAK here, as TCP's retransmission timeout
follows the round trip (RFC 6298): the time from a NAK to the block's next arrival is
smoothed (``srtt``, ``rttvar``) and the retry is ``srtt + 4 rttvar``, never below
``min_retry`` nor above ``retry``, which is also where it starts. On a LAN one lost repair
then costs a few milliseconds, not the worst case a slow path needs.

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
        min_retry: float | None = None,
        group: int = 1,
    ) -> None:
        self.backoff = backoff  # the back-off window of a group of up to ten receivers
        self.group = group  # receivers in the session, as the sender announces them
        self.retry = retry  # the longest a NAKed block waits for progress before a new NAK
        self.min_retry = retry if min_retry is None else min(min_retry, retry)
        self.srtt: float | None = None  # smoothed time from a NAK to the block's next arrival
        self.rttvar = 0.0
        self._asked: dict[int, float] = {}  # block -> when it was NAKed, until it progresses
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

    def retry_after(self) -> float:
        """How long a NAKed block waits for progress before it is NAKed again."""
        if self.srtt is None:
            return self.retry
        return min(self.retry, max(self.min_retry, self.srtt + 4 * self.rttvar))

    def progressed(self, b: int, now: float) -> None:
        """Something new arrived for block ``b``: a waiting block gets more time."""
        asked = self._asked.pop(b, None)
        if asked is not None:
            self._sample(max(0.0, now - asked))
        if self.state(b) is NakState.WAIT:
            self._arm(b, NakState.WAIT, now + self.retry_after())

    def heard(self, entries: Iterable[NakEntry], now: float) -> int:
        """Another receiver's NAK; returns how many of our pending NAKs it stands in for."""
        suppressed = 0
        for entry in entries:
            if self.state(entry.block) is not NakState.BACKOFF:
                continue
            b = entry.block
            if entry.need >= self._blocks.need(b) and entry.horizon <= self._blocks.horizon(b):
                suppressed += 1
                self._arm(b, NakState.WAIT, now + self.retry_after())
        return suppressed

    def forget(self, b: int) -> None:
        """Block ``b`` is complete: it never needs a NAK again."""
        self._armed.pop(b, None)
        self._asked.pop(b, None)

    def clear(self) -> None:
        self._armed.clear()
        self._timers.clear()
        self._asked.clear()

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
                    self._asked.setdefault(b, now)
                self._arm(b, NakState.WAIT, now + self.retry_after())
            else:  # WAIT ran out with no progress: NAK again, after a fresh back-off
                self._arm(b, NakState.BACKOFF, now + self._backoff())
        return naks

    def _live(self, due: float, b: int) -> bool:
        armed = self._armed.get(b)
        return armed is not None and armed[1] == due

    def _sample(self, rtt: float) -> None:
        """One NAK-to-arrival time, smoothed as RFC 6298 smooths round trips."""
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def _backoff(self) -> float:
        return backoff_delay(self._rng.random(), self.backoff, self.group)

    def _arm(self, b: int, state: NakState, due: float) -> None:
        self._armed[b] = (state, due)
        heapq.heappush(self._timers, (due, b))
