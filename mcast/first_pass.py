"""The sender's first pass: every source shard once, in block order.

It owns the cursor (the next block and shard index to send fresh), how far the source can be
read (a master that streams the package from HTTP while it downloads sends a block only once
all of its units are in: ``set_available_units``, which announces also report), and the
rendezvous hold: a new session sends no fresh data until ``hold_until``, so agents that
arrive together start together. Everything after the pass is repair, demand-driven; there is
no second pass.
"""

from __future__ import annotations

from mcast.geometry import Geometry


class FirstPass:
    def __init__(self, geometry: Geometry, *, hold_until: float = 0.0) -> None:
        self.geometry = geometry
        self.cursor = (0, 0)  # next fresh (block, shard index)
        self.available_blocks = geometry.block_count  # blocks the source can read
        self.available_units = geometry.unit_count  # units the source holds verified
        self.done = geometry.block_count == 0
        self.hold_until = hold_until
        self.holding = hold_until > 0

    def end_hold(self, now: float) -> None:
        if self.holding and now >= self.hold_until:
            self.holding = False

    def hold_left(self, now: float) -> float:
        return max(0.0, self.hold_until - now) if self.holding else 0.0

    @property
    def first_unsent(self) -> int:
        """The lowest block not yet sent in full (``block_count`` once the pass is done)."""
        return self.geometry.block_count if self.done else self.cursor[0]

    @property
    def progress(self) -> float:
        if self.done:
            return 1.0
        total = self.geometry.shard_count or 1
        b, i = self.cursor
        return (sum(self.geometry.k(x) for x in range(b)) + i) / total

    def ready(self) -> bool:
        """Whether a fresh shard can be sent now."""
        return not self.holding and not self.done and self.cursor[0] < self.available_blocks

    def set_available_units(self, units: int) -> None:
        """Only the first ``units`` hash units can be read yet (all of them: no limit)."""
        g = self.geometry
        self.available_units = max(0, min(units, g.unit_count))
        whole = units if units >= g.unit_count else units // g.units_per_block
        self.available_blocks = min(g.block_count, whole)

    def advance(self) -> tuple[int, int]:
        """The (block, index) to send next; the cursor moves past it. Needs ``ready()``."""
        b, i = self.cursor
        if i + 1 < self.geometry.k(b):
            self.cursor = (b, i + 1)
        else:
            self.cursor = (b + 1, 0)
            self.done = b + 1 == self.geometry.block_count
        return b, i
