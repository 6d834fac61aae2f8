"""The embedding API: get a package by multicast if the subnet can, else by HTTP.

``await fetch(snapshot, dest, codebases, settings)`` is step 5 of the seed flow: decide
whether multicast is tried at all (the agent settings' prerequisites), discover a session
that sends the snapshot and join it (a peer cache or an earlier agent may be serving it), or
start one while the subnet is under its session limit (holding its first data ``hold_s`` so
that agents asking together start together), retry multicast after a failed session, then
download over HTTP only the units still missing, from the codebases in speed-test order.
When a joined master dies, the receiver that holds the most verified units takes the session
over and fetches only what it lacks; a session under the slow-session floor is left for
HTTP. Any multicast failure (a socket, an address, a bug) is a failed try noted in the
result, never an exception out of ``fetch``. Every unit is verified against the snapshot;
the result says how many bytes came each way. Cancellation leaves a resumable partial
download, never a corrupt file at the destination.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path

import trio

from mcast.discovery import (
    Action,
    Claim,
    Rank,
    data_channel,
)
from mcast.discovery_driver import Discovery
from mcast.errors import McastError
from mcast.events import FailureKind
from mcast.http_fetch import HttpFetchError, fetch_missing
from mcast.partial import DownloadError, PartialDownload
from mcast.receiver import ReceiverConfig
from mcast.recv_driver import receive
from mcast.send_driver import SendResult, send
from mcast.sender import PackageSource, SenderConfig
from mcast.snapshot import Snapshot
from mcast.source import FileSource, SourceMismatch
from mcast.udp import DEFAULT_INTERFACE, DISCOVERY_GROUP, DISCOVERY_PORT, Channel


@dataclass(frozen=True)
class FetchSettings:
    """What the agent settings and the package info say about how to fetch."""

    multicast_enabled: bool = True
    min_multicast_size: int = 0  # smaller packages go straight to HTTP
    run_from_server: bool = False  # "run from server" tasks never use multicast
    max_sessions_per_subnet: int = 1
    multicast_tries: int = 3  # sessions tried before falling back to HTTP
    time_budget_s: float = 600.0  # for the multicast part; HTTP fallback comes after
    speed_test: bool = True  # SpeedTestCodebases
    session_key: bytes | None = None  # HMAC key from getPackageInfo
    discovery_key: bytes | None = None  # the site's key for the discovery group (None: session_key)
    interface: str = DEFAULT_INTERFACE
    discovery_group: str = DISCOVERY_GROUP
    discovery_port: int = DISCOVERY_PORT
    rate_bps: int = 100_000_000  # for a session this agent starts
    yield_bandwidth: bool = False  # a session this agent starts backs off for other traffic
    serve_after_s: float = 2.0  # a master keeps serving this long after its last receiver
    session_silence_s: float = 1.5  # a master this quiet is dead: a receiver takes over
    rank: Rank = Rank.WIRED  # what this machine weighs in a master election
    hold_s: float = 2.0  # multicastHoldSecs: a new session holds its first data this long
    min_session_bps: float = 64 * 1024  # minSessionKBps: a slower session is left for HTTP
    slow_grace_s: float = 10.0  # ... once it has been that slow for this long
    tls: ssl.SSLContext | None = None  # verifies https codebases (None: the system's CAs)


class Route(Enum):
    JOINED = "joined"  # received from a session another agent runs
    MASTER = "master"  # started the session (served others while downloading)
    HTTP = "http"  # multicast not tried, or it failed: HTTP only
    CACHED = "cached"  # already complete on disk


@dataclass
class FetchProgress:
    phase: str  # "discovering", "multicast", "http", "done"
    bytes_verified: int
    bytes_total: int
    bytes_multicast: int
    bytes_http: int


@dataclass
class FetchResult:
    complete: bool
    route: Route
    bytes_total: int
    bytes_multicast: int
    bytes_http: int
    sessions_tried: int
    codebase: str | None  # the codebase HTTP bytes came from, if any
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why multicast was skipped or failed
    session_id: int | None = None  # the session the package was completed in (joined or led)


class FetchError(McastError):
    """Neither multicast nor any codebase could deliver the package."""


log = logging.getLogger(__name__)

_BACKOFF = 0.2  # random wait before claiming, listening for someone else's session
_WAIT_FOR_SLOT = 0.5


def in_place(snapshot: Snapshot, dest: Path) -> bool:
    """The package is already under ``dest``, every unit matching the snapshot."""
    try:
        source = FileSource(snapshot, Path(dest))
    except SourceMismatch:
        return False
    try:
        for unit in range(snapshot.block_count):
            source.read(*snapshot.block_range(unit))  # hashes each unit against the snapshot
    except SourceMismatch:
        return False
    finally:
        source.close()
    return True


def multicast_allowed(snapshot: Snapshot, s: FetchSettings) -> str | None:
    """None when the seed's multicast prerequisites hold, else why multicast is skipped."""
    if not s.multicast_enabled:
        return "multicast disabled by the agent settings"
    if s.run_from_server:
        return "task runs from the server: no download to the agent"
    if snapshot.total_size < s.min_multicast_size:
        return f"package smaller than the multicast minimum ({s.min_multicast_size:,} bytes)"
    return None


