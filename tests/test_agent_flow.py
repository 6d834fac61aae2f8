"""The agent's whole flow against a real Notification Server stub on 127.0.0.1.

The download goes through the HTTP-only stand-in fetcher (``agent.httpfetch``), which verifies
every unit against the signed snapshot; the package holds a tiny ``setup.py`` that appends a
line to a marker file per run, so "ran exactly once" is counted, not assumed.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import agent.httpfetch
from agent import Agent, JobState
from agent.core import INTERRUPTED
from mcast.fetch import FetchError, FetchResult, FetchSettings
from mcast.snapshot import Snapshot, generate_key, parse_snapshot_xml
from server_stub.app import create_app
from server_stub.serve import serve
from server_stub.store import Store
from server_stub.testing import running_server
from tests.harness import WAIT_S, within
from tests.test_agent_support import (
    NS,
    CountingFetcher,
    Killed,
    agent_config,
    make_ns,
    wait_until,
)


@pytest.fixture
def ns(tmp_path: Path) -> NS:
    return make_ns(tmp_path, computers=3)


def make_agent(ns: NS, url: str, guid: str, tmp: Path, **kw: Any) -> Agent:
    fetcher = kw.pop("fetcher", None) or CountingFetcher()
    transport = kw.pop("transport", None)
    on_event = kw.pop("on_event", None)
    cfg = agent_config(ns, url, guid, tmp / f"agent-{guid[:8]}", **kw)
    return Agent(cfg, fetcher=fetcher, transport=transport, on_event=on_event)


# -- the full flow -------------------------------------------------------------------------


async def test_three_agents_full_flow(ns: NS, url: str, tmp_path: Path) -> None:
    task = ns.add_task()
    results = {}

    async def one(guid: str) -> None:
        with make_agent(ns, url, guid, tmp_path) as a:
            results[guid] = await a.run_once()

    async with trio.open_nursery() as nursery:
        for g in ns.guids:
            nursery.start_soon(one, g)
    await ns.processed()
    size = (ns.src / "payload.bin").stat().st_size + (ns.src / "setup.py").stat().st_size
    for g in ns.guids:
        assert results[g].ok, results[g]
        assert results[g].finished == {task: "succeeded"}
        assert len(ns.runs(g)) == 1
        row = ns.status_of(g, task)
        assert row.state == "succeeded" and row.exit_code == 0
        assert row.bytes_http == size and row.bytes_multicast == 0
        assert "installing" in row.message
        # received, downloading, downloaded, scheduled, running, succeeded
        assert row.events == 6


async def test_cache_by_hash_and_new_version(ns: NS, url: str, tmp_path: Path) -> None:
    guid = ns.guids[0]
    fetcher = CountingFetcher()
    first = ns.add_task()
    with make_agent(ns, url, guid, tmp_path, fetcher=fetcher) as a:
        assert (await a.run_once()).ok
        assert fetcher.calls == 1
        # a second task with the same package: in the cache, not downloaded again
        second = ns.add_task()
        assert (await a.run_once()).ok
        assert fetcher.calls == 1
        job = a.state.job(second, ns.package_hash)
        assert job is not None and job.route == "cached" and job.state is JobState.SUCCEEDED
        assert len(ns.runs(guid)) == 2
        # nothing new: nothing happens
        assert (await a.run_once()).ok
        assert fetcher.calls == 1 and len(ns.runs(guid)) == 2
        # the package changes: a new hash is downloaded once, and each task runs it once
        old = ns.package_hash
        new = ns.new_version()
        assert (await a.run_once()).ok
        assert fetcher.calls == 2
        runs = ns.runs(guid)
        assert len(runs) == 4
        assert sorted(r.split()[1] for r in runs) == sorted([old, old, new, new])
        assert {r.split()[0] for r in runs} == {first, second}
        assert (a.state.dir / "cache" / old).is_dir() and (a.state.dir / "cache" / new).is_dir()


# -- crashes -------------------------------------------------------------------------------


async def test_killed_during_download_resumes_and_runs_once(
    ns: NS, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guid = ns.guids[0]
    task = ns.add_task()
    dying = CountingFetcher(die_after=65536)
    a = make_agent(ns, url, guid, tmp_path, fetcher=dying)
    with pytest.raises(Killed):
        await a.run_once()
    job = a.state.job(task, ns.package_hash)
    assert job is not None and job.state is JobState.DOWNLOADING
    a.close()  # the process is gone (the kernel drops its lock)
    assert ns.runs(guid) == []
    results: list[FetchResult] = []
    with make_agent(ns, url, guid, tmp_path, fetcher=CountingFetcher(results=results)) as b:
        assert (await b.run_once()).ok
    assert len(ns.runs(guid)) == 1
    total = (ns.src / "payload.bin").stat().st_size + (ns.src / "setup.py").stat().st_size
    assert 0 < results[0].bytes_http < total  # resumed from the verified units
    await ns.processed()
    assert ns.status_of(guid, task).state == "succeeded"


class DyingTransport(httpx.AsyncHTTPTransport):
    """Delivers the final status event, then dies before the agent sees the ack."""

    def __init__(self) -> None:
        super().__init__()
        self.killed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await super().handle_async_request(request)
        if request.url.path.endswith("/PostEvent.aspx") and b'state="succeeded"' in request.content:
            await resp.aread()
            self.killed = True
            raise Killed("killed between the server's ack and the agent recording it")
        return resp


async def test_killed_during_status_post(ns: NS, url: str, tmp_path: Path) -> None:
    guid = ns.guids[0]
    task = ns.add_task()
    transport = DyingTransport()
    a = make_agent(ns, url, guid, tmp_path, transport=transport)
    with pytest.raises(Killed):
        await a.run_once()
    assert transport.killed
    a.close()
    await ns.processed()
    assert ns.status_of(guid, task).state == "succeeded"  # the server did get it
    with make_agent(ns, url, guid, tmp_path) as b:
        result = await b.run_once()
        assert result.ok and result.outbox_pending == 0
        events = b.state.events(task)
    assert [e[1] for e in events] == [
        "received",
        "downloading",
        "downloaded",
        "scheduled",
        "running",
        "succeeded",
    ]
    assert events[-1][2:] == (1, "duplicate")  # re-sent, acknowledged as a duplicate
    await ns.processed()
    assert len(ns.runs(guid)) == 1
    row = ns.status_of(guid, task)
    assert row.state == "succeeded" and row.events == 6  # counted once
    assert ns.queue()["events"] == 6


async def test_killed_while_running_is_reported_not_rerun(ns: NS, url: str, tmp_path: Path) -> None:
    guid = ns.guids[0]
    task = ns.add_task(ns.command() + " && sleep 30")
    a = make_agent(ns, url, guid, tmp_path)
    with within(WAIT_S, "the agent to start the command"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run_once)
            await wait_until(lambda: ns.runs(guid), what="the installer's first run")
            nursery.cancel_scope.cancel()  # the agent dies mid-command
    job = a.state.job(task, ns.package_hash)
    assert job is not None and job.state is JobState.RUNNING
    a.close()
    with make_agent(ns, url, guid, tmp_path) as b:
        result = await b.run_once()
    assert result.outbox_pending == 0
    await ns.processed()
    row = ns.status_of(guid, task)
    assert row.state == "failed" and row.message == INTERRUPTED
    assert len(ns.runs(guid)) == 1


async def test_server_down_during_check_in(ns: NS, tmp_path: Path) -> None:
    guid = ns.guids[0]
    task = ns.add_task()
    with socket.socket() as s:  # a port with nobody listening (yet)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen: list[dict[str, Any]] = []
    a = make_agent(
        ns,
        f"http://127.0.0.1:{port}",
        guid,
        tmp_path,
        on_event=seen.append,
        check_in_interval_s=3600.0,
    )
    with within(WAIT_S, "check-ins to fail, then succeed once the server is up"), a:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run_forever)
            await wait_until(
                lambda: sum(1 for e in seen if e["event"] == "checkin" and not e["ok"]) >= 3
            )
            assert ns.runs(guid) == []
            await nursery.start(serve, create_app(ns.data), f"127.0.0.1:{port}")
            await wait_until(
                lambda: a.state.jobs() and a.state.jobs()[0].state.terminal and not a.state.outbox()
            )
            await ns.processed()
            nursery.cancel_scope.cancel()
    retries = [e for e in seen if e["event"] == "retry" and e["what"] == "check-in"]
    assert len(retries) >= 3 and all(e["delay_s"] <= 0.5 for e in retries)
    assert len(ns.runs(guid)) == 1
    assert ns.status_of(guid, task).state == "succeeded"


async def test_outbox_survives_server_down_after_run(ns: NS, tmp_path: Path) -> None:
    """The server dies after the check-in: events wait in the outbox, are sent later."""
    guid = ns.guids[0]
    task = ns.add_task()

    class Gone(httpx.AsyncHTTPTransport):
        down = False

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if self.down or request.url.path.endswith("/PostEvent.aspx"):
                raise httpx.ConnectError("connection refused", request=request)
            return await super().handle_async_request(request)

    async with running_server(create_app(ns.data)) as url:
        with make_agent(ns, url, guid, tmp_path, transport=Gone()) as a:
            result = await a.run_once()
        assert result.checked_in and result.finished == {task: "succeeded"}
        assert result.outbox_pending == 6 and not result.ok
        with make_agent(ns, url, guid, tmp_path) as b:
            assert b.state.outbox()[0].attempts > 0  # backed off (the rest wait behind it)
            assert (await b.run_once()).ok  # a restart sends at once, back-off or not
        await ns.processed()
    assert ns.status_of(guid, task).state == "succeeded"
    assert len(ns.runs(guid)) == 1


# -- failures of the command ---------------------------------------------------------------


async def test_failing_command_reports_exit_code_and_output(
    ns: NS, url: str, tmp_path: Path
) -> None:
    guid = ns.guids[0]
    task = ns.add_task(ns.command(exit_code=3))
    with make_agent(ns, url, guid, tmp_path) as a:
        result = await a.run_once()
    assert not result.ok and result.finished == {task: "failed"}
    await ns.processed()
    row = ns.status_of(guid, task)
    assert row.state == "failed" and row.exit_code == 3
    assert "exit code 3" in row.message and "error: installer failed" in row.message
    assert "installing" in row.message


async def test_command_timeout(ns: NS, url: str, tmp_path: Path) -> None:
    guid = ns.guids[0]
    task = ns.add_task("echo started; sleep 600")
    with (
        make_agent(ns, url, guid, tmp_path, command_timeout_s=0.5) as a,
        within(120, "the agent to end a 10-minute command at its 0.5 s timeout"),
    ):
        result = await a.run_once()
    assert result.finished == {task: "failed"}
    await ns.processed()
    row = ns.status_of(guid, task)
    assert row.state == "failed" and row.exit_code is None
    assert row.message.startswith("timed out after 0.5 s") and "started" in row.message


# -- schedule, trust, package info ---------------------------------------------------------


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


async def test_schedules(ns: NS, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guid = ns.guids[0]
    now = time.time()
    later = ns.add_task(schedule=_iso(now + 3600))
    window = ns.add_task(schedule=f"{_iso(now + 7200)}/{_iso(now + 9000)}")
    missed = ns.add_task(schedule=f"{_iso(now - 7200)}/{_iso(now - 3600)}")
    soon = ns.add_task(schedule=_iso(now + 60))  # whole seconds: due 59 to 60 s from now
    bad = ns.add_task(schedule="next tuesday")
    with make_agent(ns, url, guid, tmp_path) as a:
        result = await a.run_once()
        assert result.finished == {missed: "failed", bad: "failed"}
        assert set(result.waiting) == {later, window, soon}
        assert result.next_wake is not None and now + 58 <= result.next_wake <= now + 60
        for t in (later, window, soon):
            job = a.state.job(t, ns.package_hash)
            assert job is not None and job.state is JobState.SCHEDULED
        # The clock reaches the wake-up time (as after a sleep until then, without the wait)
        real, skip = time.time, result.next_wake - time.time() + 0.1
        monkeypatch.setattr(time, "time", lambda: real() + skip)
        result = await a.run_once(check_in=False)
        assert result.finished == {soon: "succeeded"}
    assert len(ns.runs(guid)) == 1
    await ns.processed()
    assert "missed" in ns.status_of(guid, missed).message
    assert "bad schedule" in ns.status_of(guid, bad).message
    assert ns.status_of(guid, window).state == "scheduled"


async def test_untrusted_snapshot_fails_the_task(ns: NS, url: str, tmp_path: Path) -> None:
    """The task is signed by the server's key, but the snapshot it serves is not."""
    guid = ns.guids[0]
    task = ns.add_task()
    stored = ns.data / "packages" / ns.package_hash / "snapshot.xml"
    stored.write_bytes(parse_snapshot_xml(stored.read_bytes()).signed(generate_key()).to_xml())
    fetcher = CountingFetcher()
    a = make_agent(ns, url, guid, tmp_path, fetcher=fetcher)
    with a:
        result = await a.run_once()
    assert result.finished == {task: "failed"} and fetcher.calls == 0
    await ns.processed()
    assert "unknown key" in ns.status_of(guid, task).message
    assert ns.runs(guid) == []


