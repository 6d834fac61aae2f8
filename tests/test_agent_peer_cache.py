"""The agent's peer cache with the real engine and a real server stub on loopback.

The first agent downloads and runs the package, then serves its cache; the second checks in
later, with every codebase of its site unreachable, and still gets the package, from the
first agent's disk by multicast (no byte over HTTP). The policy decides what is offered: for
``peerCacheHours`` after the package was last used, within ``peerCacheMaxMB`` (least recently
used beyond it are pruned), only while the files are there. Each test uses its own discovery
port so that no other run's sessions interfere.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
import trio

from agent import Agent
from agent.cache import PARTIAL_STALE_HOURS, PeerCache
from agent.config import AgentConfig
from agent.state import AgentState
from mcast.fleet import AgentSettings
from server_stub.store import Store
from tests.test_agent_engine import RecordingFetch
from tests.test_agent_support import NS, agent_config, make_ns

PAYLOAD = 1_500_000
ROOT = Path(__file__).resolve().parent.parent
DEAD = "http://127.0.0.1:9"  # nothing listens there: a WAN link that is down


@pytest.fixture
def ns(tmp_path: Path) -> NS:
    ns = make_ns(tmp_path, computers=2, payload=PAYLOAD)
    store = Store(ns.data)
    try:
        for key, value in [("multicastEnabled", "true"), ("minMulticastSize", "1024"),
                           ("maxSessionsPerSubnet", "1"), ("multicastHoldSecs", "0")]:  # fmt: skip
            store.set_setting(key, value)
    finally:
        store.close()
    return ns


def _setting(ns: NS, key: str, value: str) -> None:
    store = Store(ns.data)
    try:
        store.set_setting(key, value)
    finally:
        store.close()


def _codebases_unreachable(ns: NS) -> None:
    """The site's package server is the only codebase, and it does not answer."""
    store = Store(ns.data)
    try:
        store.add_pkgserver("lab", DEAD)
    finally:
        store.close()


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def _config(ns: NS, url: str, guid: str, state: Path, port: int):  # type: ignore[no-untyped-def]
    return agent_config(ns, url, guid, state, discovery_group="239.255.78.201",
                        discovery_port=port)  # fmt: skip


async def test_a_later_agent_gets_the_package_from_the_first_agents_cache(
    ns: NS, url: str, tmp_path: Path
) -> None:
    task = ns.add_task()
    port = random.randint(47100, 47999)
    first, second = ns.guids
    rec = RecordingFetch()
    events: list[dict[str, object]] = []
    with trio.fail_after(60):
        with Agent(_config(ns, url, first, tmp_path / "a1", port), fetcher=rec,
                   on_event=events.append) as a1:  # fmt: skip
            assert (await a1.run_once()).ok
            assert rec.results[0].bytes_http == rec.results[0].bytes_total  # the one WAN copy
            _codebases_unreachable(ns)
            async with trio.open_nursery() as nursery:
                await nursery.start(a1.cache.serve)
                assert any(e.get("action") == "serving" for e in events)
                with Agent(_config(ns, url, second, tmp_path / "a2", port), fetcher=rec) as a2:
                    result = await a2.run_once()  # an hour later, say
                nursery.cancel_scope.cancel()
            assert a1.cache.stats.sessions == 1
        await ns.processed()
    assert result.ok, result
    later = rec.results[1]
    assert later.complete and later.bytes_http == 0 and later.bytes_multicast == later.bytes_total
    row = ns.status_of(second, task)
    assert row.state == "succeeded" and row.bytes_http == 0 and row.exit_code == 0
    assert len(ns.runs(second)) == 1
    assert any(e.get("action") == "offer" for e in events)


async def test_a_cache_past_peer_cache_hours_offers_nothing(
    ns: NS, url: str, tmp_path: Path
) -> None:
    ns.add_task()
    _setting(ns, "peerCacheHours", "1")
    port = random.randint(47100, 47999)
    with Agent(_config(ns, url, ns.guids[0], tmp_path / "a1", port)) as a1:
        assert (await a1.run_once()).ok
        wanted = bytes.fromhex(ns.package_hash)
        assert a1.cache.lookup(wanted) is not None
        cached = a1.cache.lookup(wanted)
        assert cached is not None and cached.session_key is not None  # from getPackageInfo
        db = sqlite3.connect(a1.state.dir / "agent.sqlite3")
        db.execute("UPDATE packages SET used = used - 3601")  # last used over an hour ago
        db.commit()
        db.close()
        assert a1.cache.lookup(wanted) is None
        assert a1.state.package_complete(ns.package_hash)  # not offered, still on disk


