"""The sender's table of receivers: who has been heard, how far each is, who is still active.

It owns one entry per receiver id, bounded at ``max_peers``: when full, receivers no longer
active (done, failed, or silent for ``receiver_timeout``) are forgotten to make room, and the
totals they leave behind still count in ``tally()``; when every entry is active, a new
receiver is refused (counted in ``feedback_refused``). A receiver known only from SOLICITs
gets one grace period from its first: a replayed SOLICIT (authentic for every session of the
package) cannot keep a sender alive. ``quiet_at()`` is the table's deadline: when the last
receiver that has not finished times out. It costs O(log n) per datagram heard, not O(n): a
heap of the times receivers were last heard, whose stale entries are dropped as they surface.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from mcast.wire import Status

MAX_PEERS = 65536  # receivers tracked at once; inactive ones are pruned to make room


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
        self, stats: PeerStats, *, receiver_timeout: float, max_peers: int = MAX_PEERS
    ) -> None:
        self.receiver_timeout = receiver_timeout
        self.max_peers = max_peers
        self._stats = stats
        self._peers: dict[int, Peer] = {}
        self._forgotten_done = 0  # pruned receivers, for the totals in tally()
        self._forgotten_lost = 0
        self._latest: list[tuple[float, int]] = []  # (-last_heard, id): a max-heap, lazy

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
        elif not solicit:
            peer.solicit_only = False
            peer.last_heard = now
        elif not peer.solicit_only:
            peer.last_heard = now
        else:
            return peer
        self._note_heard(receiver_id, peer.last_heard)
        return peer

    def _note_heard(self, receiver_id: int, last_heard: float) -> None:
        latest = self._latest
        if len(latest) > 4 * len(self._peers) + 64:  # mostly stale: rebuilt, O(1) amortized
            self._latest = latest = [(-p.last_heard, r) for r, p in self._peers.items()]
            heapq.heapify(latest)
        heapq.heappush(latest, (-last_heard, receiver_id))

    def is_active(self, peer: Peer, now: float) -> bool:
        return not peer.finished and now - peer.last_heard < self.receiver_timeout

    def active(self, now: float) -> int:
        return sum(1 for p in self._peers.values() if self.is_active(p, now))

    def any_active(self, now: float) -> bool:
        return any(self.is_active(p, now) for p in self._peers.values())

    def quiet_at(self) -> float | None:
        """When the last receiver that has not finished times out; None if none is waiting."""
        latest = self._latest
        while latest:
            neg, rid = latest[0]
            peer = self._peers.get(rid)
            if peer is not None and not peer.finished and peer.last_heard == -neg:
                return -neg + self.receiver_timeout
            heapq.heappop(latest)  # forgotten, finished, or heard again since
        return None

    def tally(self) -> tuple[int, int]:
        """Receivers done, and receivers lost (failed or silent), forgotten ones included."""
        done = sum(1 for p in self._peers.values() if p.done)
        lost = len(self._peers) - done + self._forgotten_lost
        return done + self._forgotten_done, lost

    def _prune(self, now: float) -> None:
        for rid in [r for r, p in self._peers.items() if not self.is_active(p, now)]:
            peer = self._peers.pop(rid)
            self._forgotten_done += peer.done
            self._forgotten_lost += not peer.done
