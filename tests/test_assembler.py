"""The block assembler alone: shards in, verified units out, forgeries dropped and asked again."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mcast.assembler import Assembler
from mcast.encoder import BlockEncoder, BytesSource
from mcast.events import Event, UnitVerified
from mcast.geometry import Geometry
from mcast.receiver import ReceiverStats
from tests.harness import make_snapshot

UNIT = 1024
PACKET = 256  # 4 shards per unit
UPB = 3  # 12 shards per block

DATA = random.Random(7).randbytes(7 * UNIT + 300)  # 8 units, 3 blocks, short last unit
SNAP = make_snapshot(DATA, UNIT)
GEOM = Geometry(len(DATA), UNIT, PACKET, UPB, 50)


def make(verified: tuple[int, ...] = (), load: bool = False):
    events: list[Event] = []
    stats = ReceiverStats()

    def load_unit(u: int) -> bytes:
        return DATA[u * UNIT : (u + 1) * UNIT]

    asm = Assembler(
        SNAP, stats, events.append, verified_units=verified, load_unit=load_unit if load else None
    )
    asm.start(GEOM)
    return asm, stats, events


ENC = BlockEncoder(BytesSource(DATA), GEOM, cache_blocks=8)


def check_events(events: list[Event]) -> list[int]:
    units = []
    for ev in events:
        assert isinstance(ev, UnitVerified)
        assert ev.data == DATA[ev.offset : ev.offset + len(ev.data)]
        assert ev.offset == ev.unit * UNIT
        units.append(ev.unit)
    return units


def test_every_source_shard_once_verifies_every_unit_once():
    asm, stats, events = make()
    for b in range(GEOM.block_count):
        for i in range(GEOM.k(b)):
            assert asm.add_source(b, i, ENC.source_shards(b)[i])
            asm.settle(b)
    assert asm.complete and asm.missing_units() == []
    assert sorted(check_events(events)) == list(range(SNAP.block_count))
    assert stats.units_verified == SNAP.block_count and stats.decodes == 0


def test_a_duplicate_is_nothing_new():
    asm, stats, _ = make()
    shard = ENC.source_shards(0)[0]
    assert asm.add_source(0, 0, shard)
    assert not asm.add_source(0, 0, shard)
    assert stats.duplicates == 1


def test_shards_of_a_completed_block_are_duplicates_and_hold_nothing():
    asm, stats, _ = make()
    for i in range(GEOM.k(0)):
        asm.add_source(0, i, ENC.source_shards(0)[i])
    assert asm.settle(0) and asm.done(0)
    assert not asm.add_source(0, 0, ENC.source_shards(0)[0])
    assert not asm.add_parity(0, 0, ENC.repair(0, 0))
    assert stats.duplicates == 2 and 0 not in asm.blocks and asm.need(0) == 0


def test_a_forged_shard_fails_its_unit_which_is_asked_for_again():
    asm, stats, events = make()
    shards = ENC.source_shards(0)
    asm.add_source(0, 0, bytes(len(shards[0])))  # forged
    for i in (1, 2, 3):
        asm.add_source(0, i, shards[i])
    assert stats.verify_failures == 1 and events == []
    assert asm.need(0) == GEOM.k(0)  # all four shards of the unit were dropped
    for i in range(4):
        assert asm.add_source(0, i, shards[i])
    assert check_events(events) == [0]


def test_a_block_decodes_from_parity_whatever_source_is_missing():
    asm, stats, events = make()
    k = GEOM.k(1)
    kept = [i for i in range(k) if i % 3]  # lose every third shard
    for i in kept:
        asm.add_source(1, i, ENC.source_shards(1)[i])
    lost = k - len(kept)
    assert asm.need(1) == lost
    for seq in range(lost):
        assert asm.add_parity(1, seq, ENC.repair(1, seq))
    assert asm.settle(1)
    assert stats.decodes == 1
    assert sorted(check_events(events)) == list(GEOM.block_units(1))


def test_a_forged_parity_shard_poisons_the_decode_and_the_parity_is_dropped():
    asm, stats, events = make()
    k = GEOM.k(0)
    for i in range(k - 2):
        asm.add_source(0, i, ENC.source_shards(0)[i])
    asm.add_parity(0, 0, ENC.repair(0, 0))
    asm.add_parity(0, 1, bytes(PACKET))  # forged
    assert not asm.settle(0)
    assert stats.decode_failures >= 1 and stats.verify_failures >= 1
    assert asm.blocks[0].parity == {}  # suspect: asked for again
    check_events(events)  # whatever verified is genuine
    assert asm.need(0) > 0


def test_the_horizon_is_capped_to_what_a_nak_can_carry():
    asm, _, _ = make()
    asm.add_parity(0, 2**32 - 1, bytes(PACKET))
    assert asm.horizon(0) == 2**32 - 1
    assert asm.horizon(2) == 0 and asm.need(2) == GEOM.k(2)


def test_shards_that_cannot_exist_are_counted_not_held():
    asm, stats, _ = make()
    assert not asm.fits_source(GEOM.block_count, 0, PACKET)
    assert not asm.fits_source(0, GEOM.k(0), PACKET)
    assert not asm.fits_source(0, 0, PACKET - 1)
    assert not asm.fits_parity(GEOM.block_count, PACKET)
    assert not asm.fits_parity(0, PACKET + 2)
    assert stats.bad_packets == 3 and stats.wrong_length == 2
    last = GEOM.block_count - 1
    assert asm.fits_source(last, GEOM.k(last) - 1, GEOM.shard_span(last, GEOM.k(last) - 1)[1])
    assert asm.blocks == {}


def test_a_resume_counts_units_on_disk_and_decodes_with_them():
    asm, stats, events = make(verified=(3, 5), load=True)  # block 1 holds units 3, 4, 5
    assert asm.verified_count == 2 and asm.missing_units() == [0, 1, 2, 4, 6, 7]
    k = GEOM.k(1)
    assert asm.need(1) == k - 8  # two units of four shards on disk
    assert asm.add_parity(1, 0, ENC.repair(1, 0))  # with only parity for unit 4
    for seq in range(1, 4):
        asm.add_parity(1, seq, ENC.repair(1, seq))
    assert asm.settle(1)
    assert check_events(events) == [4] and stats.decodes == 1


def test_a_resume_needs_a_way_to_read_units_back():
    with pytest.raises(ValueError):
        Assembler(SNAP, ReceiverStats(), lambda e: None, verified_units=(1,))
    everything = range(SNAP.block_count)  # but a complete copy needs nothing read
    assert Assembler(SNAP, ReceiverStats(), lambda e: None, verified_units=everything).complete


def test_clear_lets_go_of_every_shard():
    asm, _, _ = make()
    asm.add_source(0, 0, ENC.source_shards(0)[0])
    asm.add_parity(1, 0, ENC.repair(1, 0))
    assert asm.held_bytes() == len(ENC.source_shards(0)[0]) + PACKET
    asm.clear()
    assert asm.held_bytes() == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    forged=st.sets(st.integers(0, 40), max_size=3),
)
@example(seed=14, forged={0, 12})  # a forged source shard outlives one genuine round
@example(seed=1292294597, forged={7, 14, 16, 17, 29})  # forged parity outlives two
def test_forgeries_never_verify_and_genuine_rounds_complete_the_block(seed, forged):
    """Symbols arrive in any order, some forged: every unit that verifies holds the package's
    bytes. A forged shard is held until its unit or a decode shows it wrong (a genuine copy
    of it is a duplicate until then), so more genuine rounds may be needed, as re-NAKs would
    ask for; one more than there were forgeries always completes the block."""
    rng = random.Random(seed)
    asm, _, events = make()
    b = 0
    k, r = GEOM.k(b), GEOM.parity_count(b)
    symbols = list(range(k + r))  # repair seq: parity first, then source
    rng.shuffle(symbols)
    for n, seq in enumerate(symbols):
        payload = ENC.repair(b, seq)
        if n in forged:
            payload = bytes(len(payload))
        if asm.add_parity(b, seq, payload):
            asm.settle(b)
    for seq in list(range(k + r)) * (len(forged) + 1):  # genuine rounds, in repair order
        if asm.done(b):
            break
        if asm.add_parity(b, seq, ENC.repair(b, seq)):
            asm.settle(b)
    assert asm.done(b)
    assert sorted(check_events(events)) == list(GEOM.block_units(b))