async def test_peer_cache_hours_zero_turns_it_off(ns: NS, url: str, tmp_path: Path) -> None:
    ns.add_task()
    _setting(ns, "peerCacheHours", "0")
    with Agent(_config(ns, url, ns.guids[0], tmp_path / "a1", 47099)) as a1:
        assert (await a1.run_once()).ok
        assert a1.cache.lookup(bytes.fromhex(ns.package_hash)) is None


async def test_past_the_disk_cap_a_package_is_not_offered_and_pruned(
    ns: NS, url: str, tmp_path: Path
) -> None:
    ns.add_task()
    _setting(ns, "peerCacheMaxMB", "1")  # the package is 1.5 MB
    with Agent(_config(ns, url, ns.guids[0], tmp_path / "a1", 47099)) as a1:
        assert (await a1.run_once()).ok  # downloaded, run, then pruned: no job needs it
        assert a1.cache.lookup(bytes.fromhex(ns.package_hash)) is None
        assert not a1.state.package_complete(ns.package_hash)
        assert not a1.state.cache_dir(ns.package_hash).exists()
    assert len(ns.runs(ns.guids[0])) == 1


async def test_a_package_whose_files_changed_is_not_offered(
    ns: NS, url: str, tmp_path: Path
) -> None:
    ns.add_task()
    with Agent(_config(ns, url, ns.guids[0], tmp_path / "a1", 47099)) as a1:
        assert (await a1.run_once()).ok
        wanted = bytes.fromhex(ns.package_hash)
        assert a1.cache.lookup(wanted) is not None
        _append(a1.state.cache_dir(ns.package_hash) / "payload.bin", b"tampered")
        assert a1.cache.lookup(wanted) is None


async def test_without_a_discovery_key_the_cache_does_not_serve(
    ns: NS, url: str, tmp_path: Path
) -> None:
    with Agent(_config(ns, url, ns.guids[0], tmp_path / "a1", 47099)) as a1:
        assert a1.cache.fetch_settings() is None  # no policy yet: no site key
        assert (await a1.run_once()).checked_in
        s = a1.cache.fetch_settings()
        assert s is not None and s.discovery_key == a1.discovery_key is not None


