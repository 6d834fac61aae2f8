"""What the receiver tells the sender, and when.

It packs the NAK entries the NAK schedule says are due, ``max_nak_entries`` to a datagram, and
owns three schedules of its own: a SOLICIT every ``solicit_interval`` (jittered by half either
way) while no session is heard; a STATUS every ``status_interval`` while receiving, or at once
when the overrun monitor closes a window that says the sender is too fast (or as often as the
session's announce asks: a yielding sender steers by the queueing delay each STATUS carries);
and the final STATUS, which goes out ``done_status_repeats`` times ``done_status_spacing``
apart when complete (the sender may lose one) and once when failed. A STATUS carries the
verified-unit count, the overrun signals and the queueing delay. Every datagram carries this
receiver's counter (the sender drops one that is not newer: a replay), and every SOLICIT a new
nonce, which ``nonces`` remembers: the receiver joins only a session whose announce echoes one
of them; an announce that echoes none brings the next SOLICIT forward (``solicit_soon``).
Datagrams go to ``send`` in the order they are made; the receiver core reads ``next_solicit``,
``next_status`` or ``final_deadline()`` as its phase selects.

STATUS is multicast, so every receiver hears every other's: in a large group the reports are
spread as RTCP spreads its own (RFC 3550, 6.2 and 6.3.7). ``group`` is the number of
receivers the sender announces; the group as a whole sends at most ``status_rate`` STATUS a
second, so each receiver reports every ``group / status_rate`` seconds when that is longer
than ``status_interval``, its first report after a random part of that interval rather than
at the join, and its final one once, at a random moment within ``final_spread()``, rather
than at once and repeated: ten thousand receivers finishing together must not each hear ten
thousand reports in a burst.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from mcast.freshness import Counter, Nonces
from mcast.overrun import OverrunMonitor
from mcast.wire import Nak, NakEntry, Solicit, Status, encode

_SOON = 0.02  # an announce we cannot trust yet is answered with a SOLICIT within this
_MIN_GAP = 0.05  # and no more often than this, however many such announces arrive
MAX_FINAL_SPREAD = 2.0  # a large group's final reports are spread over at most this long


class ReportStats(Protocol):
    status_sent: int
    naks_sent: int
    nak_entries_sent: int


class ReportConfig(Protocol):
    @property
    def status_interval(self) -> float: ...
    @property
    def solicit_interval(self) -> float: ...
    @property
    def done_status_repeats(self) -> int: ...
    @property
    def done_status_spacing(self) -> float: ...
    @property
    def max_nak_entries(self) -> int: ...
    @property
    def status_rate(self) -> float: ...
    @property
    def rank(self) -> int: ...


class Reports:
    def __init__(
        self,
        now: float,
        *,
        session_id: int | None,
        receiver_id: int,
        package_hash: bytes,
        key: bytes | None,
        rng: random.Random,
        overrun: OverrunMonitor,
        verified: Callable[[], int],
        qdelay: Callable[[], int] | None = None,
        send: Callable[[bytes], None],
        stats: ReportStats,
        config: ReportConfig,
    ) -> None:
        self.session_id = session_id  # no STATUS goes out before one is known
        self._stats = stats
        self._receiver_id = receiver_id
        self._package_hash = package_hash
        self._key = key
        self._rng = rng
        self._overrun = overrun
        self._verified = verified
        self._qdelay = qdelay or (lambda: 0)
        self._send = send
        self._own_interval = self._status_interval = config.status_interval
        self._solicit_interval = config.solicit_interval
        self._final_repeats = config.done_status_repeats
        self._final_spacing = config.done_status_spacing
        self._nak_entries = config.max_nak_entries
        self._rank = config.rank
        self._status_rate = config.status_rate
        self.group = 1  # receivers in the session, as the sender announces them
        self.next_status = now
        self.next_solicit = now
        self._repeats_left = 0
        self._last_solicit = float("-inf")
        self._seq = Counter()
        self.nonces = Nonces(rng)

    # -- while no session is heard ---------------------------------------------------------------
    def solicit(self, now: float) -> None:
        if now >= self.next_solicit:
            sid, rid = self.session_id or 0, self._receiver_id
            msg = Solicit(sid, self._package_hash, rid, self._seq.next(now), self.nonces.new())
            self._send(encode(msg, self._key))
            self._last_solicit = now
            self.next_solicit = now + self._solicit_interval * self._rng.uniform(0.5, 1.5)

    def solicit_soon(self, now: float) -> None:
        """An announce we cannot trust yet (it echoes none of our nonces) was heard: ask
        again within ``_SOON`` rather than at the next interval, but never in a flood."""
        soon = max(now + self._rng.uniform(0, _SOON), self._last_solicit + _MIN_GAP)
        self.next_solicit = min(self.next_solicit, soon)

    # -- while receiving -------------------------------------------------------------------------
    def interval(self) -> float:
        """Seconds between this receiver's STATUS reports, in a group of ``group``."""
        if self._status_rate <= 0:
            return self._status_interval
        return max(self._status_interval, self.group / self._status_rate)

    def final_spread(self) -> float:
        """How long a large group's final reports are spread over (0: sent at once). Large
        means more receivers than ``status_rate`` allows at our own interval: a yielding
        session's faster reports do not make a small group wait to say it is done."""
        interval = self.interval()
        return min(MAX_FINAL_SPREAD, interval) if interval > self._own_interval else 0.0

    def joined(self, session_id: int, now: float) -> None:
        self.session_id = session_id
        interval = self.interval()
        if interval > self._status_interval:  # a large group: first report at random
            self.next_status = now + self._rng.uniform(0.0, interval)
            return
        self.status(now, done=False)
        self.next_status = now + interval

    def asked_every(self, report_ms: int, now: float) -> None:
        """The session's announce asks for a STATUS every ``report_ms`` (0: our own
        interval): a yielding sender steers by the delay each one reports."""
        interval = self._own_interval
        if report_ms:
            interval = min(interval, report_ms / 1000)
        if interval != self._status_interval:
            self._status_interval = interval
            self.next_status = min(self.next_status, now + interval)

    def periodic(self, now: float, *, urgent: bool) -> None:
        if urgent or now >= self.next_status:
            self.status(now, done=False)
            self.next_status = now + self.interval()

    def naks(self, entries: list[NakEntry], now: float) -> None:
        """The NAK entries the schedule says are due, ``max_nak_entries`` to a datagram."""
        if not entries or self.session_id is None:
            return
        n = self._nak_entries
        for i in range(0, len(entries), n):
            chunk = tuple(entries[i : i + n])
            nak = Nak(self.session_id, self._receiver_id, chunk, self._seq.next(now))
            self._send(encode(nak, self._key))
            self._stats.naks_sent += 1
            self._stats.nak_entries_sent += len(chunk)

    # -- after the end ---------------------------------------------------------------------------
    def final(self, now: float, *, done: bool) -> None:
        """The session is over for us: complete (``done``) or failed."""
        spread = self.final_spread()
        if spread:  # a large group: one report, at a random moment of the spread
            self._repeats_left = 1
            self.next_status = now + self._rng.uniform(0.0, spread)
            return
        self.status(now, done=done, failed=not done)
        self._repeats_left = self._final_repeats - 1 if done else 0
        self.next_status = now + self._final_spacing

    def repeat_final(self, now: float, *, done: bool) -> None:
        if self._repeats_left and now >= self.next_status:
            self.status(now, done=done, failed=not done)
            self._repeats_left -= 1
            self.next_status = now + self._final_spacing

    def final_deadline(self) -> float | None:
        return self.next_status if self._repeats_left else None

    def status(self, now: float, done: bool, failed: bool = False) -> None:
        if self.session_id is None:
            return
        o = self._overrun
        msg = Status(
            self.session_id, self._receiver_id, self._verified(), done, failed,
            o.loss_permille, o.socket_drops, o.backlog_pct, self._rank, self._seq.next(now),
            self._qdelay(),
        )  # fmt: skip
        self._send(encode(msg, self._key))
        self._stats.status_sent += 1
