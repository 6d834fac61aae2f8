"""Download retries and failure reporting: every failed attempt reaches the server as a
``downloading`` status event with its reason, attempts back off (also across restarts), a
download that keeps failing ends in ``failed`` after ``download_attempts`` attempts instead of
looping forever, TotalTime counts from the first attempt across restarts, and why multicast
fell back to HTTP is in the ``downloaded`` event."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from agent import Agent, JobState
from agent.httpfetch import fetch as http_fetch
from mcast.fetch import FetchError, FetchProgress, FetchResult, FetchSettings, fetch
from mcast.snapshot import Snapshot
from server_stub.store import Store
from tests.test_agent_flow import Recording
from tests.test_agent_support import NS, agent_config, make_ns, wait_until

REASON = "no session and no codebase answered: connection refused"


@pytest.fixture
def ns(tmp_path: Path) -> NS:
    return make_ns(tmp_path, computers=1)


class Failing:
    """A fetcher whose download fails every time (or the first ``times``), then works."""

    def __init__(self, times: int | None = None) -> None:
        self.calls = 0
        self.times = times

    async def __call__(
        self,
        snapshot: Snapshot,
        dest: Path,
        codebases: list[str],
        settings: FetchSettings | None = None,
        *,
        progress: Callable[[FetchProgress], None] | None = None,
    ) -> FetchResult:
        self.calls += 1
        if self.times is None or self.calls <= self.times:
            raise FetchError(REASON)
        return await http_fetch(snapshot, dest, codebases, settings, progress=progress)


def server_events(ns: NS, task: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(ns.data / "ns.sqlite3")
    try:
        rows = db.execute(
            "SELECT state, message FROM events WHERE task_id = ? ORDER BY agent_time", (task,)
        ).fetchall()
    finally:
        db.close()
    return [(str(a), str(b)) for a, b in rows]


def doctor(agent: Agent, sql: str) -> None:
    db = sqlite3.connect(agent.state.dir / "agent.sqlite3")
    db.execute(sql)
    db.commit()
    db.close()


async def test_a_download_that_always_fails_ends_failed_with_its_reason(
    ns: NS, url: str, tmp_path: Path
) -> None:
    task = ns.add_task()
    failing = Failing()
    cfg = agent_config(ns, url, ns.guids[0], tmp_path / "a", download_attempts=3)
    with Agent(cfg, fetcher=failing) as agent:

        def failed() -> bool:
            job = agent.state.job(task, ns.package_hash)
            return job is not None and job.state is JobState.FAILED and not agent.state.outbox()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.run_forever)
            await wait_until(failed, limit=30)
            nursery.cancel_scope.cancel()
    assert failing.calls == 3  # bounded: no endless loop
    await ns.processed()
    row = ns.status_of(ns.guids[0], task)
    assert row.state == "failed" and REASON in row.message and "3 times" in row.message
    events = server_events(ns, task)
    retries = [m for s, m in events if s == "downloading" and "attempt" in m]
    assert len(retries) == 2 and all(REASON in m for m in retries), events
    assert "attempt 1 failed" in retries[0] and "retrying in" in retries[0]
    assert [s for s, _ in events][-1] == "failed"
    assert ns.runs(ns.guids[0]) == []


async def test_total_time_and_attempts_survive_a_restart(ns: NS, url: str, tmp_path: Path) -> None:
    task = ns.add_task()
    state = tmp_path / "a"
    with Agent(agent_config(ns, url, ns.guids[0], state), fetcher=Failing()) as agent:
        assert not (await agent.run_once()).ok
        job = agent.state.job(task, ns.package_hash)
        assert job is not None and job.download_attempts == 1 and job.first_try is not None
        first_try = job.first_try
    # the agent was down for a while: its download first started seven minutes ago
    rec = Recording()
    with Agent(agent_config(ns, url, ns.guids[0], state), fetcher=Failing(1),
               transport=rec) as agent:  # fmt: skip
        doctor(agent, "UPDATE jobs SET first_try = first_try - 420")
        # the back-off of the failed attempt holds across the restart ...
        doctor(agent, "UPDATE jobs SET next_try = 4e9")
        assert not (await agent.run_once()).ok
        assert not [u for u in rec.urls if u.path == "/getPackageInfo.aspx"]
        # ... and once it has passed, TotalTime counts from the first attempt
        doctor(agent, "UPDATE jobs SET next_try = 0")
        agent.fetcher = Failing(0)
        assert (await agent.run_once()).ok
        job = agent.state.job(task, ns.package_hash)
        assert job is not None and job.first_try == pytest.approx(first_try - 420)
    infos = [u for u in rec.urls if u.path == "/getPackageInfo.aspx"]
    assert [u.params["totaltime"] for u in infos] == ["7"]


async def test_the_policy_time_limit_gets_its_fallback_before_the_job_fails(
    ns: NS, url: str, tmp_path: Path
) -> None:
    store = Store(ns.data)
    try:
        store.set_setting("MaxAgentDownloadTryingTimeMins", "5")
    finally:
        store.close()
    task = ns.add_task()
    cfg = agent_config(ns, url, ns.guids[0], tmp_path / "a", download_attempts=1)
    with Agent(cfg, fetcher=Failing()) as agent:
        await agent.run_once()  # attempt 1 fails within the time limit: not given up yet
        job = agent.state.job(task, ns.package_hash)
        assert job is not None and job.state is JobState.DOWNLOADING
        doctor(agent, "UPDATE jobs SET first_try = first_try - 360, next_try = 0")
        await agent.run_once()  # past the limit (the server's fallback codebases): given up
        job = agent.state.job(task, ns.package_hash)
        assert job is not None and job.state is JobState.FAILED
        assert REASON in job.message


async def test_why_multicast_fell_back_to_http_reaches_the_server(
    ns: NS, url: str, tmp_path: Path
) -> None:
    store = Store(ns.data)
    try:
        store.set_setting("minMulticastSize", "1024")
    finally:
        store.close()
    task = ns.add_task()
    # a real LAN interface, not allowed: the engine refuses multicast and HTTP takes over
    cfg = agent_config(ns, url, ns.guids[0], tmp_path / "a", interface="192.0.2.7")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MCAST_ALLOW_ANY_INTERFACE", raising=False)
        with Agent(cfg, fetcher=fetch) as agent:
            assert (await agent.run_once()).ok
    await ns.processed()
    downloaded = [m for s, m in server_events(ns, task) if s == "downloaded"]
    assert len(downloaded) == 1 and "multicast failed" in downloaded[0], downloaded
    assert "MCAST_ALLOW_ANY_INTERFACE" in downloaded[0]
    assert ns.status_of(ns.guids[0], task).state == "succeeded"
