"""Bandwidth protection (``mcast send --yield``): LEDBAT (RFC 6817) for a paced multicast stream.

A yielding session backs off when other traffic needs the link, judged by delay: when the
bottleneck's queue grows, the one-way delay of what the sender sends grows with it, long
before anything is lost. Two sans-I/O parts:

- :class:`DelayMeter` (each receiver): one-way delay samples of the sender's announces, whose
  ``seq`` is the sender's clock in microseconds (:class:`mcast.freshness.Counter`), taken
  against the receiver's own clock. The two clocks are unrelated, so a sample is the true
  delay plus an unknown constant offset; the *base delay* (the least sample over the last
  ``BASE_HISTORY`` minutes, kept per minute as RFC 6817 keeps it, so that clock drift ages
  out) carries the same offset, and the *queueing delay*, current minus base, does not. The
  current delay is the least of the last ``CURRENT_FILTER`` samples: a sample held up by the
  receiver's own scheduling is only ever late, never early. The receiver reports the queueing
  delay in its STATUS (``qdelay_us``).
- :class:`DelayController` (the sender): takes the worst queueing delay any active receiver
  reported in the last ``stale_s`` and steers the send rate towards keeping it at ``target``:
  ``off_target = (target - qdelay) / target`` (at most 1, at least -1), and the rate moves by
  ``gain * off_target * ceiling`` per second, between a floor (a share of the ceiling, never
  zero: a session that yields still completes) and the ceiling (the configured cap). With no
  fresh report it holds its rate. It counts the time it spent below ``BACKED_OFF`` of the
  ceiling.

What a report can do: a receiver holding the session key may report any delay, and the worst
one steers; clamped by ``off_target``'s bounds, the most it can do is hold the session at its
floor, which still completes. Replayed announces and statuses are dropped by the replay
guards before they reach either part (their ``seq`` is not newer).
"""

from __future__ import annotations

from collections import deque

BASE_HISTORY = 10  # minutes of base delay kept (RFC 6817 BASE_HISTORY)
BASE_BUCKET_S = 60.0
CURRENT_FILTER = 4  # samples: the current delay is the least of the last this many
MAX_QDELAY_US = 2**32 - 1  # what a STATUS can carry
BACKED_OFF = 0.9  # a rate below this share of the ceiling counts as backed off


class DelayMeter:
    """One-way delay samples in, queueing delay (current minus base) out; microseconds."""

    def __init__(
        self,
        *,
        base_history: int = BASE_HISTORY,
        bucket_s: float = BASE_BUCKET_S,
        current_filter: int = CURRENT_FILTER,
    ) -> None:
        self.bucket_s = bucket_s
        self._base: deque[tuple[int, int]] = deque(maxlen=base_history)  # (bucket, least)
        self._current: deque[int] = deque(maxlen=current_filter)
        self.samples = 0

    def sample(self, sent_us: int, now: float) -> None:
        """An announce stamped ``sent_us`` (the sender's clock) arrived at ``now`` (ours)."""
        delay = round(now * 1_000_000) - sent_us  # plus an unknown, constant offset
        bucket = int(now // self.bucket_s)
        if self._base and self._base[-1][0] == bucket:
            if delay < self._base[-1][1]:
                self._base[-1] = (bucket, delay)
        else:
            self._base.append((bucket, delay))
        self._current.append(delay)
        self.samples += 1

    @property
    def base_us(self) -> int | None:
        return min(least for _, least in self._base) if self._base else None

    @property
    def qdelay_us(self) -> int:
        """How much longer the path is now than at its quickest; 0 before any sample."""
        base = self.base_us
        if base is None or not self._current:
            return 0
        return max(0, min(MAX_QDELAY_US, min(self._current) - base))


class DelayController:
    """The sender's rate under ``--yield``: keeps the worst receiver's queueing delay near
    ``target_us`` (see the module docstring)."""

    def __init__(
        self,
        ceiling_bps: float,
        now: float,
        *,
        target_us: int = 10_000,
        gain: float = 0.5,
        floor_share: float = 0.02,
        stale_s: float = 1.0,
        max_step_s: float = 0.1,
        max_off: float = 4.0,
    ) -> None:
        if ceiling_bps <= 0 or target_us <= 0 or not 0 < floor_share <= 1:
            raise ValueError("ceiling and target must be positive, floor_share in (0, 1]")
        self.ceiling = float(ceiling_bps)
        self.floor = self.ceiling * floor_share
        self.target_us = target_us
        self.gain = gain
        self.max_off = max_off  # a delay far over target moves the rate at most this much faster
        self.stale_s = stale_s
        self.max_step_s = max_step_s  # a long gap between updates moves the rate this much
        self.rate = self.ceiling
        self.min_rate = self.rate
        self.backed_off_s = 0.0
        self.worst_us = 0  # the delay the last update steered by
        self.max_reported_us = 0
        self._reports: dict[int, tuple[int, float]] = {}  # receiver -> (qdelay, when)
        self._last = now

    def report(self, receiver_id: int, qdelay_us: int, now: float) -> None:
        qdelay_us = max(0, min(MAX_QDELAY_US, qdelay_us))
        self._reports[receiver_id] = (qdelay_us, now)
        self.max_reported_us = max(self.max_reported_us, qdelay_us)

    def forget(self, receiver_id: int) -> None:
        """A receiver that is done or gone no longer steers."""
        self._reports.pop(receiver_id, None)

    def worst(self, now: float) -> int | None:
        """The worst delay reported in the last ``stale_s``; None if nobody reported."""
        cutoff = now - self.stale_s
        stale = [r for r, (_, when) in self._reports.items() if when < cutoff]
        for r in stale:
            del self._reports[r]
        return max((d for d, _ in self._reports.values()), default=None)

    def update(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed <= 0:
            return
        self._last = now
        if self.rate < BACKED_OFF * self.ceiling:
            self.backed_off_s += elapsed
        worst = self.worst(now)
        if worst is None:
            return  # nobody to listen to: hold
        self.worst_us = worst
        off_target = max(-self.max_off, min(1.0, (self.target_us - worst) / self.target_us))
        step = min(elapsed, self.max_step_s)
        self.rate += self.gain * off_target * self.ceiling * step
        self.rate = max(self.floor, min(self.ceiling, self.rate))
        self.min_rate = min(self.min_rate, self.rate)
