"""The sender's first pass alone: every shard once, in order, held back to what can be read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mcast.first_pass import FirstPass
from mcast.geometry import Geometry


@given(
    size=st.integers(0, 50_000),
    unit=st.sampled_from([512, 1000, 4096]),
    upb=st.integers(1, 4),
)
def test_the_pass_visits_every_shard_once_in_order(size, unit, upb):
    g = Geometry(size, unit, 256, upb)
    p = FirstPass(g)
    seen, last = [], -1.0
    while p.ready():
        assert p.progress >= last
        last = p.progress
        seen.append(p.advance())
    assert p.done and p.progress == 1.0 and p.first_unsent == g.block_count
    assert seen == [(b, i) for b in range(g.block_count) for i in range(g.k(b))]


def test_an_empty_package_has_nothing_to_pass():
    p = FirstPass(Geometry(0, 4096, 256, 4))
    assert p.done and not p.ready() and p.progress == 1.0


def test_a_streaming_master_sends_only_whole_blocks_it_holds():
    g = Geometry(10 * 1024, 1024, 256, 4)  # 3 blocks: units 0-3, 4-7, 8-9
    p = FirstPass(g)
    p.set_available_units(5)  # block 1 is not whole yet
    sent = []
    while p.ready():
        sent.append(p.advance())
    assert {b for b, _ in sent} == {0} and not p.done and p.first_unsent == 1
    p.set_available_units(9)  # the last block is short: it needs all its units
    while p.ready():
        p.advance()
    assert p.cursor == (2, 0) and not p.done
    p.set_available_units(10)
    while p.ready():
        p.advance()
    assert p.done