class Recording(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[httpx.URL] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        return await super().handle_async_request(request)


async def test_total_time_and_multicast_prerequisites(ns: NS, url: str, tmp_path: Path) -> None:
    guid = ns.guids[0]
    store = Store(ns.data)
    store.set_setting("minMulticastSize", "1000")
    store.set_setting("maxSessionsPerSubnet", "3")
    store.close()
    task = ns.add_task()
    seen: list[FetchSettings | None] = []
    fail_first = [True]

    async def fetcher(
        snap: Snapshot,
        dest: Path,
        codebases: list[str],
        settings: FetchSettings | None = None,
        *,
        progress: Any = None,
    ) -> FetchResult:
        seen.append(settings)
        if fail_first.pop() if fail_first else False:
            raise FetchError("no session and no codebase answered")
        return await agent.httpfetch.fetch(snap, dest, codebases, settings, progress=progress)

    rec = Recording()
    with make_agent(ns, url, guid, tmp_path, fetcher=fetcher, transport=rec) as a:
        result = await a.run_once()
        assert result.waiting == [task] and result.next_wake is not None
        assert result.retrying == [task] and not result.ok
        job = a.state.job(task, ns.package_hash)
        assert job is not None and job.state is JobState.DOWNLOADING
        assert job.download_attempts == 1 and job.next_try > 0
        # pretend the agent has been trying for ten minutes, and the back-off has passed
        db = sqlite3.connect(a.state.dir / "agent.sqlite3")
        db.execute("UPDATE jobs SET first_try = first_try - 600, next_try = 0")
        db.commit()
        db.close()
        assert (await a.run_once()).ok
    infos = [u for u in rec.urls if u.path == "/getPackageInfo.aspx"]
    assert [u.params["totaltime"] for u in infos] == ["0", "10"]
    assert infos[0].params["ip"] == "127.0.0.1" and infos[0].params["computer"] == guid
    s = seen[-1]
    assert s is not None and s.multicast_enabled and s.max_sessions_per_subnet == 3
    assert s.speed_test and s.session_key is not None and len(s.session_key) == 32
    assert len(ns.runs(guid)) == 1


async def test_run_from_server_and_small_packages_skip_multicast(
    ns: NS, url: str, tmp_path: Path
) -> None:
    guid = ns.guids[0]
    task = ns.add_task(run_from="server")
    seen: list[FetchSettings | None] = []

    async def fetcher(
        snap: Snapshot,
        dest: Path,
        codebases: list[str],
        settings: FetchSettings | None = None,
        *,
        progress: Any = None,
    ) -> FetchResult:
        seen.append(settings)
        return await agent.httpfetch.fetch(snap, dest, codebases, settings, progress=progress)

    with make_agent(ns, url, guid, tmp_path, fetcher=fetcher) as a:
        assert (await a.run_once()).ok
    assert seen[0] is not None and not seen[0].multicast_enabled and seen[0].run_from_server
    await ns.processed()
    store = Store(ns.data)
    try:
        with store._read() as db:
            (downloaded,) = db.execute(
                "SELECT message FROM events WHERE task_id = ? AND state = 'downloaded'", (task,)
            ).fetchone()
    finally:
        store.close()
    assert "minMulticastSize" in downloaded and "runFrom='server'" in downloaded


async def test_unknown_computer_check_in_fails_cleanly(ns: NS, url: str, tmp_path: Path) -> None:
    import uuid

    from mcast.fleet_auth import new_secret, write_secret

    stranger = str(uuid.uuid4())  # signs with a secret the server never heard of
    write_secret(ns.secret_file(stranger), new_secret())
    with make_agent(ns, url, stranger, tmp_path) as a:
        result = await a.run_once()
    assert not result.checked_in and "401" in result.check_in_error and not result.ok
    assert "has no secret on this server" in result.check_in_error


async def test_a_fetcher_that_raises_does_not_kill_the_agent(
    ns: NS, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mcast.fetch

    async def broken(*args: Any, **kw: Any) -> FetchResult:
        raise RuntimeError("engine bug")

    monkeypatch.setattr(mcast.fetch, "fetch", broken)  # the default fetcher, looked up here
    guid = ns.guids[0]
    task = ns.add_task()
    seen: list[dict[str, Any]] = []
    cfg = agent_config(ns, url, guid, tmp_path / "a")
    with Agent(cfg, on_event=seen.append) as a:
        result = await a.run_once()
    assert result.retrying == [task] and not result.ok
    assert any(e["event"] == "retry" and "engine bug" in e["error"] for e in seen)
    assert ns.runs(guid) == []
