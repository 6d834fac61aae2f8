"""The sender's block encoder alone: shards read from the package, parity on demand, cached."""

from __future__ import annotations

import random

from mcast import fec
from mcast.encoder import BlockEncoder, BytesSource
from mcast.geometry import Geometry

DATA = random.Random(3).randbytes(5 * 1024 + 100)
GEOM = Geometry(len(DATA), 1024, 256, 2, 50)  # 3 blocks; the last unit is short


class CountingSource(BytesSource):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        return super().read(offset, length)


def test_source_shards_are_the_package_cut_by_the_geometry():
    enc = BlockEncoder(BytesSource(DATA), GEOM, cache_blocks=2)
    joined = b"".join(b"".join(enc.source_shards(b)) for b in range(GEOM.block_count))
    assert joined == DATA
    for b in range(GEOM.block_count):
        for i, shard in enumerate(enc.source_shards(b)):
            offset, length = GEOM.shard_span(b, i)
            assert shard == DATA[offset : offset + length]


def test_the_pass_reads_each_block_once():
    src = CountingSource(DATA)
    enc = BlockEncoder(src, GEOM, cache_blocks=2)
    shards = [enc.shard(b, i) for b in range(GEOM.block_count) for i in range(GEOM.k(b))]
    assert b"".join(shards) == DATA and src.reads == GEOM.block_count
    enc.pass_done()
    enc.shard(0, 0)
    assert src.reads == GEOM.block_count + 1  # released: read again


def test_repairs_walk_the_parity_then_the_padded_source_then_round_again():
    enc = BlockEncoder(BytesSource(DATA), GEOM, cache_blocks=2)
    b = 2  # the short block
    k, r = GEOM.k(b), GEOM.parity_count(b)
    source = [fec.pad(s, 256) for s in enc.source_shards(b)]
    parity = fec.encode(source, r)
    assert [enc.repair(b, s) for s in range(r)] == parity
    assert [enc.repair(b, r + i) for i in range(k)] == source
    assert enc.repair(b, r + k) == parity[0]
    assert all(len(enc.repair(b, s)) == 256 for s in range(2 * (k + r)))


def test_parity_is_encoded_once_per_block_while_it_stays_in_the_cache():
    enc = BlockEncoder(BytesSource(DATA), GEOM, cache_blocks=2)
    for _ in range(3):
        enc.repair(0, 0)
        enc.repair(1, 0)
    assert enc.encodes == 2
    enc.repair(2, 0)  # evicts block 0, the least recently used
    enc.repair(1, 1)
    assert enc.encodes == 3
    enc.repair(0, 1)
    assert enc.encodes == 4


class ByteCountingSource(BytesSource):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, offset: int, length: int) -> bytes:
        self.bytes_read += length
        return super().read(offset, length)


def test_repairs_of_source_shards_read_each_shard_once_not_the_whole_block_each_time():
    """A late joiner can need all k source shards of a block after its parity ran out: the
    sender must not read the block k times over (it did: 1.6 MB/s of repairs on loopback)."""
    src = ByteCountingSource(DATA)
    enc = BlockEncoder(src, GEOM, cache_blocks=2)
    b = 0
    r, k = GEOM.parity_count(b), GEOM.k(b)
    sources = [enc.repair(b, seq) for seq in range(r, r + k)]  # the source half of the cycle
    assert sources == [fec.pad(s, GEOM.packet_size) for s in BlockEncoder(
        BytesSource(DATA), GEOM, cache_blocks=2).source_shards(b)]  # fmt: skip
    block_bytes = sum(GEOM.unit_len(u) for u in GEOM.block_units(b))
    assert src.bytes_read <= block_bytes  # each shard once; before: k whole blocks
