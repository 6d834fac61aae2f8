"""The sender's shards: a block's source shards read from the package, and its parity.

It owns reading (``PackageSource``: offsets into the concatenated content) and encoding: the
block the first pass is on is held while the pass walks it, and the parity of the last
``cache_blocks`` blocks repaired is kept (least recently used goes first), since repairs for
one block come in bursts. ``repair(b, seq)`` is the payload of repair ``seq`` of block ``b``:
parity first, then the block's source shards, padded to ``packet_size``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from mcast import fec
from mcast.geometry import Geometry


class PackageSource(Protocol):
    """Where the sender reads package bytes (offsets into the concatenated content)."""

    def read(self, offset: int, length: int) -> bytes: ...


class BytesSource:
    """A package held in memory (tests and the simulator)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


class BlockEncoder:
    def __init__(self, source: PackageSource, geometry: Geometry, *, cache_blocks: int) -> None:
        self.geometry = geometry
        self.cache_blocks = cache_blocks
        self._source = source
        self._fresh: tuple[int, list[bytes]] | None = None  # the block the pass is on
        self._parity: OrderedDict[int, list[bytes]] = OrderedDict()
        self.reads = 0  # blocks read from the source
        self.encodes = 0  # blocks whose parity was computed

    def shard(self, b: int, i: int) -> bytes:
        """Source shard ``i`` of block ``b`` for the first pass (unpadded)."""
        if self._fresh is None or self._fresh[0] != b:
            self._fresh = (b, self.source_shards(b))
        return self._fresh[1][i]

    def pass_done(self) -> None:
        """The first pass is over: let go of the block it held."""
        self._fresh = None

    def repair(self, b: int, seq: int) -> bytes:
        kind, index = self.geometry.repair_symbol(b, seq)
        if kind == "parity":
            return self.parity(b)[index]
        # the parity ran out for this block: cycle through the source shards, reading only
        # the one shard (a late joiner may need every one of a block's k: reading the whole
        # block for each would read it k times)
        offset, length = self.geometry.shard_span(b, index)
        return fec.pad(self._source.read(offset, length), self.geometry.packet_size)

    def source_shards(self, b: int) -> list[bytes]:
        g = self.geometry
        units = g.block_units(b)
        start = units.start * g.unit_size
        data = self._source.read(start, sum(g.unit_len(u) for u in units))
        self.reads += 1
        shards = []
        for i in range(g.k(b)):
            offset, length = g.shard_span(b, i)
            shards.append(data[offset - start : offset - start + length])
        return shards

    def parity(self, b: int) -> list[bytes]:
        cached = self._parity.get(b)
        if cached is not None:
            self._parity.move_to_end(b)
            return cached
        size = self.geometry.packet_size
        source = [fec.pad(s, size) for s in self.source_shards(b)]
        parity = fec.encode(source, self.geometry.parity_count(b))
        self.encodes += 1
        self._parity[b] = parity
        if len(self._parity) > self.cache_blocks:
            self._parity.popitem(last=False)
        return parity
