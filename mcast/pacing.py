"""Rates, driven by the caller's clock: the token bucket that paces sends, per-source limits
on feedback, the AIMD controller that sets the send rate from receivers' overrun reports, and
the sender's pacer that joins the last two (its deadline is when the bucket next allows a
send)."""

from __future__ import annotations

from mcast.ledbat import DelayController


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


class RateController:
    """AIMD on receiver reports: cut by ``decrease`` when a receiver says it is overrun,
    at most once per ``interval``; grow by ``increase`` per quiet ``interval`` back towards the
    rate of the last cut, then only by ``probe`` per interval above it, up to the cap.

    Random loss on the wire is not a reason to slow down (parity repairs it); what is: a
    receiver whose own socket dropped datagrams, or first-pass loss above the threshold the
    receivers apply before they report.
    """

    def __init__(
        self,
        max_rate: float,
        now: float,
        *,
        start_rate: float | None = None,
        min_rate: float = 1_000_000.0,
        decrease: float = 0.7,
        increase: float = 1.08,
        probe: float = 1.01,
        interval: float = 0.1,
    ) -> None:
        self.max_rate = max_rate
        self.min_rate = min(min_rate, max_rate)
        self.rate = min(max_rate, start_rate or max_rate)
        self.decrease, self.increase, self.interval = decrease, increase, interval
        self.probe = probe
        self.ceiling = float("inf")  # the rate at the last cut
        self._last_change = now
        self.cuts = 0
        self.measured = 0.0  # what is actually being sent, bits/s (an average over ~interval)
        self._window_start, self._window_bits, self._sent_bits = now, 0.0, 0.0

    def observe(self, sent_bits: float, now: float) -> None:
        """The sender's running total of bits sent; the controller measures the actual rate."""
        self._window_bits += sent_bits - self._sent_bits
        self._sent_bits = sent_bits
        if now - self._window_start >= self.interval:
            self.measured = self._window_bits / (now - self._window_start)
            self._window_start, self._window_bits = now, 0.0

    def congested(self, now: float) -> None:
        if now - self._last_change >= self.interval:
            # cut from what is really sent: a cap far above it would cut nothing
            base = min(self.rate, self.measured) if self.measured else self.rate
            self.ceiling = base
            self.rate = max(self.min_rate, base * self.decrease)
            self._last_change = now
            self.cuts += 1

    def tick(self, now: float) -> None:
        if self.measured and self.rate > 2 * self.measured:
            return  # the rate is not what limits the sender: growing it means nothing
        if self.rate < self.max_rate and now - self._last_change >= self.interval:
            factor = self.increase if self.rate < 0.9 * self.ceiling else self.probe
            self.rate = min(self.max_rate, self.rate * factor)
            self._last_change = now


NO_CAP_BPS = 100_000_000_000  # what "no cap" means: far above any link


class Pacer:
    """The sender's pace: a token bucket in bytes whose rate a ``RateController`` sets.

    A cap of 0 means no cap: the rate starts at ``start_bps`` and finds the receivers' pace;
    a capped session starts at its cap. The rate grows only while it is what holds the sender
    back (``limited``: a send waited for tokens since the last tick), as TCP validates its
    window before growing it.
    """

    def __init__(
        self,
        cap_bps: float,
        start_bps: float,
        burst_bytes: float,
        now: float,
        *,
        yielding: DelayController | None = None,
    ) -> None:
        start = cap_bps or start_bps
        self.control = RateController(cap_bps or NO_CAP_BPS, now, start_rate=start)
        self.yielding = yielding  # --yield: a delay-based limit under the AIMD rate
        self.bucket = TokenBucket(self.rate_bps / 8, burst_bytes, now)
        self.limited = False

    @property
    def rate_bps(self) -> float:
        if self.yielding is None:
            return self.control.rate
        return min(self.control.rate, self.yielding.rate)

    @property
    def cuts(self) -> int:
        return self.control.cuts

    def tick(self, bytes_sent: int, now: float) -> None:
        """The sender's running total of bytes sent, at each timer."""
        self.control.observe(bytes_sent * 8, now)
        self.steer(now)
        if self.limited:  # grow only a rate that is in use (cwnd validation)
            self.control.tick(now)
            self._apply()
            self.limited = False

    def steer(self, now: float) -> None:
        """Move the --yield rate by the delays reported so far (at each timer, and at each
        report: a slow session wakes rarely, and must not steer by old news)."""
        if self.yielding is not None:
            self.yielding.update(now)
            self._apply()

    def congested(self, now: float) -> None:
        self.control.congested(now)
        self._apply()

    def try_send(self, nbytes: int, now: float) -> bool:
        if self.bucket.try_take(nbytes, now):
            return True
        self.limited = True
        return False

    def ready_at(self, nbytes: int) -> float:
        return self.bucket.ready_at(nbytes)

    def _apply(self) -> None:
        self.bucket.rate = self.rate_bps / 8
