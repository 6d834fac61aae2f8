"""The erasure codec, behind one small interface so that it can be swapped.

Reed-Solomon over GF(2^16) from ``reed-solomon-leopard`` (O(n log n), up to 32,768 shards).
Parity shard j of a block depends on the parity count it was encoded with, so a session fixes
that count per block (see :class:`mcast.geometry.Geometry`) and the sender encodes a block's
parity once, on first demand. Shards must all be ``packet_size`` bytes (even); short source
shards are zero-padded by :func:`pad`.
"""

from __future__ import annotations

import reed_solomon_leopard as _rs

from mcast.errors import McastError


class FecError(McastError):
    """Not enough shards, or shards of the wrong size, to decode a block."""


def pad(shard: bytes, size: int) -> bytes:
    return shard if len(shard) == size else shard + bytes(size - len(shard))


def encode(source: list[bytes], parity_count: int) -> list[bytes]:
    """All ``parity_count`` parity shards of a block of equal-sized source shards."""
    return list(_rs.encode(source, parity_count))


def decode(
    k: int, parity_count: int, source: dict[int, bytes], parity: dict[int, bytes]
) -> dict[int, bytes]:
    """The missing source shards, from any k of the source and parity shards."""
    if len(source) + len(parity) < k:
        raise FecError(f"need {k} shards, have {len(source) + len(parity)}")
    if len(source) >= k:
        return {}
    try:
        return dict(_rs.decode(k, parity_count, source, parity))
    except ValueError as exc:
        raise FecError(str(exc)) from None
