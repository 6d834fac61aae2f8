"""The pre-join datagram buffer alone: bounded by count and by bytes, oldest dropped first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mcast.early import MAX_BYTES, EarlyBuffer


def test_the_oldest_make_room_when_the_count_is_reached():
    buf = EarlyBuffer(3)
    for n in range(5):
        buf.keep(bytes([n]) * 10)
    assert [d[0] for d in buf] == [2, 3, 4]
    assert buf.size == 30


def test_the_byte_bound_holds_whatever_the_count():
    buf = EarlyBuffer(1024, max_bytes=100)
    for n in range(10):
        buf.keep(bytes([n]) * 40)
    assert buf.size <= 100 and [d[0] for d in buf] == [8, 9]


def test_drain_hands_back_everything_in_order_and_empties():
    buf = EarlyBuffer(8)
    for n in range(4):
        buf.keep(bytes([n]))
    assert buf.drain() == [b"\x00", b"\x01", b"\x02", b"\x03"]
    assert len(buf) == 0 and buf.size == 0 and buf.drain() == []


def test_the_default_byte_bound_is_four_mebibytes():
    assert EarlyBuffer(1).max_bytes == MAX_BYTES == 4 * 1024 * 1024


@given(st.integers(1, 20), st.integers(1, 500), st.lists(st.integers(0, 200), max_size=60))
def test_size_is_the_sum_of_what_is_kept_and_within_both_bounds(count, max_bytes, sizes):
    buf = EarlyBuffer(count, max_bytes=max_bytes)
    for n in sizes:
        buf.keep(bytes(n))
        assert buf.size == sum(map(len, buf))
        assert len(buf) <= count and buf.size <= max_bytes
