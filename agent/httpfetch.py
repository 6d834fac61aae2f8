"""HTTP only: the engine's ``mcast.fetch.fetch`` with multicast turned off.

For agents that must not use multicast whatever the policy says (``--fetcher
agent.httpfetch:fetch``), and for tests that need a download that dies on cue. Everything
else is the engine's: codebases in speed-test order, Range requests for the missing units
only, every unit verified against the snapshot before it is written, resume after a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mcast.fetch import FetchProgress, FetchResult, FetchSettings
from mcast.fetch import fetch as engine_fetch
from mcast.snapshot import Snapshot


async def fetch(
    snapshot: Snapshot,
    dest: Path,
    codebases: list[str],
    settings: FetchSettings | None = None,
    *,
    progress: Callable[[FetchProgress], None] | None = None,
) -> FetchResult:
    http_only = replace(settings or FetchSettings(), multicast_enabled=False)
    return await engine_fetch(snapshot, dest, codebases, http_only, progress=progress)