async def fetch(
    snapshot: Snapshot,
    dest: Path,
    codebases: list[str],
    settings: FetchSettings | None = None,
    *,
    progress: Callable[[FetchProgress], None] | None = None,
) -> FetchResult:
    """Fetch ``snapshot`` into ``dest``: multicast first where allowed, HTTP for the rest."""
    s = settings or FetchSettings()
    result = FetchResult(False, Route.HTTP, snapshot.total_size, 0, 0, 0, None)
    if in_place(snapshot, dest):
        result.complete, result.route = True, Route.CACHED
        result.files = [Path(dest) / f.path for f in snapshot.files]
        return result
    part = PartialDownload.open(snapshot, dest)
    report = _Reporter(part, result, progress)
    try:
        if part.complete:
            result.route = Route.CACHED
        else:
            skip = multicast_allowed(snapshot, s)
            if skip is None:
                with trio.move_on_after(s.time_budget_s) as budget, _failed_try(result):
                    await _multicast(snapshot, part, codebases, s, result, report)
                if budget.cancelled_caught:
                    result.notes.append(f"multicast time budget of {s.time_budget_s:g}s ran out")
            else:
                result.notes.append(skip)
            if not part.complete:
                report.phase = "http"
                try:
                    http = await fetch_missing(
                        snapshot, part, codebases, speed_test=s.speed_test,
                        progress=report.http_bytes, verify=s.tls,
                    )  # fmt: skip
                except HttpFetchError as exc:
                    raise FetchError(str(exc)) from exc
                result.bytes_http += http.bytes_http
                result.codebase = http.codebase_used
        result.files = part.finish()
    except BaseException:
        part.checkpoint()  # cancelled or failed: what is verified stays, for a resume
        part.close()
        raise
    result.complete = True
    report.phase = "done"
    report()
    return result


_FINAL = (DownloadError, FetchError)  # HTTP cannot make these good: the disk, the codebases


@contextmanager
def _failed_try(result: FetchResult) -> Iterator[None]:
    """Whatever else goes wrong with multicast (a socket that cannot be opened, an address
    the safety rules refuse, a bug) is a failed try: noted, logged, and HTTP takes over."""
    try:
        with _plain_errors():
            yield
    except Exception as exc:
        leaves = list(_leaves(exc)) if isinstance(exc, BaseExceptionGroup) else [exc]
        if any(isinstance(e, _FINAL) for e in leaves):
            raise
        log.warning("multicast failed, falling back to HTTP", exc_info=exc)
        why = "; ".join(f"{type(e).__name__}: {e}" for e in leaves)
        result.notes.append(f"multicast failed: {why}")


