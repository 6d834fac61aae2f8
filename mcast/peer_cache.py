"""The peer cache: an agent that holds verified packages serves them to its subnet.

``await serve_cache(lookup, settings)`` listens on the discovery group. When an agent asks
for a package (a SOLICIT) that ``lookup`` says this machine holds, and no session for it is
running, it claims the session as a complete copy, which wins over any agent that would have
to fetch the package over HTTP (:func:`mcast.discovery.election_key`), and serves the package
from disk: the asking agent joins it and nothing crosses the WAN. The session holds its first
data for ``settings.hold_s`` so that agents asking together start together, and ends when its
receivers are done. One session per package at a time; which packages are offered, and for
how long after they ran, is the lookup's policy (the agent's cache).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from mcast.discovery import Claim
from mcast.discovery_driver import Discovery
from mcast.errors import McastError
from mcast.fetch import FetchSettings, serve_session
from mcast.snapshot import Snapshot
from mcast.wire import Solicit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cached:
    """A package this machine holds: its snapshot, where its files are, its data key."""

    snapshot: Snapshot
    root: Path
    session_key: bytes | None


@dataclass
class CacheStats:
    solicits: int = 0
    sessions: int = 0  # sessions this cache won and served
    claims_lost: int = 0
    failures: int = 0  # sessions that ended in an error (a changed file, a socket error)


async def serve_cache(
    lookup: Callable[[bytes], Cached | None],
    settings: FetchSettings,
    *,
    stats: CacheStats | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the packages ``lookup`` finds to whoever asks on the subnet, until cancelled.
    ``task_status.started()`` once the discovery group is joined."""
    st = stats if stats is not None else CacheStats()
    asked_tx, asked_rx = trio.open_memory_channel[bytes](math.inf)

    def on_solicit(msg: Solicit) -> None:
        st.solicits += 1
        asked_tx.send_nowait(msg.package_hash)

    serving: set[bytes] = set()
    async with Discovery.open(settings, on_solicit) as disc, trio.open_nursery() as nursery:
        task_status.started()
        async for package_hash in asked_rx:
            if package_hash in serving:
                continue
            running = disc.table.for_package(package_hash, trio.current_time())
            if running is not None and not running.announce.claiming:
                continue  # a session already sends it: the asker joins that one
            cached = lookup(package_hash)
            if cached is None:
                continue
            serving.add(package_hash)
            nursery.start_soon(_serve_one, disc, cached, settings, st, serving)


async def _serve_one(
    disc: Discovery, cached: Cached, s: FetchSettings, st: CacheStats, serving: set[bytes]
) -> None:
    snap = cached.snapshot
    try:
        outcome, sid = await disc.claim(snap.package_hash, s.max_sessions_per_subnet,
                                        complete=True, verified_units=snap.block_count)  # fmt: skip
        if outcome is not Claim.WON:
            st.claims_lost += 1
            return
        st.sessions += 1
        await serve_session(snap, cached.root, s, sid, key=cached.session_key, hold=s.hold_s)
    except (McastError, OSError) as exc:  # a cached file changed, a socket error: not fatal
        st.failures += 1
        log.warning("peer cache: serving %s failed: %s", snap.package_hash.hex()[:12], exc)
    finally:
        serving.discard(snap.package_hash)
