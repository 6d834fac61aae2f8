"""When the sender announces its session, and when its END copies go out.

Announces: ``fast`` of them ``fast_spacing`` apart at the start (a receiver that misses one
joins a few milliseconds later) and again as soon as the first pass ends (receivers learn at
once that the tail is passed), then one per ``interval``; a SOLICIT brings the next one
forward to ``min_gap`` after the last, or to ``min_gap / 100`` while more nonces wait to be
echoed than one announce carries: ten thousand receivers asking at once are all answered
within a tenth of a second. END: ``copies`` of
them ``spacing`` apart from the moment the sender closes, since any one may be lost. Each
schedule's ``deadline`` is when its next datagram is due; the sender builds the datagrams.
"""

from __future__ import annotations

from mcast.wire import MAX_ECHOES


class AnnounceSchedule:
    def __init__(
        self,
        now: float,
        *,
        interval: float,
        fast: int = 3,
        fast_spacing: float = 0.01,
        min_gap: float = 0.02,
    ) -> None:
        self.interval = interval
        self.fast = fast
        self.fast_spacing = fast_spacing
        self.min_gap = min_gap
        self.deadline = now
        self._last = float("-inf")
        self._fast_left = fast

    def due(self, now: float) -> bool:
        return now >= self.deadline

    def sent(self, now: float, backlog: int = 0, per_announce: int = MAX_ECHOES) -> None:
        """An announce went out; ``backlog`` nonces still wait to be echoed."""
        self._last = now
        if self._fast_left:
            self._fast_left -= 1
            self.deadline = now + self.fast_spacing
        else:
            self.deadline = now + self.interval
        if backlog:
            self.solicited(backlog, per_announce)

    def solicited(self, backlog: int = 0, per_announce: int = MAX_ECHOES) -> None:
        """Someone asked for an announce: the next one goes out soon, but not in a flood;
        with ``backlog`` nonces waiting, ``per_announce`` to an announce, sooner."""
        gap = self.min_gap / 100 if backlog > per_announce else self.min_gap
        self.deadline = min(self.deadline, self._last + gap)

    def pass_done(self, now: float) -> None:
        self.deadline = now
        self._fast_left = self.fast


class EndSchedule:
    def __init__(self, *, copies: int = 3, spacing: float = 0.05) -> None:
        self.copies = copies
        self.spacing = spacing
        self.deadline = 0.0
        self.left = 0
        self.reason = ""  # what the END says

    def start(self, now: float, reason: str) -> None:
        self.left = self.copies
        self.deadline = now
        self.reason = reason

    def due(self, now: float) -> bool:
        """Whether a copy is due now; if so it counts as sent."""
        if self.left and now >= self.deadline:
            self.left -= 1
            self.deadline = now + self.spacing
            return True
        return False

    def over(self, now: float) -> bool:
        """Every copy has gone out and the last one has had its spacing."""
        return not self.left and now >= self.deadline
