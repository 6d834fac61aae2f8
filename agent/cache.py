"""The agent's package cache as its subnet sees it: the peer cache.

A package the agent downloaded and verified stays in ``STATE/cache/<hash>/``. While the agent
runs as a service (or ``--serve-cache-for`` says so), :meth:`PeerCache.serve` runs
:func:`mcast.peer_cache.serve_cache` with :meth:`PeerCache.lookup`: an agent of the subnet
that asks for a package this agent holds gets it by multicast from this disk instead of over
the WAN. What is offered is the Agent Settings' policy:

- ``peerCacheHours``: a package is offered for this long after it was last used (downloaded
  or run); ``0`` turns the peer cache off;
- ``peerCacheMaxMB``: the offered packages, most recently used first, fit in this much disk;
  those beyond it are not offered, and :meth:`PeerCache.prune` removes them from the disk
  unless a job that has not finished still needs them; it also removes the partial
  downloads no such job needs once they are stale or do not fit under the cap;
- the package's files are all there at their sizes (a cheap check per request); the sender
  re-hashes every unit it reads, so a file changed since it verified ends that session.

:func:`rehash` re-checks every unit of a cached package against its snapshot right before
the package runs (the size check of :func:`cached_snapshot` is only the cheap one).

The peer cache needs the site's discovery key from the policy (it hears solicits with it);
without one it serves nothing. Its sessions use the package's session key from
getPackageInfo, stored with the package.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from mcast.fetch import FetchSettings
from mcast.fleet import AgentSettings
from mcast.peer_cache import Cached, CacheStats, serve_cache
from mcast.snapshot import Snapshot, SnapshotError, parse_snapshot_xml
from mcast.source import FileSource, SourceMismatch

from .config import AgentConfig
from .state import AgentState, CacheEntry

log = logging.getLogger("agent.cache")
MB = 1024 * 1024


def snapshot_path(state: AgentState, package_hash: str) -> Path:
    return state.dir / "cache" / f"{package_hash}.snapshot.xml"


def cached_snapshot(state: AgentState, package_hash: str) -> Snapshot | None:
    """The snapshot of a package complete in the cache, if its files are all there at their
    sizes (the snapshot was verified when the package was downloaded)."""
    if not state.package_complete(package_hash):
        return None
    try:
        snap = parse_snapshot_xml(snapshot_path(state, package_hash).read_bytes())
    except (OSError, SnapshotError):
        return None
    root = state.cache_dir(package_hash)
    for f in snap.files:
        p = root.joinpath(*f.path.split("/"))
        if not p.is_file() or p.stat().st_size != f.size:
            return None
    return snap


def rehash(state: AgentState, package_hash: str) -> str | None:
    """Re-hash every unit of a cached package against its snapshot, right before it runs:
    ``None`` if the files are the package ``package_hash`` names, else what is wrong. The
    snapshot must hash to ``package_hash`` (the hash the signed task names), so a changed
    snapshot file is caught as well as a changed package file. Blocking: it reads the whole
    package."""
    try:
        snap = parse_snapshot_xml(snapshot_path(state, package_hash).read_bytes())
    except (OSError, SnapshotError) as exc:
        return f"cannot read the package's snapshot: {exc}"
    if snap.package_hash_hex != package_hash:
        return f"the cached snapshot is of package {snap.package_hash_hex[:12]}"
    try:
        source = FileSource(snap, state.cache_dir(package_hash))
    except SourceMismatch as exc:
        return str(exc)
    try:
        for unit in range(snap.block_count):
            source.read(*snap.block_range(unit))  # raises at the first unit that differs
    except SourceMismatch as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read the package: {exc.strerror or exc}"
    finally:
        source.close()
    return None


PARTIAL_STALE_HOURS = 24.0  # a partial download no job needs is kept this long at most
_HASH_NAME = re.compile(r"[0-9a-f]{64}")


def _partials(cache: Path, skip: set[str]) -> list[tuple[float, int, str]]:
    """(last written, bytes on disk, hash) of each package directory under ``cache`` not in
    ``skip``: what partial downloads are left."""
    out = []
    try:
        dirs = [d for d in cache.iterdir() if _HASH_NAME.fullmatch(d.name) and d.name not in skip]
    except OSError:
        return []
    for d in dirs:
        newest, size = 0.0, 0
        for path in [d, *d.rglob("*")]:
            try:
                st = path.lstat()
            except OSError:
                continue
            newest = max(newest, st.st_mtime)
            size += st.st_blocks * 512 if path.is_file() else 0
        out.append((newest, size, d.name))
    return out


class PeerCache:
    """What this agent offers its subnet, and the task that serves it."""

    def __init__(
        self,
        state: AgentState,
        config: AgentConfig,
        settings: Callable[[], AgentSettings],
        discovery_key: Callable[[], bytes | None],
        emit: Callable[..., None],
    ) -> None:
        self.state, self.config = state, config
        self._settings, self._discovery_key, self._emit = settings, discovery_key, emit
        self.stats = CacheStats()
        self._changed = trio.Event()

    # -- policy ----------------------------------------------------------------------------
    def offered(self, now: float | None = None) -> list[CacheEntry]:
        """The complete packages the policy lets this agent offer now."""
        s = self._settings()
        if s.peer_cache_hours <= 0:
            return []
        now = time.time() if now is None else now
        return [e for e in self._within_cap(s) if now - e.used <= s.peer_cache_hours * 3600.0]

    def _within_cap(self, s: AgentSettings) -> list[CacheEntry]:
        kept, used = [], 0
        for e in self.state.cache_entries():  # most recently used first
            if used + e.size > s.peer_cache_max_mb * MB:
                continue
            used += e.size
            kept.append(e)
        return kept

    def lookup(self, package_hash: bytes) -> Cached | None:
        """The package to serve for a solicit, if the policy offers it and its files are
        there; for :func:`mcast.peer_cache.serve_cache`."""
        hex_hash = package_hash.hex()
        entry = next((e for e in self.offered() if e.hash == hex_hash), None)
        if entry is None:
            return None
        snap = cached_snapshot(self.state, hex_hash)
        if snap is None or snap.package_hash != package_hash:
            return None
        self._emit("peer-cache", action="offer", hash=hex_hash)
        return Cached(snap, self.state.cache_dir(hex_hash), entry.session_key)

    def prune(self, needed: set[str], now: float | None = None) -> list[str]:
        """Keep the disk under ``peerCacheMaxMB``; returns the hashes removed. Complete
        packages beyond the cap go, least recently used first; then partial downloads (a
        package directory that is not complete) go once they are ``PARTIAL_STALE_HOURS``
        old, or at once, the oldest first, where they would not fit under the cap beside what is
        kept. A package an unfinished job (``needed``) uses is never removed."""
        s = self._settings()
        kept_entries = self._within_cap(s)
        kept = {e.hash for e in kept_entries}
        gone = []
        for e in self.state.cache_entries():
            if e.hash in kept or e.hash in needed:
                continue
            self.remove(e.hash)
            gone.append(e.hash)
            self._emit("peer-cache", action="pruned", hash=e.hash)
        now = time.time() if now is None else now
        used = sum(e.size for e in kept_entries)
        complete = {e.hash for e in self.state.cache_entries()}
        cap = s.peer_cache_max_mb * MB
        partials = _partials(self.state.dir / "cache", complete | needed)
        for mtime, size, h in sorted(partials, reverse=True):  # the newest are kept first
            if now - mtime < PARTIAL_STALE_HOURS * 3600.0 and used + size <= cap:
                used += size
                continue
            self.remove(h)
            gone.append(h)
            self._emit("peer-cache", action="pruned-partial", hash=h)
        return gone

    def remove(self, package_hash: str) -> None:
        """Take a package out of the cache and off the disk."""
        self.state.forget_package(package_hash)  # first: a crash leaves no "complete" claim
        shutil.rmtree(self.state.cache_dir(package_hash), ignore_errors=True)
        snapshot_path(self.state, package_hash).unlink(missing_ok=True)

    # -- serving ---------------------------------------------------------------------------
    def fetch_settings(self) -> FetchSettings | None:
        """The settings :func:`serve_cache` runs with; None without a discovery key."""
        key = self._discovery_key()
        if key is None:
            return None
        s = self._settings()
        return FetchSettings(
            discovery_key=key,
            interface=self.config.interface,
            discovery_group=self.config.discovery_group,
            discovery_port=self.config.discovery_port,
            max_sessions_per_subnet=max(1, s.max_sessions_per_subnet),
            rank=self.config.rank,
            yield_bandwidth=self.config.yield_bandwidth,
            hold_s=float(s.multicast_hold_secs),
        )

    def policy_changed(self) -> None:
        """Call after a new policy is stored: :meth:`serve` restarts if its settings changed."""
        self._changed.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the cache until cancelled, restarting with new settings when the policy
        changes them. ``task_status.started()`` once the discovery group is joined (at once
        while there is no discovery key yet); a ``peer-cache`` event with
        ``action="serving"`` each time it is joined."""
        started = False
        while True:
            current = self.fetch_settings()
            self._changed = trio.Event()
            if current is None:
                if not started:
                    started = True
                    task_status.started()
                await self._changed.wait()
                continue
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve_cache, self.lookup, current, stats=self.stats))
                self._emit("peer-cache", action="serving", port=current.discovery_port)
                if not started:
                    started = True
                    task_status.started()
                while self.fetch_settings() == current:
                    await self._changed.wait()
                    self._changed = trio.Event()
                nursery.cancel_scope.cancel()
