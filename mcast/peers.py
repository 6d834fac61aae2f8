"""The sender's table of receivers: who has been heard, how far each is, who is still active.

It owns one entry per receiver id, bounded at ``max_peers``: when full, receivers no longer
active (done, failed, or silent for ``receiver_timeout``) are forgotten to make room, and the
totals they leave behind still count in ``tally()``; when every entry is active, a new
receiver is refused (counted in ``feedback_refused``). A receiver known only from SOLICITs
gets one grace period from its first: a replayed SOLICIT (authentic for every session of the
package) cannot keep a sender alive. ``quiet_at()`` is the table's deadline: when the last
receiver that has not finished times out. It costs O(log n) per datagram heard, not O(n): a
heap of the times receivers were last heard, whose stale entries are dropped as they surface.

Gone means unheard for ``timeout()``: ``receiver_timeout``, or in a large group the time a
receiver takes to send ``SILENT_REPORTS`` STATUS when the whole group shares ``status_rate``
STATUS a second (RTCP-style, ``mcast/reports.py``): at 1,000 receivers each reports every
10 s, and is not given up after 5. The group counted is the receivers that sent a STATUS or
a NAK (session-bound, and keyed with a session key), not SOLICITs, which a replay can bring
from any session of the package. Making room needs only ``receiver_timeout`` of silence.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from mcast.wire import Status

MAX_PEERS = 65536  # receivers tracked at once; inactive ones are pruned to make room
SILENT_REPORTS = 3  # a large group's receiver is silent after missing this many reports


class PeerStats(Protocol):
    receivers_heard: int
    feedback_refused: int


@dataclass(slots=True)
class Peer:
    last_heard: float
    verified_units: int = 0
    done: bool = False
    failed: bool = False
    socket_drops: int = 0
    solicit_only: bool = False  # heard only asking for an announce

    def report(self, msg: Status) -> bool:
        """Take in a STATUS; True if its socket dropped datagrams since the last one."""
        self.verified_units = max(self.verified_units, msg.verified_units)
        self.done = self.done or msg.done
        self.failed = msg.failed
        overrun = msg.socket_drops > self.socket_drops
        self.socket_drops = max(self.socket_drops, msg.socket_drops)
        return overrun

    @property
    def finished(self) -> bool:
        return self.done or self.failed


class PeerTable:
    def __init__(
        self,
        stats: PeerStats,
        *,
        receiver_timeout: float,
        status_rate: float = 0.0,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self.receiver_timeout = receiver_timeout
        self.status_rate = status_rate  # the group's STATUS a second (0: no group limit)
        self.max_peers = max_peers
        self._stats = stats
        self._peers: dict[int, Peer] = {}
        self._reporting = 0  # entries heard in a STATUS or NAK, not only in SOLICITs
        self._forgotten_done = 0  # pruned receivers, for the totals in tally()
        self._forgotten_lost = 0
        # (-last_heard, id): max-heaps, lazy, of the reporting and the solicit-only receivers
        self._latest: dict[bool, list[tuple[float, int]]] = {False: [], True: []}

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[int]:
        return iter(self._peers)

    def __contains__(self, receiver_id: object) -> bool:
        return receiver_id in self._peers

    def __getitem__(self, receiver_id: int) -> Peer:
        return self._peers[receiver_id]

    def __repr__(self) -> str:
        return f"PeerTable({self._peers!r})"

    def heard(self, receiver_id: int, now: float, *, solicit: bool = False) -> Peer | None:
        """The receiver's entry, created if new; None when the table is full of active ones."""
        peer = self._peers.get(receiver_id)
        if peer is None:
            if len(self._peers) >= self.max_peers:
                self._prune(now)
                if len(self._peers) >= self.max_peers:
                    self._stats.feedback_refused += 1
                    return None
            peer = self._peers[receiver_id] = Peer(now, solicit_only=solicit)
            self._stats.receivers_heard += 1
            self._reporting += not solicit
        elif not solicit:
            if peer.solicit_only:
                peer.solicit_only = False
                self._reporting += 1
            peer.last_heard = now
        elif not peer.solicit_only:
            peer.last_heard = now
        else:
            return peer
        self._note_heard(receiver_id, peer)
        return peer

    def _note_heard(self, receiver_id: int, peer: Peer) -> None:
        kind = peer.solicit_only
        latest = self._latest[kind]
        if len(latest) > 4 * len(self._peers) + 64:  # mostly stale: rebuilt, O(1) amortized
            latest = [(-p.last_heard, r) for r, p in self._peers.items() if p.solicit_only == kind]
            heapq.heapify(latest)
            self._latest[kind] = latest
        heapq.heappush(latest, (-peer.last_heard, receiver_id))

    def timeout(self) -> float:
        """How long a reporting receiver may go unheard before it counts as gone: in a large
        group, three of its report intervals. Receivers known only from SOLICITs (which replay
        and forge cheaply) neither count in the group nor get more than ``receiver_timeout``."""
        if self.status_rate <= 0:
            return self.receiver_timeout
        return max(self.receiver_timeout, SILENT_REPORTS * self._reporting / self.status_rate)

    def _waiting(self, peer: Peer, now: float, timeout: float) -> bool:
        """Not finished, and heard from within its timeout: the session waits for it."""
        if peer.finished:
            return False
        return now - peer.last_heard < (self.receiver_timeout if peer.solicit_only else timeout)

    def active(self, now: float) -> int:
        timeout = self.timeout()
        return sum(1 for p in self._peers.values() if self._waiting(p, now, timeout))

    def any_active(self, now: float) -> bool:
        timeout = self.timeout()
        return any(self._waiting(p, now, timeout) for p in self._peers.values())

    def quiet_at(self) -> float | None:
        """When the last receiver that has not finished times out; None if none is waiting."""
        ends = []
        for kind, timeout in ((False, self.timeout()), (True, self.receiver_timeout)):
            heard = self._last_waiting(kind)
            if heard is not None:
                ends.append(heard + timeout)
        return max(ends, default=None)

    def _last_waiting(self, kind: bool) -> float | None:
        """When the latest-heard unfinished receiver of this kind was heard."""
        latest = self._latest[kind]
        while latest:
            neg, rid = latest[0]
            peer = self._peers.get(rid)
            if (
                peer is not None
                and not peer.finished
                and peer.solicit_only == kind
                and peer.last_heard == -neg
            ):
                return -neg
            heapq.heappop(latest)  # forgotten, finished, reporting now, or heard again since
        return None

    def tally(self) -> tuple[int, int]:
        """Receivers done, and receivers lost (failed or silent), forgotten ones included."""
        done = sum(1 for p in self._peers.values() if p.done)
        lost = len(self._peers) - done + self._forgotten_lost
        return done + self._forgotten_done, lost

    def _prune(self, now: float) -> None:
        """Make room: forget receivers finished or unheard for ``receiver_timeout``, in a large
        group too (a flood of forged ids must not hold the table for longer)."""
        since = now - self.receiver_timeout
        for rid in [r for r, p in self._peers.items() if p.finished or p.last_heard <= since]:
            peer = self._peers.pop(rid)
            self._reporting -= not peer.solicit_only
            self._forgotten_done += peer.done
            self._forgotten_lost += not peer.done
