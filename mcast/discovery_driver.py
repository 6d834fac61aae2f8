"""The discovery group as one agent sees it: its socket, the live session table, solicits
and claims.

:class:`Discovery` joins the subnet's discovery group, keeps a :class:`SessionTable` of the
announces and ENDs it hears (under the site's discovery key, so every package's sessions
count towards the subnet limit), asks who sends a package (a SOLICIT that senders answer at
once), and claims a session for the claim period before the rules of
:mod:`mcast.discovery` settle the race. The fetch policy and the peer cache both use it.

What it hears counts only once it is shown to be live now: an announce of a session it has
not confirmed makes it SOLICIT that session with a nonce, and the session counts from the
announce that echoes it. Its own claim echoes the nonces of the SOLICITs that ask about it,
so rivals can confirm it in turn. Announces and ENDs not newer than the last from their
session are replays and are dropped (:mod:`mcast.freshness`).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Protocol

import trio

from mcast.discovery import (
    Action,
    Claim,
    Heard,
    Rank,
    SessionTable,
    claim_outcome,
    data_channel,
    decide,
)
from mcast.freshness import Counter, Echoes, Nonces, ReplayGuard
from mcast.sender import SenderConfig
from mcast.udp import Endpoint
from mcast.wire import Announce, BadPacket, End, Solicit, decode_untrusted, encode

CLAIM_PERIOD = 0.3  # a would-be master announces its claim this long before it sends
_CLAIM_BEAT = 0.05
_LISTEN = 0.6  # discovery window: longer than the announce interval
_ASK_GAP = 0.1  # a session not yet confirmed is asked about at most this often


class DiscoverySettings(Protocol):
    """What discovery needs of the fetch settings."""

    @property
    def discovery_group(self) -> str: ...
    @property
    def discovery_port(self) -> int: ...
    @property
    def interface(self) -> str: ...
    @property
    def session_key(self) -> bytes | None: ...
    @property
    def discovery_key(self) -> bytes | None: ...
    @property
    def rank(self) -> Rank: ...
    @property
    def rate_bps(self) -> int: ...


class Discovery:
    """The discovery group as seen by one agent: a live session table, solicits, claims."""

    def __init__(
        self,
        endpoint: Endpoint,
        settings: DiscoverySettings,
        on_solicit: Callable[[Solicit], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self.table = SessionTable()
        self.agent_id = random.getrandbits(63)
        # the site's discovery key lets every agent check every announce, whatever package
        self.key = (
            settings.session_key if settings.discovery_key is None else settings.discovery_key
        )
        self._on_solicit = on_solicit
        rng = random.Random()
        self._nonces = Nonces(rng, keep=32)
        self._seq = Counter()
        self._guard = ReplayGuard(max_origins=1024)  # by session id
        self._asked: dict[int, float] = {}  # session -> when we last asked it to confirm
        self._claim: tuple[int, bytes] | None = None  # our claim: session id, package
        self._claim_echoes = Echoes(limit=16)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: DiscoverySettings, on_solicit: Callable[[Solicit], None] | None = None
    ) -> AsyncIterator[Discovery]:
        """Join the discovery group; ``on_solicit`` hears every SOLICIT (a peer cache)."""
        ep = Endpoint.open(settings.discovery_group, settings.discovery_port, settings.interface)
        disc = cls(ep, settings, on_solicit)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(disc._listen)
                yield disc
                nursery.cancel_scope.cancel()
        finally:
            ep.close()

    async def _listen(self) -> None:
        key = self.key
        while True:
            asks: list[bytes] = []
            for data, _addr in await self.endpoint.receive_batch():
                try:
                    msg = decode_untrusted(data, key)
                except BadPacket:
                    continue
                now = trio.current_time()
                if isinstance(msg, Announce | End) and not self._guard.fresh(msg.session, msg.seq):
                    continue  # a replay, or overtaken by a newer one
                if isinstance(msg, Announce):
                    fresh = self._nonces.echoed(msg.echoes)
                    if self.table.heard(msg, now, fresh=fresh) and not fresh:
                        asks.extend(self._ask(msg, now))
                elif isinstance(msg, End):
                    self.table.ended(msg.session)
                elif isinstance(msg, Solicit):
                    self._solicited(msg)
            if asks:
                await self.endpoint.send_many(asks)

    def _ask(self, a: Announce, now: float) -> list[bytes]:
        """A SOLICIT that makes session ``a`` prove it is live, unless it has or was asked
        a moment ago."""
        if self.table.is_fresh(a.session) or now - self._asked.get(a.session, -1.0) < _ASK_GAP:
            return []
        if len(self._asked) >= 1024:
            self._asked.clear()
        self._asked[a.session] = now
        return [self._solicit(a.session, a.package_hash, now)]

    def _solicit(self, session: int, package_hash: bytes, now: float) -> bytes:
        msg = Solicit(session, package_hash, self.agent_id, self._seq.next(now), self._nonces.new())
        return encode(msg, self.key)

    def _solicited(self, msg: Solicit) -> None:
        if self._claim is not None:
            sid, package = self._claim
            if msg.session == sid or (msg.session == 0 and msg.package_hash == package):
                self._claim_echoes.add(msg.nonce)
        if self._on_solicit is not None:
            self._on_solicit(msg)

    async def decide(self, package_hash: bytes, max_sessions: int) -> tuple[Action, Heard | None]:
        """Ask the subnet who sends ``package_hash`` (a solicit makes senders answer at
        once), listen for the discovery window, then decide."""
        await self.endpoint.send_many([self._solicit(0, package_hash, trio.current_time())])
        deadline = trio.current_time() + _LISTEN
        while trio.current_time() < deadline:
            if self.table.for_package(package_hash, trio.current_time()) is not None:
                break
            await trio.sleep(0.02)
        return decide(self.table, package_hash, max_sessions, trio.current_time())

    async def settled(self, session: int) -> bool:
        """Wait for a claim we would join to be settled: True once it sends (its announces
        are no longer claims), False if it ended (it lost) or went quiet. Joining a claim
        that then loses would leave us listening to nothing until the silence timeout."""
        deadline = trio.current_time() + 3 * CLAIM_PERIOD
        while trio.current_time() < deadline:
            heard = self.table.get(session, trio.current_time())
            if heard is None:
                return False
            if not heard.announce.claiming:
                return True
            await trio.sleep(_CLAIM_BEAT / 2)
        return False

    async def claim(
        self,
        package_hash: bytes,
        max_sessions: int,
        *,
        complete: bool = False,
        verified_units: int = 0,
    ) -> tuple[Claim, int]:
        """Announce a would-be session for the claim period, with what the election weighs
        (a complete copy, our rank, our verified units), then settle the race."""
        sid = random.getrandbits(63) | 1
        s = self.settings
        group, port = data_channel(package_hash)
        started = trio.current_time()
        beat = Announce(sid, package_hash, self.agent_id, SenderConfig.packet_size,
                        SenderConfig.units_per_block, SenderConfig.parity_ratio_pct, s.rate_bps,
                        group, port, 0, False, 0, 0, claiming=True, complete=complete,
                        rank=s.rank, verified_units=verified_units)  # fmt: skip
        self.table.heard(beat, started)
        self._claim = (sid, package_hash)
        try:
            while (now := trio.current_time()) - started < CLAIM_PERIOD:
                echoed = replace(beat, seq=self._seq.next(now), echoes=self._claim_echoes.take())
                await self.endpoint.send_many([encode(echoed, self.key)])
                await trio.sleep(_CLAIM_BEAT)
        finally:
            self._claim = None
        now = trio.current_time()
        outcome, _ = claim_outcome(self.table, sid, package_hash, max_sessions, now)
        if outcome is not Claim.WON:
            end = End(sid, "claim lost", self._seq.next(now))
            await self.endpoint.send_many([encode(end, self.key)])
            self.table.ended(sid)
        return outcome, sid
