"""Block assembly for the receiver: from shards to hash units verified against the snapshot.

It owns the map of verified units (the only thing that decides completion), the reception
state of every block still incomplete (source shards held, parity held, how far the block's
repairs have been seen), Reed-Solomon decoding once a block holds k symbols, and the check of
every unit against its SHA-256 in the signed snapshot. A unit that fails the check loses its
shards and is asked for again; a decode that yields a unit which fails it drops the block's
parity, since one forged shard poisons a whole decode; how often each unit failed is counted
(``worst_unit``), for the receiver's verify-failure limit. Each verified unit goes out as a
``UnitVerified`` event through ``emit``.

It checks shards against the session's geometry (``fits_source``, ``fits_parity``) before
the receiver core accepts them as progress. It has no timer of its own and no notion of the
session or of the sender's pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from mcast import fec
from mcast.events import Event, UnitVerified
from mcast.geometry import Geometry
from mcast.snapshot import Snapshot

_MAX_HORIZON = 2**32 - 1

BlockDecoder = Callable[[int, int, dict[int, bytes], dict[int, bytes]], dict[int, bytes]]
UnitDigest = Callable[[list[bytes]], tuple[bytes, bytes]]


def join_and_hash(parts: list[bytes]) -> tuple[bytes, bytes]:
    """A unit's bytes from its shards, and their SHA-256."""
    data = b"".join(parts)
    return data, hashlib.sha256(data).digest()


class AssemblyStats(Protocol):
    """The counters the assembler keeps; the receiver's statistics dataclass has them all."""

    bad_packets: int
    wrong_length: int
    duplicates: int
    decodes: int
    decode_failures: int
    units_verified: int
    verify_failures: int


@dataclass(slots=True)
class _Block:
    k: int
    parity_count: int
    shards: dict[int, bytes] = field(default_factory=dict)  # source shards held, unpadded
    held: dict[int, int] = field(default_factory=dict)  # unit -> source shards held of it
    parity: dict[int, bytes] = field(default_factory=dict)  # recovery index -> shard
    on_disk: int = 0  # source shards held only as verified units on disk (after a resume)
    horizon: int = 0  # one past the highest repair sequence number seen

    @property
    def need(self) -> int:
        return max(0, self.k - len(self.shards) - self.on_disk - len(self.parity))


