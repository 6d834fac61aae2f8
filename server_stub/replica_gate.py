"""What replication may cost a package server: bounds against a flood of unknown hashes.

A package server started with an upstream replicates a package on the first request for its
hash (:mod:`server_stub.replica`). Anyone can ask for ``/pkg/<random hash>/content``, so
without bounds every such request would cost a blocking upstream call, a worker thread and a
lock kept forever. :class:`ReplicaGate` owns the bounds:

- **per-hash locks**: one replication of a hash at a time; a lock exists only while a request
  holds or waits for it, so the table holds the hashes in progress and nothing else;
- **a negative cache**: a hash the upstream could not deliver (absent, unreachable, or not
  verifying) answers 404 without an upstream call for ``miss_ttl_s``; at most ``max_misses``
  are remembered, the oldest forgotten first;
- **an upstream budget**: a token bucket of upstream calls (``burst`` at once, ``refill_per_s``
  after that); a request for an unknown hash that finds the bucket empty answers 404 at once
  (and is not remembered as a miss: the upstream was not asked);
- **a thread limit**: replications run in worker threads of their own limiter
  (``upstream_threads``), never more at once, so a flood cannot take the threads the other
  requests need.

The clock is injectable (tests freeze it).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from mcast.snapshot import Snapshot

from .replica import ReplicaError

log = logging.getLogger("server_stub.replica")


@dataclass
class _Lock:
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    users: int = 0


class ReplicaGate:
    """Bounds replication; :meth:`fetch` is the one entry point."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        miss_ttl_s: float = 30.0,
        max_misses: int = 4096,
        burst: int = 8,
        refill_per_s: float = 1.0,
        upstream_threads: int = 3,
    ) -> None:
        self._clock = clock
        self.miss_ttl_s, self.max_misses = miss_ttl_s, max_misses
        self.burst, self.refill_per_s = burst, refill_per_s
        self._tokens, self._stamp = float(burst), clock()
        self._locks: dict[str, _Lock] = {}
        self._misses: OrderedDict[str, float] = OrderedDict()  # hash -> when forgotten
        self.limiter = anyio.CapacityLimiter(upstream_threads)

    @property
    def locks_held(self) -> int:
        """How many hashes have a lock now (those being replicated or waited for)."""
        return len(self._locks)

    @property
    def misses(self) -> int:
        return len(self._misses)

    def missed_recently(self, hash_hex: str) -> bool:
        until = self._misses.get(hash_hex)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._misses[hash_hex]
        return False

    def note_miss(self, hash_hex: str) -> None:
        self._misses.pop(hash_hex, None)
        self._misses[hash_hex] = self._clock() + self.miss_ttl_s
        while len(self._misses) > self.max_misses:
            self._misses.popitem(last=False)

    def take_token(self) -> bool:
        """Spend one upstream call of the budget; False when it is used up for now."""
        now = self._clock()
        self._tokens = min(
            float(self.burst), self._tokens + (now - self._stamp) * self.refill_per_s
        )
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    @asynccontextmanager
    async def _lock(self, hash_hex: str) -> AsyncIterator[None]:
        entry = self._locks.setdefault(hash_hex, _Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[hash_hex]

    async def fetch(
        self,
        hash_hex: str,
        have: Callable[[], Awaitable[Snapshot | None]],
        replicate: Callable[[], Snapshot],
    ) -> Snapshot | None:
        """The snapshot of ``hash_hex``: ``have()`` if the package is here (checked again
        under the hash's lock), else ``replicate()`` (blocking, run in a limited thread)
        within the bounds; None when it is not to be had now."""
        if self.missed_recently(hash_hex):
            return None
        async with self._lock(hash_hex):
            snap = await have()
            if snap is not None or self.missed_recently(hash_hex):
                return snap
            if not self.take_token():
                log.warning("replication of %s refused: upstream call budget used up", hash_hex)
                return None
            try:
                return await anyio.to_thread.run_sync(replicate, limiter=self.limiter)
            except ReplicaError as exc:
                log.warning("replication of %s failed: %s", hash_hex, exc)
                self.note_miss(hash_hex)
                return None
