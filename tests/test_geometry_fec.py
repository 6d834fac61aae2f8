"""Geometry (units, shards, FEC blocks) and the erasure codec."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcast import fec
from mcast.geometry import Geometry

geometries = st.builds(
    Geometry,
    total_size=st.integers(0, 400_000),
    unit_size=st.sampled_from([1000, 4096, 65536]),
    packet_size=st.sampled_from([2, 100, 256, 1432]),
    units_per_block=st.integers(1, 20),
    parity_ratio_pct=st.integers(1, 200),
)


@settings(max_examples=300, deadline=None)
@given(geometries)
def test_shards_tile_the_package_exactly_and_never_straddle_units(g: Geometry):
    covered = 0
    for b in range(g.block_count):
        for i in range(g.k(b)):
            offset, length = g.shard_span(b, i)
            assert offset == covered
            assert 0 < length <= g.packet_size
            unit = g.shard_unit(b, i)
            assert (
                unit * g.unit_size <= offset
                and offset + length <= unit * g.unit_size + g.unit_len(unit)
            )
            covered += length
    assert covered == g.total_size
    assert g.shard_count == sum(g.k(b) for b in range(g.block_count))


@settings(max_examples=300, deadline=None)
@given(geometries, st.integers(0, 10_000))
def test_repair_sequence_visits_every_symbol_of_a_block(g: Geometry, start: int):
    if not g.block_count:
        return
    b = g.block_count - 1
    n = g.k(b) + g.parity_count(b)
    symbols = {g.repair_symbol(b, seq) for seq in range(start, start + n)}
    assert len(symbols) == n


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError):
        Geometry(100, 64, 3, 1)  # odd packet size: the codec needs even shards
    with pytest.raises(ValueError):
        Geometry(100, 64, 2, 1, parity_ratio_pct=0)


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 60), r=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_any_k_of_k_plus_r_shards_decode_the_block(k: int, r: int, seed: int):
    rnd = random.Random(seed)
    source = [rnd.randbytes(64) for _ in range(k)]
    parity = fec.encode(source, r)
    assert len(parity) == r
    keep = rnd.sample(range(k + r), k)
    have_src = {i: source[i] for i in keep if i < k}
    have_par = {i - k: parity[i - k] for i in keep if i >= k}
    recovered = fec.decode(k, r, have_src, have_par)
    assert {**have_src, **recovered} == dict(enumerate(source))


def test_too_few_shards_is_a_fec_error():
    source = [bytes([i]) * 8 for i in range(4)]
    parity = fec.encode(source, 2)
    with pytest.raises(fec.FecError):
        fec.decode(4, 2, {0: source[0]}, {0: parity[0]})


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(0, 300_000), unit=st.integers(1, 70_000),
    packet=st.integers(1, 800).map(lambda n: 2 * n), upb=st.integers(1, 20),
)  # fmt: skip
def test_shard_len_is_shard_span_length(total: int, unit: int, packet: int, upb: int) -> None:
    """The hot path's shard_len must say exactly what shard_span says, for every shard, and
    both what the cut says: the shards of a unit tile it, each ``packet`` bytes but its last."""
    g = Geometry(total, unit, packet, upb)
    for b in range(g.block_count):
        for i in range(g.k(b)):
            assert g.shard_len(b, i) == g.shard_span(b, i)[1]
    for u in range(g.unit_count):
        b, first = divmod(u, upb)[0], g.unit_first_shard(u)
        spans = [g.shard_span(b, first + n) for n in range(g.unit_shards(u))]
        assert spans[0][0] == u * unit
        assert all(o + n == spans[j + 1][0] for j, (o, n) in enumerate(spans[:-1]))
        assert all(n == packet for _, n in spans[:-1]) and 0 < spans[-1][1] <= packet
        assert spans[-1][0] + spans[-1][1] == u * unit + g.unit_len(u)


@settings(max_examples=200, deadline=None)
@given(total=st.integers(0, 300_000), unit=st.integers(1, 70_000), packet=st.integers(1, 800))
def test_unit_shards_fast_path_is_the_definition(total: int, unit: int, packet: int) -> None:
    g = Geometry(total, unit, 2 * packet, 4)
    for u in range(g.unit_count):
        assert g.unit_shards(u) == -(-g.unit_len(u) // (2 * packet))
