"""Decoding shared by the many receivers of one simulation: each answer computed once.

In :class:`mcast.simnet.SimNet` every receiver is handed the very same ``bytes`` object for a
datagram, and parsing it (the tag check included) is a pure function of those bytes and the
key. :class:`SharedDecoder` computes it once and gives every receiver the same result, so all
of them hold one shared payload object instead of a copy each. Only good answers are kept: a
datagram that fails (a forged tag, a garbled body) raises ``BadPacket`` afresh on every call.
The memo is bounded: the last ``keep`` datagrams, enough for the fan-out of one and for
the datagrams a receiver keeps from before its join and takes in when it joins.

:class:`SharedBlockDecoder` does the same for Reed-Solomon decoding. A decode from exactly k
symbols yields the one codeword that passes through them (an MDS code has no other), and it
is remembered with every symbol seen to belong to it. A later decode whose every input symbol
equals the remembered codeword's symbol at that position has that codeword as its answer too,
so the missing source shards are handed out from it; any other input (a symbol never seen, a
forged one) is decoded for real. Answers are therefore exactly what :func:`mcast.fec.decode`
returns.

:class:`SharedUnitDigest` does it for a unit's bytes and SHA-256: receivers that hold the very
same shards of a unit (the shared payload objects; equal ones would do too) get the same
joined bytes and digest, computed once. None of this is used by the real drivers, which
decode each datagram once anyway.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from mcast import fec
from mcast.assembler import join_and_hash
from mcast.wire import Message, decode_shard_untrusted, decode_untrusted

ShardTuple = tuple[int, int, int, int, bytes]
_UNSEEN = object()


class SharedDecoder:
    """Memoizing drop-ins for ``decode_shard_untrusted`` and ``decode_untrusted`` (one key)."""

    def __init__(self, key: bytes | None, *, keep: int = 4096) -> None:
        self.key = key
        self.keep = keep
        self._shards: OrderedDict[bytes, ShardTuple | None] = OrderedDict()
        self._messages: OrderedDict[bytes, Message] = OrderedDict()
        self.computed = 0  # answers computed for real
        self.shared = 0  # answers given from the memo

    def shard(self, data: bytes, key: bytes | None) -> ShardTuple | None:
        if key != self.key:
            return decode_shard_untrusted(data, key)
        memo = self._shards
        result = memo.get(data, _UNSEEN)
        if result is not _UNSEEN:
            self.shared += 1
            return result  # type: ignore[return-value]
        result = decode_shard_untrusted(data, key)  # raises BadPacket: nothing is kept
        self.computed += 1
        memo[data] = result
        if len(memo) > self.keep:
            memo.popitem(last=False)
        return result

    def message(self, data: bytes, key: bytes | None) -> Message:
        if key != self.key:
            return decode_untrusted(data, key)
        memo = self._messages
        msg = memo.get(data)
        if msg is not None:
            self.shared += 1
            return msg  # messages are frozen: sharing one is safe
        msg = decode_untrusted(data, key)
        self.computed += 1
        memo[data] = msg
        if len(memo) > self.keep:
            memo.popitem(last=False)
        return msg


@dataclass
class _Codeword:
    source: list[bytes]  # all k source symbols
    parity: dict[int, bytes] = field(default_factory=dict)  # the parity symbols seen in it


def _same(a: bytes, b: bytes) -> bool:
    return a is b or a == b


class SharedBlockDecoder:
    """A memoizing drop-in for :func:`mcast.fec.decode` (see the module's docstring)."""

    def __init__(self, *, keep: int = 64) -> None:
        self.keep = keep  # codewords remembered (blocks), oldest forgotten first
        self._codewords: OrderedDict[tuple[int, int, bytes], _Codeword] = OrderedDict()
        self.computed = 0
        self.shared = 0

    def __call__(
        self, k: int, parity_count: int, source: dict[int, bytes], parity: dict[int, bytes]
    ) -> dict[int, bytes]:
        if len(source) + len(parity) < k or len(source) >= k:
            return fec.decode(k, parity_count, source, parity)  # raises, or nothing to do
        word = self._find(k, parity_count, source, parity)
        if word is not None:
            self.shared += 1
            return {i: word.source[i] for i in range(k) if i not in source}
        recovered = fec.decode(k, parity_count, source, parity)
        self.computed += 1
        if len(source) + len(parity) == k and len(recovered) + len(source) == k:
            self._learn(k, parity_count, source, parity, recovered)
        return recovered

    def _lookup(self, k: int, parity_count: int, first: bytes) -> _Codeword | None:
        return self._codewords.get((k, parity_count, first))

    def _find(
        self, k: int, parity_count: int, source: dict[int, bytes], parity: dict[int, bytes]
    ) -> _Codeword | None:
        word = None
        if 0 in source:
            word = self._lookup(k, parity_count, source[0])
        else:  # the first source symbol is missing: try each codeword (there are few)
            for (kk, pc, _), w in self._codewords.items():
                if (kk, pc) == (k, parity_count) and self._matches(w, source, parity):
                    return w
            return None
        if word is None or not self._matches(word, source, parity):
            return None
        return word

    @staticmethod
    def _matches(word: _Codeword, source: dict[int, bytes], parity: dict[int, bytes]) -> bool:
        ws, wp = word.source, word.parity
        if [ws[i] for i in source] != list(source.values()):  # "is", else ==, element-wise
            return False
        for j, p in parity.items():
            known = wp.get(j)
            if known is None or not _same(known, p):
                return False
        return True

    def _learn(
        self,
        k: int,
        parity_count: int,
        source: dict[int, bytes],
        parity: dict[int, bytes],
        recovered: dict[int, bytes],
    ) -> None:
        """k symbols decoded: the codeword through them is known, with its parity symbols."""
        full = [source[i] if i in source else recovered[i] for i in range(k)]
        key = (k, parity_count, full[0])
        word = self._codewords.get(key)
        if word is None or not all(_same(a, b) for a, b in zip(word.source, full, strict=True)):
            word = self._codewords[key] = _Codeword(full)
            if len(self._codewords) > self.keep:
                self._codewords.popitem(last=False)
        word.parity.update(parity)


class SharedUnitDigest:
    """A memoizing drop-in for :func:`mcast.assembler.join_and_hash`, ``keep`` units."""

    def __init__(self, *, keep: int = 256) -> None:
        self.keep = keep
        self._units: OrderedDict[tuple[bytes, ...], tuple[bytes, bytes]] = OrderedDict()
        self.computed = 0
        self.shared = 0

    def __call__(self, parts: list[bytes]) -> tuple[bytes, bytes]:
        key = tuple(parts)  # equal only to the same shards, element by element
        memo = self._units
        found = memo.get(key)
        if found is not None:
            self.shared += 1
            return found
        found = memo[key] = join_and_hash(parts)
        self.computed += 1
        if len(memo) > self.keep:
            memo.popitem(last=False)
        return found
