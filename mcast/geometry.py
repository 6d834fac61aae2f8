"""How a package is cut for the wire: hash units, shards (packets) and FEC blocks.

The package is the concatenation of its files. The snapshot cuts it into hash units of
``unit_size`` bytes (the last one shorter); the transport cuts each unit into shards of at most
``packet_size`` bytes (the last shard of a unit shorter), so that a unit is always a whole
number of shards and can be verified on its own. ``units_per_block`` consecutive units form an
FEC block of k shards, protected by ``parity_count(b)`` Reed-Solomon parity shards, each
``packet_size`` bytes (short shards are zero-padded for the codec).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Geometry:
    total_size: int
    unit_size: int
    packet_size: int
    units_per_block: int
    parity_ratio_pct: int = 100
    _k: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)
    _first: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)
    _spu: int = field(default=1, init=False, repr=False, compare=False)  # shards per unit
    _last_unit: int = field(default=0, init=False, repr=False, compare=False)
    _last_shards: int = field(default=0, init=False, repr=False, compare=False)  # of it

    def __post_init__(self) -> None:
        if self.packet_size < 2 or self.packet_size % 2:
            raise ValueError("packet size must be even and positive")
        if self.unit_size < 1 or self.units_per_block < 1 or self.total_size < 0:
            raise ValueError("bad geometry")
        if not 1 <= self.parity_ratio_pct <= 400:
            raise ValueError("parity ratio must be 1..400 percent")
        object.__setattr__(self, "_spu", -(-self.unit_size // self.packet_size))
        last = max(0, self.unit_count - 1)
        object.__setattr__(self, "_last_unit", last)
        object.__setattr__(self, "_last_shards", -(-self.unit_len(last) // self.packet_size))
        ks = []
        for b in range((self.unit_count + self.units_per_block - 1) // self.units_per_block):
            ks.append(sum(self.unit_shards(u) for u in self.block_units(b)))
        object.__setattr__(self, "_k", tuple(ks))
        firsts, total = [], 0
        for k in ks:
            firsts.append(total)
            total += k
        object.__setattr__(self, "_first", tuple(firsts))

    @property
    def shards_per_unit(self) -> int:
        return self._spu

    @property
    def unit_count(self) -> int:
        return -(-self.total_size // self.unit_size)

    @property
    def block_count(self) -> int:
        return len(self._k)

    @property
    def shard_count(self) -> int:
        return sum(self._k)

    def unit_len(self, unit: int) -> int:
        return min(self.unit_size, self.total_size - unit * self.unit_size)

    def unit_shards(self, unit: int) -> int:
        if unit < self._last_unit:
            return self._spu  # every unit but the last is whole
        return -(-self.unit_len(unit) // self.packet_size)

    def block_units(self, block: int) -> range:
        first = block * self.units_per_block
        return range(first, min(first + self.units_per_block, self.unit_count))

    def first_shard(self, block: int) -> int:
        """Position of the block's first source shard in the whole first pass."""
        return self._first[block]

    def k(self, block: int) -> int:
        return self._k[block]

    def parity_count(self, block: int) -> int:
        return max(1, -(-self._k[block] * self.parity_ratio_pct // 100))

    def repair_symbol(self, block: int, seq: int) -> tuple[str, int]:
        """What repair sequence number ``seq`` of ``block`` carries.

        Repairs walk the block's k + R symbols: the R parity shards first, then the k source
        shards (zero-padded), then round again. Any k distinct symbols decode the block, so a
        receiver that keeps hearing repairs always completes, however much it missed.
        """
        r = self.parity_count(block)
        sym = seq % (r + self._k[block])
        return ("parity", sym) if sym < r else ("source", sym - r)

    def shard_unit(self, block: int, index: int) -> int:
        return block * self.units_per_block + index // self._spu

    def unit_first_shard(self, unit: int) -> int:
        return (unit % self.units_per_block) * self._spu

    def shard_len(self, block: int, index: int) -> int:
        """Length of source shard ``index`` of ``block`` (the receiver's hot path needs only
        this; ``shard_span`` adds the offset)."""
        spu, size = self._spu, self.unit_size
        inner = (index % spu) * self.packet_size
        start = (block * self.units_per_block + index // spu) * size
        return min(self.packet_size, size - inner, self.total_size - start - inner)

    def shard_span(self, block: int, index: int) -> tuple[int, int]:
        """Offset in the package and length of source shard ``index`` of ``block``."""
        offset = self.shard_unit(block, index) * self.unit_size
        return offset + (index % self._spu) * self.packet_size, self.shard_len(block, index)
