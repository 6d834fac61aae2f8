"""The agent's flow with the real engine (``mcast.fetch.fetch``), not the HTTP stand-in.

Three agents in one trio run against the server stub on 127.0.0.1, multicast allowed by the
Agent Settings (``maxSessionsPerSubnet`` 1, the package above ``minMulticastSize``): they end
in one multicast session, one master downloads over HTTP and the others join, so about one
package's worth of bytes crosses HTTP in total, every agent runs the command once and the
server records ``succeeded`` with the byte counts the engine measured. Each test uses its own
discovery port (``AgentConfig.discovery_port``) so that no other run's sessions interfere.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from agent import Agent, JobState
from mcast.fetch import FetchProgress, FetchResult, FetchSettings, Route, fetch
from mcast.snapshot import Snapshot
from server_stub.store import Store
from tests.harness import WAIT_S, within
from tests.test_agent_support import NS, agent_config, make_ns

PAYLOAD = 3 * 1024 * 1024


@pytest.fixture
def ns(tmp_path: Path) -> NS:
    ns = make_ns(tmp_path, computers=3, payload=PAYLOAD)
    store = Store(ns.data)
    try:
        store.set_setting("multicastEnabled", "true")
        store.set_setting("minMulticastSize", str(1024 * 1024))
        store.set_setting("maxSessionsPerSubnet", "1")
    finally:
        store.close()
    return ns


class RecordingFetch:
    """The real ``mcast.fetch.fetch``, keeping each result and the settings it was given."""

    def __init__(self) -> None:
        self.results: list[FetchResult] = []
        self.settings: list[FetchSettings | None] = []

    async def __call__(
        self,
        snapshot: Snapshot,
        dest: Path,
        codebases: list[str],
        settings: FetchSettings | None = None,
        *,
        progress: Callable[[FetchProgress], None] | None = None,
    ) -> FetchResult:
        self.settings.append(settings)
        result = await fetch(snapshot, dest, codebases, settings, progress=progress)
        self.results.append(result)
        return result


def package_size(ns: NS) -> int:
    return sum(p.stat().st_size for p in ns.src.rglob("*") if p.is_file())


async def run_agents(ns: NS, url: str, tmp: Path, rec: RecordingFetch) -> dict[str, object]:
    port = random.randint(47100, 47999)
    results: dict[str, object] = {}

    async def one(guid: str) -> None:
        cfg = agent_config(
            ns, url, guid, tmp / f"agent-{guid[:8]}",
            discovery_group="239.255.78.200", discovery_port=port,
        )  # fmt: skip
        with Agent(cfg, fetcher=rec) as agent:
            results[guid] = await agent.run_once()

    with within(2 * WAIT_S, "three agents to fetch, install and report"):
        async with trio.open_nursery() as nursery:
            for g in ns.guids:
                nursery.start_soon(one, g)
        await ns.processed()
    return results


async def test_three_agents_one_session_real_engine(ns: NS, url: str, tmp_path: Path) -> None:
    task = ns.add_task()
    rec = RecordingFetch()
    results = await run_agents(ns, url, tmp_path, rec)
    size = package_size(ns)

    for s in rec.settings:  # the agent handed the engine its discovery channel
        assert s is not None and s.multicast_enabled
        assert (s.discovery_group, s.discovery_port) == (
            rec.settings[0].discovery_group,  # type: ignore[union-attr]
            rec.settings[0].discovery_port,  # type: ignore[union-attr]
        )
    assert len(rec.results) == 3 and all(r.complete for r in rec.results)
    routes = sorted(r.route.value for r in rec.results)
    assert routes == [Route.JOINED.value, Route.JOINED.value, Route.MASTER.value], routes
    http_total = sum(r.bytes_http for r in rec.results)
    assert http_total <= 1.1 * size, (http_total, size)
    for g in ns.guids:
        assert results[g].ok, results[g]  # type: ignore[attr-defined]
        assert results[g].finished == {task: JobState.SUCCEEDED.value}  # type: ignore[attr-defined]
        assert len(ns.runs(g)) == 1
        row = ns.status_of(g, task)
        assert row.state == "succeeded" and row.exit_code == 0
        assert row.bytes_multicast + row.bytes_http >= size
    rows = [ns.status_of(g, task) for g in ns.guids]
    assert sum(r.bytes_http for r in rows) == http_total  # the server recorded what was measured
    assert sum(1 for r in rows if r.bytes_multicast >= size) == 2  # the two joiners


async def test_below_min_multicast_size_goes_http_only(ns: NS, url: str, tmp_path: Path) -> None:
    store = Store(ns.data)
    try:
        store.set_setting("minMulticastSize", str(64 * 1024 * 1024))
    finally:
        store.close()
    task = ns.add_task()
    rec = RecordingFetch()
    results = await run_agents(ns, url, tmp_path, rec)
    size = package_size(ns)
    assert [r.route for r in rec.results] == [Route.HTTP] * 3
    assert all(r.bytes_multicast == 0 and r.bytes_http == size for r in rec.results)
    for g in ns.guids:
        assert results[g].ok  # type: ignore[attr-defined]
        row = ns.status_of(g, task)
        assert row.state == "succeeded" and row.bytes_http == size
        assert row.exit_code == 0