class Assembler:
    def __init__(
        self,
        snapshot: Snapshot,
        stats: AssemblyStats,
        emit: Callable[[Event], None],
        *,
        verified_units: Iterable[int] = (),
        load_unit: Callable[[int], bytes] | None = None,
        decode: BlockDecoder = fec.decode,
        digest: UnitDigest = join_and_hash,
    ) -> None:
        self.snapshot = snapshot
        self._fec_decode = decode  # fec.decode, or one that gives the same answers
        self._digest = digest  # join_and_hash, or one that gives the same answers
        self.geometry: Geometry | None = None
        self._stats = stats
        self._emit = emit
        self._load_unit = load_unit
        self._verified = bytearray(snapshot.block_count)
        for unit in verified_units:
            self._verified[unit] = 1
        self.verified_count = sum(self._verified)
        if self.verified_count and not self.complete and not load_unit:
            raise ValueError("resuming from verified units needs load_unit to read them back")
        self.blocks: dict[int, _Block] = {}
        self._block_done = bytearray()
        self._unit_failures: dict[int, int] = {}  # unit -> times it failed verification
        self._worst: tuple[int, int] = (0, 0)  # (unit, failures) of the unit failed most

    @property
    def complete(self) -> bool:
        return self.verified_count == self.snapshot.block_count

    def worst_unit(self) -> tuple[int, int]:
        """The unit that failed verification most often, and how often (0 if none did)."""
        return self._worst

    def missing_units(self) -> list[int]:
        return [u for u, ok in enumerate(self._verified) if not ok]

    def start(self, geometry: Geometry) -> None:
        """The session's geometry is known: mark the blocks a resume already holds."""
        self.geometry = geometry
        self._block_done = bytearray(geometry.block_count)
        for b in range(geometry.block_count):
            units = geometry.block_units(b)
            held = sum(self._verified[u] for u in units)
            if held == len(units):
                self._block_done[b] = 1
            elif held:
                blk = self._block(b)
                blk.on_disk = sum(geometry.unit_shards(u) for u in units if self._verified[u])

    def clear(self) -> None:
        """The session is over: let go of every shard held."""
        self.blocks.clear()

    # -- what the NAK schedule asks ------------------------------------------------------------
    def done(self, b: int) -> bool:
        return bool(self._block_done[b])

    def need(self, b: int) -> int:
        """Symbols block ``b`` still lacks before it can be decoded."""
        blk = self.blocks.get(b)
        if blk is not None:
            return blk.need
        g = self.geometry
        return 0 if g is None or self._block_done[b] else g.k(b)

    def horizon(self, b: int) -> int:
        blk = self.blocks.get(b)
        return blk.horizon if blk is not None else 0

    def held_bytes(self) -> int:
        """Bytes of source and parity shards held in memory for incomplete blocks."""
        return sum(
            sum(map(len, blk.shards.values())) + sum(map(len, blk.parity.values()))
            for blk in self.blocks.values()
        )

    # -- arrivals --------------------------------------------------------------------------------
    def fits_source(self, b: int, index: int, length: int) -> bool:
        """Whether a DATA shard of this block, index and length can exist; counts it if not."""
        g = self.geometry
        assert g is not None
        if b >= len(self._block_done) or index >= g.k(b):
            self._stats.bad_packets += 1
            return False
        if length != g.shard_len(b, index):
            self._stats.wrong_length += 1
            return False
        return True

    def fits_parity(self, b: int, length: int) -> bool:
        """Whether a PARITY shard of this block and length can exist; counts it if not."""
        g = self.geometry
        assert g is not None
        if b >= g.block_count:
            self._stats.bad_packets += 1
            return False
        if length != g.packet_size:
            self._stats.wrong_length += 1
            return False
        return True

    def add_source(self, b: int, index: int, payload: bytes) -> bool:
        """Source shard ``index`` of block ``b`` (checked against the geometry by the caller);
        False if it was nothing new."""
        if self._block_done[b]:
            self._stats.duplicates += 1
            return False
        return self._accept_source(b, self._block(b), index, payload)

    def add_parity(self, b: int, seq: int, payload: bytes) -> bool:
        """Repair ``seq`` of block ``b``, a full ``packet_size`` payload; False if nothing new."""
        if self._block_done[b]:
            self._stats.duplicates += 1
            return False
        g = self.geometry
        assert g is not None
        blk = self._block(b)
        # capped to what a NAK can carry: a forged seq of 2**32-1 must not make our NAKs
        # unencodable for the sender (which clamps a horizon to what it has issued anyway)
        blk.horizon = max(blk.horizon, min(seq + 1, _MAX_HORIZON))
        kind, index = g.repair_symbol(b, seq)
        if kind == "source":  # a source shard resent as a repair: padded to full size
            return self._accept_source(b, blk, index, payload[: g.shard_len(b, index)])
        if index in blk.parity:
            self._stats.duplicates += 1
            return False
        blk.parity[index] = payload
        return True

    def settle(self, b: int) -> bool:
        """After something new arrived for block ``b``: decode it if it holds enough symbols.
        True once the block is complete (its state is then dropped)."""
        blk = self.blocks.get(b)
        if blk is not None and not self._block_done[b] and blk.need == 0:
            self._decode(b, blk)
        if self._block_done[b]:
            self.blocks.pop(b, None)
            return True
        return False

    def _block(self, b: int) -> _Block:
        blk = self.blocks.get(b)
        if blk is None:
            g = self.geometry
            assert g is not None
            blk = self.blocks[b] = _Block(g.k(b), g.parity_count(b))
        return blk

    def _accept_source(self, b: int, blk: _Block, index: int, payload: bytes) -> bool:
        g = self.geometry
        assert g is not None
        unit = g.shard_unit(b, index)
        if index in blk.shards or self._verified[unit]:
            self._stats.duplicates += 1
            return False
        blk.shards[index] = payload
        held = blk.held[unit] = blk.held.get(unit, 0) + 1
        if held == g.unit_shards(unit):
            self._verify_unit(b, blk, unit)
        return True

    # -- verification and decoding ---------------------------------------------------------------
    def _verify_unit(self, b: int, blk: _Block, unit: int) -> bool:
        g = self.geometry
        assert g is not None
        first = g.unit_first_shard(unit)
        indices = range(first, first + g.unit_shards(unit))
        data, digest = self._digest([blk.shards[i] for i in indices])
        if digest != self.snapshot.block_hashes[unit]:
            self._stats.verify_failures += 1
            count = self._unit_failures[unit] = self._unit_failures.get(unit, 0) + 1
            if count > self._worst[1]:
                self._worst = (unit, count)
            for i in indices:  # forged or corrupt: drop and ask again
                del blk.shards[i]
            blk.held[unit] = 0
            return False
        self._verified[unit] = 1
        self.verified_count += 1
        self._stats.units_verified += 1
        self._emit(UnitVerified(unit, unit * self.snapshot.block_size, data))
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
            recovered = self._fec_decode(blk.k, blk.parity_count, source, blk.parity)
        except fec.FecError:
            self._stats.decode_failures += 1
            blk.parity.clear()
            return
        self._stats.decodes += 1
        for i, shard in recovered.items():
            blk.shards[i] = shard[: g.shard_len(b, i)]
        for i in source.keys() - blk.shards.keys():  # read back from disk
            blk.shards[i] = source[i][: g.shard_len(b, i)]
        bad = [
            u
            for u in g.block_units(b)
            if not self._verified[u] and not self._verify_unit(b, blk, u)
        ]
        if bad:  # a forged shard poisoned the decode: parity is suspect, start the block over
            blk.parity.clear()
            self._stats.decode_failures += 1

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
