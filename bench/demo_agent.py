"""One agent of ``mcast demo``: load everything, say ready, wait for "go", be the agent, then
serve the package from its cache until the demo says "stop".

    python -m bench.demo_agent MARKER AGENT-ARGS...

The demo starts N of these and releases each once every one has printed
``{"event": "ready"}`` (together, or ``--spread`` seconds apart), so that imports (trio,
httpx, cryptography) do not decide which agent asks first. ``MARKER`` is where the demo
package's install.py records that it ran (``MCAST_DEMO_MARKER`` in the command's
environment); the rest are ``mcast-agent`` options, to which this adds
``--fetcher bench.demo_agent:fetch_and_serve``.

That fetcher is :func:`mcast.fetch.fetch` plus two things the demo needs:

- once the package is complete it prints ``{"event": "fetched", "route", "session",
  "notes", "bytes_multicast", "bytes_http"}``: what the agent observed, including the id of
  the session it joined or led, which the demo matches with the announces it heard;
- from that moment it serves the package from the agent's cache with
  :func:`mcast.peer_cache.serve_cache` (a lookup of that one package: its snapshot, its cache
  directory, the package's session key, and the agent's own discovery settings), in a thread
  of its own, so an agent released later joins a session fed from this cache instead of
  fetching over HTTP. ``{"event": "serving-cache"}`` says the discovery group is joined.

When the agent is done this prints ``{"event": "agent-exit", "rc": RC}`` and keeps serving
until a ``stop`` line (or the end of stdin), then prints ``{"event": "cache", "solicits",
"sessions", "claims_lost", "failures", "error"}`` and exits with the agent's exit code. This
stands in for an agent that keeps its peer cache up between check-ins; once ``mcast-agent``
can do that itself (as a service, or for a given time after ``--once``), the demo can use it
instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

import mcast.fetch
from agent.cli import main as agent_main
from mcast.fetch import FetchProgress, FetchResult, FetchSettings
from mcast.peer_cache import Cached, CacheStats, serve_cache
from mcast.snapshot import Snapshot

FETCHER = "bench.demo_agent:fetch_and_serve"
_lock = threading.Lock()


def say(event: str, **fields: Any) -> None:
    """One JSON line on stdout (the agent prints its own lines there too)."""
    with _lock:
        print(json.dumps({"event": event, **fields}), flush=True)


class CacheServer:
    """``serve_cache`` for one package, in a thread with its own trio loop: ``stop()`` ends it."""

    def __init__(self, cached: Cached, settings: FetchSettings) -> None:
        self.cached, self.settings = cached, settings
        self.stats = CacheStats()
        self.error = ""
        self._started = threading.Event()
        self._scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=self._run, name="peer-cache", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        self._started.wait(timeout)

    def _lookup(self, package_hash: bytes) -> Cached | None:
        return self.cached if package_hash == self.cached.snapshot.package_hash else None

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except Exception as exc:  # reported in the "cache" line; the agent carries on
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(serve_cache, self._lookup, self.settings, stats=self.stats)
                )
                say("serving-cache", package=self.cached.snapshot.package_hash_hex)
                self._started.set()

    def stop(self) -> None:
        if self._scope is not None and self._token is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)


_server: CacheServer | None = None


async def fetch_and_serve(
    snapshot: Snapshot,
    dest: Path,
    codebases: list[str],
    settings: FetchSettings | None = None,
    *,
    progress: Callable[[FetchProgress], None] | None = None,
) -> FetchResult:
    """:func:`mcast.fetch.fetch`, then say what it observed and start serving the cache."""
    global _server
    result = await mcast.fetch.fetch(snapshot, dest, codebases, settings, progress=progress)
    sid = result.session_id
    say("fetched", route=result.route.value, session=None if sid is None else f"{sid:016x}",
        notes=result.notes, bytes_multicast=result.bytes_multicast,
        bytes_http=result.bytes_http)  # fmt: skip
    if result.complete and _server is None:
        s = settings or FetchSettings()
        _server = CacheServer(Cached(snapshot, Path(dest), s.session_key), s)
        _server.start()
    return result


def main(argv: list[str]) -> int:
    os.environ["MCAST_DEMO_MARKER"] = argv[0]
    say("ready")
    if sys.stdin.readline().strip() != "go":
        return 130
    rc = agent_main([*argv[1:], "--fetcher", FETCHER])
    say("agent-exit", rc=rc)
    while True:  # keep serving the cache until the demo is done with the fleet
        line = sys.stdin.readline()
        if not line or line.strip() == "stop":
            break
    if _server is not None:
        _server.stop()
        st = _server.stats
        say("cache", solicits=st.solicits, sessions=st.sessions, claims_lost=st.claims_lost,
            failures=st.failures, error=_server.error)  # fmt: skip
    return rc


if __name__ == "__main__":
    # run as the imported module, not as __main__: the agent loads FETCHER from it by name,
    # and must find the same module (and its cache server) that this main() reports on
    from bench.demo_agent import main as imported_main

    sys.exit(imported_main(sys.argv[1:]))
