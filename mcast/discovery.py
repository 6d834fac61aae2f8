"""Session discovery rules: which sessions are live on the subnet, and what an agent does.

Every sender announces its session on the subnet's discovery group as well as on its data
group; an agent that needs package H solicits there, listens, and then :func:`decide`\\s:
join the session that sends H, start one if fewer than ``max_sessions`` are live, or wait.

Starting is a claim, not a fact: the would-be master announces its session id for a short
claim period while listening, and :func:`claim_outcome` settles races the same way on every
agent, so that agents asking at the same moment end in one session and the subnet limit
holds: a running session wins over any claim; among claims, the election decides
(:func:`election_key`: a complete copy, then rank, then verified units, then the lower id).

Pure functions of what was heard and ``now``; the sockets are the caller's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum, IntEnum

from mcast.scope import group_in_scope
from mcast.wire import Announce

SESSION_TTL = 1.6  # a session not heard for this long is gone (announces come every 0.5 s)
DATA_PORT = 47000


@dataclass
class Heard:
    announce: Announce
    first_heard: float
    last_heard: float
    fresh: bool = True  # an announce of it echoed one of our nonces: live now, no recording


MAX_UNCONFIRMED = 64  # sessions heard but not yet shown to be live, kept at once


class SessionTable:
    """Live sessions by id, from announces (and END) heard on the discovery group.

    Only sessions shown to be live now count (``fresh``: the caller saw an announce of it
    echo one of its SOLICIT nonces); the others wait, bounded, until they are, so a recording
    of sessions that are over neither fills the subnet's limit nor wins an election."""

    def __init__(self, ttl: float = SESSION_TTL) -> None:
        self.ttl = ttl
        self._sessions: dict[int, Heard] = {}
        self.rejected = 0  # announces not followed (see announce_problem)

    def heard(self, announce: Announce, now: float, *, fresh: bool = True) -> bool:
        """Record an announce; False (and counted in ``rejected``) when it must not be
        followed: a session whose data group is outside the safe scope is no session.
        ``fresh`` says the announce proved it is live (once is enough for a session)."""
        if announce_problem(announce) is not None:
            self.rejected += 1
            return False
        entry = self._sessions.get(announce.session)
        if entry is None:
            if not fresh:
                self._bound_unconfirmed()
            self._sessions[announce.session] = Heard(announce, now, now, fresh)
        else:
            entry.announce, entry.last_heard = announce, now
            entry.fresh = entry.fresh or fresh
        return True

    def _bound_unconfirmed(self) -> None:
        waiting = [h for h in self._sessions.values() if not h.fresh]
        if len(waiting) >= MAX_UNCONFIRMED:
            oldest = min(waiting, key=lambda h: h.last_heard)
            del self._sessions[oldest.announce.session]

    def ended(self, session: int) -> None:
        self._sessions.pop(session, None)

    def is_fresh(self, session: int) -> bool:
        entry = self._sessions.get(session)
        return entry is not None and entry.fresh

    def live(self, now: float) -> list[Heard]:
        for sid in [s for s, h in self._sessions.items() if now - h.last_heard > self.ttl]:
            del self._sessions[sid]
        fresh = (h for h in self._sessions.values() if h.fresh)
        return sorted(fresh, key=lambda h: h.announce.session)

    def get(self, session: int, now: float) -> Heard | None:
        """The live session ``session``, if it is one."""
        return next((h for h in self.live(now) if h.announce.session == session), None)

    def for_package(self, package_hash: bytes, now: float) -> Heard | None:
        """The session to join for ``package_hash``: a running one (the lowest id, should a
        race have left two), else the claim the election will pick."""
        matching = [h for h in self.live(now) if h.announce.package_hash == package_hash]
        running = [h for h in matching if not h.announce.claiming]
        if running:
            return running[0]
        return max(matching, key=lambda h: election_key(h.announce), default=None)


class Rank(IntEnum):
    """What kind of machine would master a session; the election prefers the higher."""

    WIRELESS = 0
    LAPTOP = 1
    WIRED = 2
    PACKAGE_SERVER = 3


def election_key(a: Announce) -> tuple[bool, int, int, int]:
    """The order of would-be masters, the same on every agent: a complete copy (a cache)
    first, then rank, then most verified units, then the lower session id."""
    return (a.complete, a.rank, a.verified_units, -a.session)


def announce_problem(a: Announce) -> str | None:
    """Why an agent must not follow this announce, or None. The decoder already refused
    a bad geometry; what is left is where it points: a forged or broken announce is a
    session nobody joins, never a socket error or a crash further on."""
    if not group_in_scope(a.group):
        return f"data group {a.group!r} is outside the safe multicast scope"
    if not 1 <= a.port <= 65535:
        return f"data port {a.port} out of range"
    return None


class Action(Enum):
    JOIN = "join"
    START = "start"
    WAIT = "wait"  # the subnet is at its session limit


def decide(
    table: SessionTable, package_hash: bytes, max_sessions: int, now: float
) -> tuple[Action, Heard | None]:
    existing = table.for_package(package_hash, now)
    if existing is not None:
        return Action.JOIN, existing
    if len(table.live(now)) < max_sessions:
        return Action.START, None
    return Action.WAIT, None


class Claim(Enum):
    WON = "won"
    JOIN = "join"  # another session sends the same package: join it instead
    WAIT = "wait"  # the subnet's limit is taken by sessions that win over ours


def claim_outcome(
    table: SessionTable, mine: int, package_hash: bytes, max_sessions: int, now: float
) -> tuple[Claim, Heard | None]:
    """Settle a claim the same way on every agent that heard the same announces.

    A running session always beats a claim: its receivers are mid-stream. Among claims the
    election decides (:func:`election_key`), for the package and for the subnet's limit
    alike, so of two claimants that hear each other exactly one defers."""
    live = table.live(now)
    own = next((h for h in live if h.announce.session == mine), None)
    my_key = election_key(own.announce) if own else (False, 0, 0, -mine)

    def beats_us(h: Heard) -> bool:
        return not h.announce.claiming or election_key(h.announce) > my_key

    others = [h for h in live if h.announce.session != mine]
    rivals = [h for h in others if h.announce.package_hash == package_hash and beats_us(h)]
    if rivals:
        return Claim.JOIN, max(rivals, key=lambda h: (not h.announce.claiming,
                                                      election_key(h.announce)))  # fmt: skip
    if sum(1 for h in others if beats_us(h)) >= max_sessions:
        return Claim.WAIT, None
    return Claim.WON, None


def data_channel(package_hash: bytes) -> tuple[str, int]:
    """The data group of a package's session: 239.255.x.y from the hash, never .0/.255 and
    never the discovery group."""
    digest = hashlib.sha256(b"mcast-data-group" + package_hash).digest()
    x = 1 + digest[0] % 76  # 239.255.1-76.y: clear of the discovery group 239.255.77.77
    y = 1 + digest[1] % 254
    return f"239.255.{x}.{y}", DATA_PORT
