"""A package's life on the Notification Server: renewal before expiry, expiry warnings, and
the removal of tasks and packages; and what an agent does when a package it ran is renewed."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mcast.fleet import parse_policy
from mcast.snapshot import TrustStore, load_public_key, load_verified
from mcast.task_sig import verify_task
from server_stub import repo
from server_stub.app import create_app
from server_stub.cli import main
from server_stub.store import Store
from server_stub.testing import Populated, populate, running_server
from tests.test_agent_flow import make_agent
from tests.test_agent_support import NS, CountingFetcher, make_ns, wait_until


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pop(tmp_path: Path, ns_database: str | None) -> Populated:
    """On each engine: renewal and removal are plain SQL for SQLite and PostgreSQL."""
    return populate(tmp_path / "ns", computers=2, package_bytes=150_000, database=ns_database)


@pytest.fixture
async def client(pop: Populated) -> AsyncIterator[httpx.AsyncClient]:
    async with running_server(create_app(pop.data_dir)) as base, pop.client(base) as c:
        yield c


async def _policy(client: httpx.AsyncClient, pop: Populated):  # type: ignore[no-untyped-def]
    resp = await client.get("/GetClientPolicies.aspx", params={"guid": pop.computers[0]})
    assert resp.status_code == 200, resp.text
    return parse_policy(resp.content)


def _public(pop: Populated):  # type: ignore[no-untyped-def]
    return load_public_key((pop.data_dir / repo.PUB_NAME).read_bytes())


# -- renewal ------------------------------------------------------------------------------


async def test_renew_re_signs_the_same_content_and_the_policy_says_so(
    pop: Populated, client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
):
    d = ("--data", str(pop.data_dir))
    old = repo.load_snapshot(pop.data_dir, pop.package.hash)
    code, out, _ = run(capsys, "package", "renew", pop.package.name, "--valid-days", "90", *d)
    assert code == 0 and "renewed" in out
    row = Store(pop.data_dir).latest_package(name=pop.package.name)
    assert row is not None and row.hash != pop.package.hash and row.version == old.version + 1
    assert row.package_id == pop.package.package_id
    xml = repo.snapshot_xml(pop.data_dir, row.hash)
    new = load_verified(xml, TrustStore.of(_public(pop)), time.time())
    assert (new.files, new.block_hashes, new.content_hash) == (
        old.files,
        old.block_hashes,
        old.content_hash,
    )
    assert abs(new.expires - (time.time() + 90 * 86400)) < 600
    for entry in old.files:
        a = repo.package_dir(pop.data_dir, row.hash) / "files" / entry.path
        b = repo.package_dir(pop.data_dir, pop.package.hash) / "files" / entry.path
        assert a.read_bytes() == b.read_bytes()
    (task,) = (await _policy(client, pop)).tasks
    assert task.package_hash == row.hash and task.same_content_as == (pop.package.hash,)
    verify_task(_public(pop), pop.computers[0], task)  # the list is signed with the task
    # the renewal's content is served under its new hash
    body = (await client.get(f"/pkg/{row.hash}/content")).content
    assert len(body) == row.size == pop.package.size
    # renewing an older version is refused: renew the newest
    code, _, err = run(capsys, "package", "renew", pop.package.hash, *d)
    assert code == 2 and "not the newest version" in err


async def test_a_new_content_ends_the_same_content_chain(
    pop: Populated, client: httpx.AsyncClient, tmp_path: Path
):
    store = Store(pop.data_dir)
    renewed = repo.renew_package(store, pop.package)
    src = tmp_path / "changed"
    src.mkdir()
    (src / "a.bin").write_bytes(b"new content")
    changed = repo.add_package(store, src, pop.package.name).row
    (task,) = (await _policy(client, pop)).tasks
    assert task.package_hash == changed.hash and task.same_content_as == ()
    again = repo.renew_package(store, changed)
    (task,) = (await _policy(client, pop)).tasks
    assert task.package_hash == again.hash and task.same_content_as == (changed.hash,)
    assert renewed.hash not in task.same_content_as


def test_adding_expired_content_again_makes_a_valid_version(tmp_path: Path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"z" * 5000)
    store = repo.init_data_dir(tmp_path / "ns")
    first = repo.add_package(store, src, "Z", valid_days=1e-9).row  # expired at once
    assert repo.load_snapshot(store.data_dir, first.hash).expires <= time.time()
    again = repo.add_package(store, src, "Z")
    assert again.changed and again.row.hash != first.hash and again.row.version == 2
    assert repo.load_snapshot(store.data_dir, again.row.hash).expires > time.time() + 86400
    # unchanged and valid: kept
    kept = repo.add_package(store, src, "Z")
    assert not kept.changed and kept.row.hash == again.row.hash


def test_status_warns_about_expired_and_expiring_packages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    store = repo.init_data_dir(tmp_path / "ns")
    for name, days in (("Gone", 1e-9), ("Soon", 2.0), ("Fine", 30.0)):
        (tmp_path / name).write_bytes(name.encode() * 100)
        repo.add_package(store, tmp_path / name, name, valid_days=days)
    d = ("--data", str(store.data_dir))
    code, out, _ = run(capsys, "status", "--json", *d)
    expiring = {e["package"]: e["expired"] for e in json.loads(out)["expiring"]}
    assert code == 0 and expiring == {"Gone": True, "Soon": False}
    code, out, _ = run(capsys, "status", "--expiry-days", "31", *d)
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warnings) == 3
    assert any("'Gone'" in w and "expired at" in w for w in warnings)
    assert any("'Soon'" in w and "expires at" in w for w in warnings)
    # renewed: no longer expired
    assert run(capsys, "package", "renew", "Gone", *d)[0] == 0
    code, out, _ = run(capsys, "status", "--json", *d)
    assert [e["package"] for e in json.loads(out)["expiring"]] == ["Soon"]


# -- removal -------------------------------------------------------------------------------


async def test_task_remove_takes_it_out_of_every_policy_and_the_status(
    pop: Populated, client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
):
    d = ("--data", str(pop.data_dir))
    assert [t.task_id for t in (await _policy(client, pop)).tasks] == [pop.task_id]
    code, out, _ = run(capsys, "task", "remove", pop.task_id, *d)
    assert code == 0 and pop.task_id in out
    assert (await _policy(client, pop)).tasks == ()
    assert Store(pop.data_dir).task_status() == []
    code, _, err = run(capsys, "task", "remove", pop.task_id, *d)
    assert code == 2 and "unknown task" in err


async def test_package_remove_refuses_a_package_in_use_unless_forced(
    pop: Populated, client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
):
    d = ("--data", str(pop.data_dir))
    store = Store(pop.data_dir)
    renewed = repo.renew_package(store, pop.package)
    # an older version no task can reach any more: removed without --force
    code, out, _ = run(capsys, "package", "remove", pop.package.hash, *d)
    assert code == 0 and "0 task(s)" in out
    assert not repo.package_dir(pop.data_dir, pop.package.hash).exists()
    assert [t.package_hash for t in (await _policy(client, pop)).tasks] == [renewed.hash]
    # the newest version, or the package, while a task runs it: refused, nothing changes
    for ref in (renewed.hash, pop.package.name):
        code, _, err = run(capsys, "package", "remove", ref, *d)
        assert code == 2 and "used by 1 task(s)" in err and "--force" in err
        assert repo.package_dir(pop.data_dir, renewed.hash).is_dir()
        assert len((await _policy(client, pop)).tasks) == 1
    code, out, _ = run(capsys, "package", "remove", pop.package.name, "--force", *d)
    assert code == 0 and "1 task(s)" in out
    assert not repo.package_dir(pop.data_dir, renewed.hash).exists()
    assert Store(pop.data_dir).packages() == [] and (await _policy(client, pop)).tasks == ()
    resp = await client.get(f"/pkg/{renewed.hash}/content")
    assert resp.status_code == 404
    code, _, err = run(capsys, "package", "remove", pop.package.name, *d)
    assert code == 2 and "unknown package" in err


# -- the agent and a renewal ---------------------------------------------------------------


@pytest.fixture
def ns(tmp_path: Path) -> NS:
    return make_ns(tmp_path, computers=1)


async def test_an_agent_that_ran_a_package_does_not_run_its_renewal(
    ns: NS, url: str, tmp_path: Path
) -> None:
    guid = ns.guids[0]
    fetcher = CountingFetcher()
    task = ns.add_task()
    with make_agent(ns, url, guid, tmp_path, fetcher=fetcher) as a:
        assert (await a.run_once()).ok
        assert len(ns.runs(guid)) == 1 and fetcher.calls == 1
        store = Store(ns.data)
        row = store.latest_package(name=ns.package_name)
        assert row is not None
        renewed = repo.renew_package(store, row)
        assert (await a.run_once()).ok
        # not fetched, not run again: the job of the old hash stands for the renewal
        assert len(ns.runs(guid)) == 1 and fetcher.calls == 1
        assert a.state.job(task, renewed.hash) is None
        job = a.state.job(task, row.hash)
        assert job is not None and job.state.value == "succeeded"
    # a new agent that never had it fetches and runs the renewal
    with make_agent(ns, url, guid, tmp_path / "fresh", fetcher=fetcher) as b:
        assert (await b.run_once()).ok
        job = b.state.job(task, renewed.hash)
        assert job is not None and job.state.value == "succeeded"


async def test_an_expired_package_is_refused_then_renewed_and_agents_download_it(
    ns: NS, url: str, tmp_path: Path
) -> None:
    """The admin's lifecycle end to end: a package whose snapshot has expired cannot be
    downloaded (every agent refuses an expired snapshot), `package renew` re-signs it, and
    the same agent then downloads and runs it."""
    guid = ns.guids[0]
    store = Store(ns.data)
    (ns.src / "payload.bin").write_bytes(os.urandom(150_000))
    short = repo.add_package(store, ns.src, ns.package_name, valid_days=2 / 86400).row  # 2 s
    snap = repo.load_snapshot(ns.data, short.hash)
    await wait_until(lambda: time.time() > snap.expires + 0.5, what="the snapshot to expire")
    task = ns.add_task()
    with make_agent(ns, url, guid, tmp_path) as a:
        await a.run_once()
        job = a.state.job(task, short.hash)
        assert job is not None and job.state.value != "succeeded"
        assert ns.runs(guid) == []  # nothing ran from an expired package
        renewed = repo.renew_package(store, short)
        for _ in range(5):  # the failed try's back-off may hold the first check-in
            await a.run_once()
            done = a.state.job(task, renewed.hash)
            if done is not None and done.state.value == "succeeded":
                break
        done = a.state.job(task, renewed.hash)
        assert done is not None and done.state.value == "succeeded", done
        assert len(ns.runs(guid)) == 1
    store.close()
