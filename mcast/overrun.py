"""The receiver's overrun signals: what its status reports tell the sender's rate control.

It owns three measures, each judged over windows of ``window`` seconds: first-pass loss (the
share of first-pass shard positions passed in the window that never arrived), the fullest the
driver saw its socket queue, and whether the socket dropped datagrams (SO_RXQ_OVFL) since the
last window. ``poll(now)`` closes a window when it is due and says whether it showed the
sender is too fast, so that a status goes out at once rather than at the next interval.
Random loss alone says nothing about rate; only loss above ``loss_permille`` does.
"""

from __future__ import annotations

_MIN_SAMPLE = 20  # fewer first-pass positions than this in a window: loss is not judged


class OverrunMonitor:
    def __init__(self, now: float, *, window: float, loss_permille: int, backlog: float) -> None:
        self.window = window
        self.loss_threshold = loss_permille  # more first-pass loss than this is reported
        self.backlog_threshold = backlog  # a socket queue fuller than this is reported
        self.loss_permille = 0  # of the last window that had enough to judge
        self.socket_drops = 0  # the driver's cumulative count
        self.backlog_pct = 0  # the fullest the socket queue was in the last window
        self._reported_drops = 0
        self._backlog = 0.0  # the fullest the socket queue was in this window
        self._high = -1  # furthest first-pass shard position seen
        self._window_high = -1
        self._window_received = 0
        self._window_ends = now

    def deadline(self) -> float:
        return self._window_ends

    def note_shard(self, position: int) -> None:
        """A first-pass shard at this position in the whole pass arrived."""
        if self._window_high < 0:
            self._window_high = position - 1  # a late joiner lost nothing before it joined
        self._window_received += 1
        self._high = max(self._high, position)

    def note_backlog(self, fraction: float) -> None:
        self._backlog = max(self._backlog, fraction)

    def note_socket_drops(self, total: int) -> None:
        self.socket_drops = max(self.socket_drops, total)

    def poll(self, now: float) -> bool:
        """Close the window if it is due; True if it says the sender is too fast."""
        if now < self._window_ends:
            return False
        self._window_ends = now + self.window
        return self._close_window()

    def _close_window(self) -> bool:
        expected = self._high - self._window_high
        if expected >= _MIN_SAMPLE:
            lost = max(0, expected - self._window_received)
            self.loss_permille = min(1000, lost * 1000 // expected)
        elif expected <= 0:
            self.loss_permille = 0
        self._window_high, self._window_received = self._high, 0
        drops = self.socket_drops > self._reported_drops
        self._reported_drops = self.socket_drops
        self.backlog_pct = int(self._backlog * 100)
        self._backlog = 0.0
        return (
            drops
            or self.loss_permille > self.loss_threshold
            or self.backlog_pct > self.backlog_threshold * 100
        )
