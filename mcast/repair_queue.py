"""The sender's repair queue: how many repairs each block owes, and which goes out next.

A NAK says how many symbols a receiver still needs for a block (``need``) and how far it has
seen that block's repairs (``horizon``). Per block the queue owns the repair sequence numbers
issued and sent, and the send times of the last ``holdoff`` seconds (repairs that may still
be on their way). It issues only what is not already covered: repairs beyond the receiver's
horizon that are queued or in flight count against its need, so equivalent NAKs from many
receivers cost one repair. After the first pass a lost repair costs a whole retry round, so
there it adds spares (1 + 10% of what was asked, never past the block's k). Blocks are served
lowest first. Sequence numbers grow without bound; ``Geometry.repair_symbol`` says what each
carries. It has no deadline of its own: what it holds is sent as fast as the pacer allows.
"""

from __future__ import annotations

import heapq
from collections import deque

from mcast.geometry import Geometry


class RepairQueue:
    def __init__(self, geometry: Geometry, *, holdoff: float) -> None:
        self.geometry = geometry
        self.holdoff = holdoff  # repairs sent this recently may still be on their way
        n = geometry.block_count
        self._issued = [0] * n  # repair sequence numbers handed out per block
        self._sent = [0] * n  # of those, how many went out
        self._recent: dict[int, deque[float]] = {}  # block -> send times within holdoff
        self._heap: list[int] = []  # blocks that owe repairs
        self._in_heap: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self._heap)

    def issued(self, b: int) -> int:
        return self._issued[b]

    def owed(self, b: int) -> int:
        """Repairs issued for block ``b`` and not sent yet."""
        return self._issued[b] - self._sent[b]

    def request(self, b: int, need: int, horizon: int, now: float, *, spares: bool) -> int:
        """A NAK entry for block ``b`` (already sent once); returns the repairs it added."""
        g = self.geometry
        need = min(need, g.k(b))
        horizon = min(horizon, self._issued[b])
        recent = self._recent.get(b)
        if recent:
            cutoff = now - self.holdoff
            while recent and recent[0] < cutoff:
                recent.popleft()
        in_flight = self._issued[b] - self._sent[b] + (len(recent) if recent else 0)
        extra = need - min(self._issued[b] - horizon, in_flight)
        if extra > 0 and spares:  # after the pass a lost repair costs a retry round
            extra = min(g.k(b), extra + 1 + extra // 10)
        if extra <= 0:
            return 0
        self._issued[b] += extra
        if b not in self._in_heap:
            self._in_heap.add(b)
            heapq.heappush(self._heap, b)
        return extra

    def pop(self, now: float) -> tuple[int, int]:
        """The next repair to send, as (block, sequence number); the queue must not be empty."""
        b = self._heap[0]
        seq = self._sent[b]
        self._sent[b] += 1
        if self._sent[b] >= self._issued[b]:
            heapq.heappop(self._heap)
            self._in_heap.discard(b)
        self._recent.setdefault(b, deque()).append(now)
        return b, seq
