"""Per-computer request budgets: one token bucket per key, in memory, bounded.

A key (a computer GUID) may make ``burst`` requests at once and ``rate`` per second after
that. The default is generous: a fleet checking in, downloading and reporting never comes
near it; a runaway or hostile agent gets 429 with the seconds to wait. At most ``max_keys``
buckets are kept; the least recently used is forgotten first (which only refills it).
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_RATE = 20.0  # requests per second, sustained, per computer
DEFAULT_BURST = 200.0


class TokenBuckets:
    def __init__(
        self, rate: float = DEFAULT_RATE, burst: float = DEFAULT_BURST, max_keys: int = 100_000
    ) -> None:
        if not (rate > 0 and burst >= 1 and max_keys >= 1):
            raise ValueError("rate must be positive, burst and max_keys at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, key: str, now: float) -> float:
        """Spend one token of ``key``'s bucket: 0.0 if there was one, else the seconds until
        there will be (nothing is spent then)."""
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