async def test_once_with_serve_cache_for_keeps_serving_after_its_run(
    ns: NS, url: str, tmp_path: Path
) -> None:
    """``mcast-agent --once --serve-cache-for S`` (as the demo runs agents): it downloads and
    runs the package, says it keeps serving (with its run's exit code), a later agent gets the
    package from it, and on SIGTERM it says what its cache served and exits with that code."""
    root = ROOT
    task = ns.add_task()
    port = random.randint(47100, 47999)
    first, second = ns.guids
    cmd = [
        sys.executable, "-m", "agent.cli", "--server", url, "--guid", first,
        "--state", str(tmp_path / "a1"), "--trust-key", str(ns.pub), "--ip", "127.0.0.1",
        "--secret-file", str(ns.secret_file(first)),
        "--discovery", f"239.255.78.201:{port}", "--once", "--json", "--serve-cache-for", "60",
    ]  # fmt: skip
    proc = await trio.lowlevel.open_process(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        buf, events = b"", []
        with trio.fail_after(60):
            while not any(e.get("action") == "serving-for" for e in events):
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, "the agent exited before it said it keeps serving"
                buf += chunk
                *lines, buf = buf.split(b"\n")
                events += [json.loads(x) for x in lines if x.strip()]
        assert any(e.get("action") == "serving" for e in events)
        (done,) = [e for e in events if e.get("action") == "serving-for"]
        assert done["rc"] == 0 and done["seconds"] == 60
        (downloaded,) = [e for e in events if e["event"] == "job" and e["state"] == "downloaded"]
        # the session its download led, named as the discovery group announces it
        assert downloaded["route"] == "master", downloaded
        assert len(downloaded["session"]) == 16 and int(downloaded["session"], 16) > 0
        # and so does the event the server keeps (its console lists sessions from these)
        session_said = f"downloaded via master in session {downloaded['session']}"
        assert downloaded["message"].startswith(session_said), downloaded
        assert len(ns.runs(first)) == 1
        _codebases_unreachable(ns)
        rec = RecordingFetch()
        with trio.fail_after(60):
            with Agent(_config(ns, url, second, tmp_path / "a2", port), fetcher=rec) as a2:
                assert (await a2.run_once()).ok
        (later,) = rec.results
        assert later.bytes_http == 0 and later.bytes_multicast == later.bytes_total
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await proc.wait() == 0  # its own run succeeded
            while chunk := await proc.stdout.receive_some(65536):
                buf += chunk
        events = [json.loads(x) for x in buf.split(b"\n") if x.strip()]
        (stopped,) = [e for e in events if e.get("action") == "stopped"]
        assert stopped["sessions"] == 1 and stopped["solicits"] >= 1, stopped
        assert stopped["failures"] == 0 and stopped["error"] == "", stopped
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()
    await ns.processed()
    assert ns.status_of(second, task).bytes_http == 0


async def test_as_a_service_the_agent_serves_its_cache(ns: NS, url: str, tmp_path: Path) -> None:
    """Without --once the peer cache runs beside the check-in loop; SIGTERM ends both."""
    ns.add_task()
    port = random.randint(47100, 47999)
    cmd = [
        sys.executable, "-m", "agent.cli", "--server", url, "--guid", ns.guids[0],
        "--state", str(tmp_path / "a1"), "--trust-key", str(ns.pub), "--ip", "127.0.0.1",
        "--secret-file", str(ns.secret_file(ns.guids[0])),
        "--discovery", f"239.255.78.201:{port}", "--json", "--interval", "3600",
    ]  # fmt: skip
    proc = await trio.lowlevel.open_process(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        buf, events = b"", []
        with trio.fail_after(60):
            while not (
                any(e.get("action") == "serving" for e in events)
                and any(e.get("state") == "succeeded" for e in events)
            ):
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, "the agent exited"
                buf += chunk
                *lines, buf = buf.split(b"\n")
                events += [json.loads(x) for x in lines if x.strip()]
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()


def _package_dir(state: AgentState, name: str, size: int, age_h: float, now: float) -> str:
    h = hashlib.sha256(name.encode()).hexdigest()
    work = state.cache_dir(h) / ".mcast" / h
    work.mkdir(parents=True)
    (work / "payload.bin").write_bytes(b"p" * size)
    for path in [state.cache_dir(h), *state.cache_dir(h).rglob("*")]:
        os.utime(path, (now - age_h * 3600, now - age_h * 3600))
    return h


def test_partial_downloads_are_pruned_when_stale_or_past_the_cap(tmp_path: Path) -> None:
    """A partial download no unfinished job needs goes once it is stale, or, the oldest
    first, when it does not fit under peerCacheMaxMB beside the cached packages; one a job
    needs stays whatever its age, and a complete package within the cap stays."""
    now = 1_900_000_000.0
    state = AgentState(tmp_path / "state")
    done = _package_dir(state, "complete", 300_000, 1, now)
    state.mark_package(done, "Done", 1, 300_000, complete=True)
    stale = _package_dir(state, "stale", 10_000, PARTIAL_STALE_HOURS + 1, now)
    needed = _package_dir(state, "needed", 10_000, 10 * PARTIAL_STALE_HOURS, now)
    fresh = _package_dir(state, "fresh", 200_000, 1, now)
    older = _package_dir(state, "older", 600_000, 2, now)  # does not fit beside the others
    settings = AgentSettings(peer_cache_max_mb=1)
    events: list[dict[str, object]] = []
    cache = PeerCache(state, cast(AgentConfig, None), lambda: settings, lambda: None,
                      lambda kind, **kw: events.append(kw))  # fmt: skip
    gone = cache.prune({needed}, now=now)
    assert sorted(gone) == sorted([stale, older])
    left = {d.name for d in (state.dir / "cache").iterdir() if d.is_dir()}
    assert left == {done, needed, fresh}
    assert state.package_complete(done)
    assert [e["action"] for e in events] == ["pruned-partial", "pruned-partial"]
    # the job that needed it finished: now it is just a stale partial download
    assert cache.prune(set(), now=now) == [needed]
