"""Telling a live message from a recorded one: counters, a replay guard, nonces.

A tag proves who made a datagram (someone holding the key), not when. Three small parts
answer "when" without clocks shared between hosts:

- :class:`Counter`: what an origin (a sender, a receiver) puts in the ``seq`` field of every
  control message it sends. Strictly increasing for as long as the host's monotonic clock
  runs: it never falls below the clock in microseconds, so a core created anew in the same
  process (a fetch's next try, a claim that becomes a session) still counts upwards.
- :class:`ReplayGuard`: what a recipient keeps per origin: the highest ``seq`` accepted. A
  message whose ``seq`` is not higher is a replay (or one overtaken by a newer one, which is
  stale anyway) and is dropped before it changes any state. Bounded: the oldest origin is
  forgotten first.
- :class:`Nonces`: a receiver's recent SOLICIT nonces. A session is live *now* only if an
  ANNOUNCE echoes one of them: a recording of an earlier session cannot.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Iterable

from mcast.wire import MAX_ECHOES

_MAX_U64 = 2**64 - 1


class Counter:
    def __init__(self) -> None:
        self._last = 0

    def next(self, now: float) -> int:
        self._last = min(_MAX_U64, max(self._last + 1, int(now * 1_000_000)))
        return self._last


class ReplayGuard:
    def __init__(self, max_origins: int = 4096) -> None:
        self.max_origins = max_origins
        self._last: OrderedDict[int, int] = OrderedDict()
        self.replays = 0  # messages dropped as not newer than the last from their origin

    def fresh(self, origin: int, seq: int) -> bool:
        """Accept ``seq`` from ``origin`` if it is newer than any accepted before."""
        last = self._last.get(origin)
        if last is not None and seq <= last:
            self.replays += 1
            return False
        if last is None and len(self._last) >= self.max_origins:
            self._last.popitem(last=False)
        self._last[origin] = seq
        self._last.move_to_end(origin)
        return True

    def forget(self, origin: int) -> None:
        self._last.pop(origin, None)


class Nonces:
    """A receiver's last ``keep`` SOLICIT nonces, and whether an announce echoes one."""

    def __init__(self, rng: random.Random, keep: int = 8) -> None:
        self._rng = rng
        self._recent: deque[int] = deque(maxlen=keep)

    def new(self) -> int:
        nonce = self._rng.getrandbits(64) or 1
        self._recent.append(nonce)
        return nonce

    def echoed(self, echoes: Iterable[int]) -> bool:
        echoed = echoes if isinstance(echoes, tuple) else tuple(echoes)
        return any(n in echoed for n in self._recent)  # a few of ours against up to 64


class Echoes:
    """A sender's record of the nonces it was asked with: each is echoed by the next
    ``repeat`` announces (one may be lost), at most ``limit`` per announce, newest first.
    Up to ``backlog`` nonces wait their turn (thousands of receivers ask at once when a
    session starts); ``len()`` is how many are waiting."""

    def __init__(self, limit: int = MAX_ECHOES, repeat: int = 2, backlog: int = 16384) -> None:
        self.limit = limit
        self.repeat = repeat
        self.backlog = max(backlog, limit)
        self._pending: OrderedDict[int, int] = OrderedDict()  # nonce -> announces left

    def add(self, nonce: int) -> None:
        if nonce:
            self._pending[nonce] = self.repeat
            self._pending.move_to_end(nonce)
            while len(self._pending) > self.backlog:
                self._pending.popitem(last=False)

    def take(self) -> tuple[int, ...]:
        """The nonces for the next announce, newest first; each counts as echoed once."""
        out = tuple(reversed(self._pending))[: self.limit]
        for n in out:
            left = self._pending[n] - 1
            if left:
                self._pending[n] = left
            else:
                del self._pending[n]
        return out

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __len__(self) -> int:
        return len(self._pending)
