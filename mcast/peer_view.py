"""The other receivers of a session as one receiver hears them: who would take over.

Receivers multicast their STATUS to the session's group, so each hears the others. This part
keeps, per receiver id, the verified units and rank of its last report (bounded: only the
best candidates are kept, a stale one goes first) and names the successor when the master dies: the
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


class PeerView:
    def __init__(self, *, stale_after: float, capacity: int = 32) -> None:
        self.stale_after = stale_after
        self.capacity = capacity
        self._peers: dict[int, _Peer] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def heard(self, msg: Status, now: float) -> None:
        """Keep the receivers that could take over: only the best ``capacity`` of them, so a
        receiver among thousands holds a few entries, not one per peer (a finished peer
        never takes over; a stale one goes first when room is needed)."""
        rid = msg.receiver_id
        if msg.done or msg.failed:
            self._peers.pop(rid, None)
            return
        peer = _Peer(msg.verified_units, msg.rank, now)
        if rid not in self._peers and len(self._peers) >= self.capacity:
            out = min(self._peers, key=lambda r: (now - self._peers[r].heard <= self.stale_after,
                                                  _key(r, self._peers[r])))  # fmt: skip
            if self._fresh(self._peers[out], now) and _key(out, self._peers[out]) > _key(rid, peer):
                return  # every entry kept is alive and better than this one
            del self._peers[out]
        self._peers[rid] = peer

    def _fresh(self, p: _Peer, now: float) -> bool:
        return now - p.heard <= self.stale_after

    def successor(self, me: int, verified: int, rank: int, now: float) -> int:
        """Who takes the session over: the most verified units, then rank, then lower id,
        among this receiver and the others heard lately that are still receiving."""
        best = (verified, rank, -me)
        for rid, p in self._peers.items():
            if not self._fresh(p, now) or rid == me:
                continue
            best = max(best, _key(rid, p))
        return -best[2]


def _key(rid: int, p: _Peer) -> tuple[int, int, int]:
    """The takeover order: most verified units, then rank, then the lower id."""
    return (p.verified, p.rank, -rid)
