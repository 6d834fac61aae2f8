"""An HTTP-only fetcher with the signature of ``mcast.fetch.fetch``: the agent's stand-in.

Until the engine's ``fetch`` (multicast first, then HTTP) is wired in, the agent can use this
one (``--fetcher agent.httpfetch:fetch``) and the tests use it to run the whole flow for
real. It never tries multicast. It downloads ``CODEBASE/content`` with a ``Range`` from the
first missing hash unit, checks every unit against the snapshot before it is written (through
:class:`mcast.partial.PartialDownload`, so a restart resumes from the verified units and no
partial file is ever left at a destination path), and moves on to the next codebase when one
fails.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx

from mcast.fetch import FetchError, FetchProgress, FetchResult, FetchSettings, Route
from mcast.partial import DownloadError, PartialDownload
from mcast.snapshot import Snapshot

CHECKPOINT_UNITS = 16


async def fetch(
    snapshot: Snapshot,
    dest: Path,
    codebases: list[str],
    settings: FetchSettings | None = None,
    *,
    progress: Callable[[FetchProgress], None] | None = None,
) -> FetchResult:
    try:
        part = PartialDownload.open(snapshot, dest)
    except DownloadError as exc:
        raise FetchError(str(exc)) from None
    notes = ["multicast not tried: HTTP-only fetcher"]
    got = 0
    used: str | None = None
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0)) as client:
            for base in codebases:
                if part.complete:
                    break
                try:
                    got += await _from_codebase(client, part, base, progress, got)
                    used = base
                except (httpx.HTTPError, _BadCodebase) as exc:
                    part.checkpoint()
                    notes.append(f"{base}: {exc}")
        part.checkpoint()
        if not part.complete:
            raise FetchError(f"no codebase delivered the package: {'; '.join(notes[1:])}")
        files = part.finish()
    except BaseException:
        part.close()
        raise
    if progress is not None:
        progress(FetchProgress("done", snapshot.total_size, snapshot.total_size, 0, got))
    return FetchResult(
        complete=True,
        route=Route.HTTP,
        bytes_total=snapshot.total_size,
        bytes_multicast=0,
        bytes_http=got,
        sessions_tried=0,
        codebase=used,
        files=files,
        notes=notes,
    )


class _BadCodebase(Exception):
    pass


async def _from_codebase(
    client: httpx.AsyncClient,
    part: PartialDownload,
    base: str,
    progress: Callable[[FetchProgress], None] | None,
    before: int,
) -> int:
    snap = part.snapshot
    missing = part.missing_units()
    if not missing:
        return 0
    first = missing[0]
    start, _ = snap.block_range(first)
    url = base.rstrip("/") + "/content"
    got = 0
    since_checkpoint = 0
    async with client.stream("GET", url, headers={"Range": f"bytes={start}-"}) as resp:
        if resp.status_code not in (200, 206):
            raise _BadCodebase(f"HTTP {resp.status_code}")
        unit, buf = (first, bytearray()) if resp.status_code == 206 else (0, bytearray())
        async for chunk in resp.aiter_bytes():
            buf += chunk
            while unit < snap.block_count:
                _, length = snap.block_range(unit)
                if len(buf) < length:
                    break
                data = bytes(buf[:length])
                del buf[:length]
                if not part.verified[unit]:
                    if hashlib.sha256(data).digest() != snap.block_hashes[unit]:
                        raise _BadCodebase(f"unit {unit} does not match the snapshot")
                    part.write_unit(unit, data)
                    got += length
                    since_checkpoint += 1
                    if since_checkpoint >= CHECKPOINT_UNITS:
                        part.checkpoint()
                        since_checkpoint = 0
                        if progress is not None:
                            done = sum(snap.block_range(u)[1] for u in part.verified_units())
                            progress(FetchProgress("http", done, snap.total_size, 0, before + got))
                unit += 1
    part.checkpoint()
    return got