@contextmanager
def _plain_errors() -> Iterator[None]:
    """Raise a lone failure from inside the nurseries as itself, not as an exception group,
    so callers can catch FetchError or DownloadError."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1 and not isinstance(leaves[0], trio.Cancelled):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


class _Reporter:
    def __init__(
        self,
        part: PartialDownload,
        result: FetchResult,
        progress: Callable[[FetchProgress], None] | None,
    ) -> None:
        self.part, self.result, self.progress = part, result, progress
        self.phase = "discovering"

    def __call__(self) -> None:
        self._emit(self.phase, 0)

    def http_bytes(self, so_far: int) -> None:
        # a master's HTTP download is its session's source: it stays in the "master" phase
        self._emit("master" if self.phase == "master" else "http", so_far)

    def _emit(self, phase: str, http_so_far: int) -> None:
        if self.progress is not None:
            r = self.result
            verified = min(r.bytes_total, sum(self.part.verified) * self.part.snapshot.block_size)
            self.progress(FetchProgress(phase, verified, r.bytes_total, r.bytes_multicast,
                                        r.bytes_http + http_so_far))  # fmt: skip


async def _multicast(
    snapshot: Snapshot,
    part: PartialDownload,
    codebases: list[str],
    s: FetchSettings,
    result: FetchResult,
    report: _Reporter,
) -> None:
    failed_tries, heir = 0, False
    async with Discovery.open(s) as disc:
        while not part.complete and (heir or failed_tries < s.multicast_tries):
            if heir:  # our master died and we hold the most: claim at once, no back-off
                heir = False
                outcome, sid = await disc.claim(snapshot.package_hash, s.max_sessions_per_subnet,
                                                verified_units=sum(part.verified))  # fmt: skip
                if outcome is Claim.WON:
                    result.notes.append(f"took over as the session's master ({sid:x})")
                    await _master(snapshot, part, codebases, s, sid, result, report, hold=0.0)
                    return
                continue
            action, heard = await disc.decide(snapshot.package_hash, s.max_sessions_per_subnet)
            if action is Action.WAIT:
                report.phase = "waiting"
                report()
                await trio.sleep(_WAIT_FOR_SLOT)
                continue
            if action is Action.START:
                await trio.sleep(random.uniform(0, _BACKOFF))  # someone may beat us to it
                if disc.table.for_package(snapshot.package_hash, trio.current_time()):
                    continue
                outcome, sid = await disc.claim(snapshot.package_hash, s.max_sessions_per_subnet,
                                                verified_units=sum(part.verified))  # fmt: skip
                if outcome is not Claim.WON:
                    continue
                await _master(snapshot, part, codebases, s, sid, result, report, hold=s.hold_s)
                return
            assert heard is not None
            if heard.announce.claiming and not await disc.settled(heard.announce.session):
                continue  # the claim lost (or its claimant died): decide again, no try spent
            result.sessions_tried += 1
            report.phase = "multicast"
            a = heard.announce
            got = await receive(
                snapshot, part.dest, channel=Channel(a.group, a.port, s.interface),
                key=s.session_key, session_id=a.session, part=part,
                config=_receiver_config(s), progress=lambda p: report(),
            )  # fmt: skip
            result.bytes_multicast += got.bytes_received
            if got.complete:
                result.route, result.session_id = Route.JOINED, a.session
                return
            result.notes.append(f"session {a.session:x} failed: {got.reason}")
            disc.table.ended(a.session)
            if got.failure is FailureKind.SLOW:
                result.notes.append("session under the slow-session floor: HTTP for the rest")
                return
            heir = got.take_over
            moved = got.failure is FailureKind.SILENT and got.bytes_received > 0
            failed_tries += 0 if moved else 1  # a master that died after moving us is no failed try


def _receiver_config(s: FetchSettings) -> ReceiverConfig:
    return ReceiverConfig(
        silence_timeout=s.session_silence_s, min_progress_bytes_per_s=s.min_session_bps,
        slow_grace=s.slow_grace_s, rank=s.rank,
    )  # fmt: skip


async def _master(
    snapshot: Snapshot,
    part: PartialDownload,
    codebases: list[str],
    s: FetchSettings,
    sid: int,
    result: FetchResult,
    report: _Reporter,
    *,
    hold: float,
) -> None:
    result.sessions_tried += 1
    result.session_id = sid
    report.phase = "master"
    await _serve_as_master(snapshot, part, codebases, s, sid, result, report, hold)
    result.route = Route.MASTER


async def _serve_as_master(
    snapshot: Snapshot,
    part: PartialDownload,
    codebases: list[str],
    s: FetchSettings,
    session_id: int,
    result: FetchResult,
    report: _Reporter,
    hold: float,
) -> None:
    """Start the session: stream the package from HTTP into ``part`` and, as blocks of it
    verify, multicast them to whoever joined; return when both are done. The session holds
    its first data ``hold`` seconds (announcing), so agents that ask together start together."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(
            serve_session, snapshot, _PartialSource(part), s, session_id, key=s.session_key,
            hold=hold, available=part.verified_prefix,
        ))  # fmt: skip
        if not part.complete:
            try:
                http = await fetch_missing(snapshot, part, codebases, speed_test=s.speed_test,
                                           progress=report.http_bytes, verify=s.tls)  # fmt: skip
            except HttpFetchError as exc:
                nursery.cancel_scope.cancel()
                raise FetchError(f"as the session's master: {exc}") from exc
            result.bytes_http += http.bytes_http
            result.codebase = http.codebase_used


async def serve_session(
    snapshot: Snapshot,
    source: Path | PackageSource,
    s: FetchSettings,
    session_id: int,
    *,
    key: bytes | None,
    hold: float,
    available: Callable[[], int] | None = None,
) -> SendResult:
    """Master a won session of ``snapshot`` from ``source``: on the package's data channel,
    announced on the subnet's discovery group under the discovery key, holding its first data
    ``hold`` seconds, with this agent's rank, rate and linger. A fetch master streams its own
    download (``available``); a peer cache serves from disk."""
    group, port = data_channel(snapshot.package_hash)
    config = SenderConfig(group=group, port=port, rate_bps=s.rate_bps, linger=s.serve_after_s,
                          hold_s=hold, rank=s.rank,
                          yield_bandwidth=s.yield_bandwidth)  # fmt: skip
    return await send(
        snapshot, source, channel=Channel(group, port, s.interface), key=key, config=config,
        session_id=session_id, discovery=Channel(s.discovery_group, s.discovery_port, s.interface),
        discovery_key=s.discovery_key, available=available,
    )  # fmt: skip


class _PartialSource:
    """A master's package source: the units of its own download verified so far."""

    def __init__(self, part: PartialDownload) -> None:
        self._part = part

    def read(self, offset: int, length: int) -> bytes:
        return self._part.read(offset, length)
