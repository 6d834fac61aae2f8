"""Who is asking: the server's check of an agent request's credentials.

This module owns the order of the checks and the answer each failure gets (see
``mcast.fleet_auth`` for the signature itself):

1. credentials missing or malformed, or a timestamp outside the allowed skew: 401;
2. a computer with no secret on the server, or a bad signature: 401;
3. a computer whose enrolment is not approved yet (its signature verifies): 403;
4. a (guid, nonce) already seen within the skew window (a replayed request): 401;
5. more requests than the computer's token bucket allows: 429 with ``Retry-After``.

Every 401 carries ``WWW-Authenticate: MCAST-HMAC``. The replay cache holds the nonces of the
last ``2 * skew`` seconds and at most ``max_nonces`` of them; when it is full the oldest are
dropped and every request no newer than them is refused from then on, so a request that
left the cache can never be accepted again.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from mcast.fleet_auth import (
    DEFAULT_SKEW_S,
    SCHEME,
    AuthError,
    Credentials,
    check_skew,
    parse_authorization,
    verify,
)

from .ratelimit import TokenBuckets

MAX_NONCES = 200_000


class Refused(Exception):
    """A request refused before its handler runs; ``status`` and ``headers`` to answer with."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def unauthorized(message: str) -> Refused:
    return Refused(401, message, {"WWW-Authenticate": f'{SCHEME} realm="mcast"'})


@dataclass(frozen=True)
class Secret:
    """A computer's secret as the server stores it, and whether it may be used yet."""

    secret: bytes
    approved: bool


class ReplayCache:
    """(guid, nonce) pairs seen recently; refuses a pair seen before, and anything at or
    before the newest timestamp it had to forget."""

    def __init__(self, window_s: float, max_entries: int = MAX_NONCES) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: set[tuple[str, str]] = set()
        self._order: list[tuple[int, str, str]] = []  # heap by timestamp
        self.floor = -math.inf  # requests at or before this time are refused

    def admit(self, creds: Credentials, now: float) -> bool:
        while self._order and self._order[0][0] < now - self.window_s:
            ts, guid, nonce = heapq.heappop(self._order)
            self._seen.discard((guid, nonce))
        key = (creds.guid, creds.nonce)
        if key in self._seen or creds.ts <= self.floor:
            return False
        self._seen.add(key)
        heapq.heappush(self._order, (creds.ts, creds.guid, creds.nonce))
        while len(self._order) > self.max_entries:
            ts, guid, nonce = heapq.heappop(self._order)
            self._seen.discard((guid, nonce))
            self.floor = max(self.floor, ts)
        return True


class Guard:
    """Checks an agent request: :meth:`credentials` parses the header (before the body is
    read), :meth:`check` returns the authenticated GUID; both raise :class:`Refused`."""

    def __init__(
        self,
        *,
        skew_s: float = DEFAULT_SKEW_S,
        buckets: TokenBuckets | None = None,
        max_nonces: int = MAX_NONCES,
    ) -> None:
        self.skew_s = skew_s
        self.buckets = buckets or TokenBuckets()
        self.replays = ReplayCache(2 * skew_s, max_nonces)

    def credentials(self, header: str | None, now: float) -> Credentials:
        try:
            creds = parse_authorization(header)
            check_skew(creds, now, self.skew_s)
        except AuthError as exc:
            raise unauthorized(str(exc)) from None
        return creds

    def verify(
        self, creds: Credentials, secret: bytes, method: str, target: str, body: bytes
    ) -> None:
        try:
            verify(secret, creds, method, target, body)
        except AuthError as exc:
            raise unauthorized(f"{exc} for computer {creds.guid}") from None

    def admit(self, creds: Credentials, now: float) -> None:
        """Refuse a replay (401), then spend one token of the computer's budget (429)."""
        if not self.replays.admit(creds, now):
            raise unauthorized("replayed request (this nonce was already used)")
        wait = self.buckets.take(creds.guid, now)
        if wait > 0:
            raise Refused(
                429,
                f"too many requests from computer {creds.guid}; retry in {wait:.1f} s",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )

    def check(
        self,
        creds: Credentials,
        stored: Secret | None,
        method: str,
        target: str,
        body: bytes,
        now: float,
    ) -> str:
        """``stored`` is the secret the server holds for ``creds.guid`` (None: none)."""
        if stored is None:
            raise unauthorized(
                f"computer {creds.guid} has no secret on this server "
                f"(`mcast-ns computer add {creds.guid} --secret-file F`, or enrol the agent)"
            )
        self.verify(creds, stored.secret, method, target, body)
        if not stored.approved:
            raise Refused(
                403,
                f"computer {creds.guid} is waiting for approval of its enrolment "
                f"(`mcast-ns computer approve {creds.guid}`)",
            )
        self.admit(creds, now)
        return creds.guid
