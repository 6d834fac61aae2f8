"""A token bucket, driven by the caller's clock: send pacing and per-source feedback limits."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``rate`` 0 means unlimited."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate < 0 or burst <= 0:
            raise ValueError("rate must be >= 0 and burst > 0")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def try_take(self, amount: float, now: float) -> bool:
        if not self.rate:
            return True
        self._refill(now)
        if self._tokens >= amount:
            self._tokens -= amount
            return True
        return False

    def ready_at(self, amount: float) -> float:
        """The earliest time at which ``amount`` tokens will be available."""
        missing = min(amount, self.burst) - self._tokens
        if not self.rate or missing <= 0:
            return self._stamp
        return self._stamp + missing / self.rate


class SourceLimiter:
    """One token bucket per source address, bounded in number; counts what it refuses."""

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: dict[object, TokenBucket] = {}
        self.refused = 0

    def allow(self, source: object, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._buckets.pop(next(iter(self._buckets)))
            bucket = self._buckets[source] = TokenBucket(self.rate, self.burst, now)
        if bucket.try_take(1, now):
            return True
        self.refused += 1
        return False
