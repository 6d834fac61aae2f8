"""The other receivers of a session as one receiver hears them: who would take over.

Receivers multicast their STATUS to the session's group, so each hears the others. This part
keeps, per receiver id, the verified units and rank of its last report (bounded: the oldest
entry goes when the table is full) and names the successor when the master dies: the
receiver that holds the most verified units, ties broken by rank, then by the lower id. Every
receiver that heard the same reports names the same one, so exactly one of them claims the
session at once while the others wait for its claim.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcast.wire import Status


@dataclass
class _Peer:
    verified: int
    rank: int
    heard: float
    finished: bool


class PeerView:
    def __init__(self, *, stale_after: float, capacity: int = 1024) -> None:
        self.stale_after = stale_after
        self.capacity = capacity
        self._peers: dict[int, _Peer] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def heard(self, msg: Status, now: float) -> None:
        peer = self._peers.pop(msg.receiver_id, None)  # re-inserted last: newest at the end
        if peer is None and len(self._peers) >= self.capacity:
            del self._peers[next(iter(self._peers))]
        self._peers[msg.receiver_id] = _Peer(msg.verified_units, msg.rank, now,
                                             msg.done or msg.failed)  # fmt: skip

    def successor(self, me: int, verified: int, rank: int, now: float) -> int:
        """Who takes the session over: the most verified units, then rank, then lower id,
        among this receiver and the others heard lately that are still receiving."""
        best = (verified, rank, -me)
        for rid, p in self._peers.items():
            if p.finished or now - p.heard > self.stale_after or rid == me:
                continue
            best = max(best, (p.verified, p.rank, -rid))
        return -best[2]
