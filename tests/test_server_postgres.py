"""The store on PostgreSQL: ``init --database`` and where it is recorded, clear errors when the
database cannot be reached, and one event queue shared by several servers, each event
processed exactly once (the store-level race runs on SQLite too)."""

from __future__ import annotations

import stat
import threading
import time
import uuid
from pathlib import Path

import pytest
import trio

from mcast import fleet
from server_stub.cli import main
from server_stub.db import URL_FILE, database_url
from server_stub.docs import event_xml
from server_stub.pgserver import LocalPostgres
from server_stub.store import DB_NAME, EventRecord, Store
from server_stub.testing import Populated, ServerProcess, populate
from tests.harness import await_for


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _event(guid: str, task_id: str, i: int) -> EventRecord:
    return EventRecord(str(uuid.uuid4()), guid, task_id, "downloading", None, i, 0,
                       f"event {i}", time.time() + i * 0.001)  # fmt: skip


def test_init_records_the_database_and_every_command_uses_it(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "ns"
    code, out, err = run(capsys, "init", "--data", str(data), "--database", pg_url)
    assert code == 0, err
    assert "store: postgresql://" in out
    url_file = data / URL_FILE
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o600  # it may carry a password
    assert database_url(data) == pg_url
    code, _, err = run(capsys, "settings", "set", "multicastEnabled", "no", "--data", str(data))
    assert code == 0, err
    assert not (data / DB_NAME).exists()  # nothing went to SQLite
    import psycopg  # present: pg_url would have skipped otherwise

    with psycopg.connect(pg_url) as conn:
        (value,) = conn.execute(
            "SELECT value FROM settings WHERE key = 'multicastEnabled'"
        ).fetchone()
    assert value == "false"
    # init again with the same URL is idempotent; another store is refused
    assert run(capsys, "init", "--data", str(data), "--database", pg_url)[0] == 0
    code, _, err = run(capsys, "init", "--data", str(data), "--database", pg_url + "x")
    assert code == 2 and "already uses" in err


def test_a_sqlite_data_dir_cannot_move_to_postgresql(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "ns"
    assert run(capsys, "init", "--data", str(data))[0] == 0
    code, _, err = run(capsys, "init", "--data", str(data), "--database", pg_url)
    assert code == 2 and "already has its store" in err
    assert database_url(data) is None


def test_an_unreachable_database_is_one_line_and_exit_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg", reason="psycopg not installed")
    nowhere = tmp_path / "no-server"
    nowhere.mkdir()
    url = f"postgresql://mcast:s3cret@/ns?host={nowhere}&port=5432"
    code, _, err = run(capsys, "init", "--data", str(tmp_path / "ns"), "--database", url)
    assert code == 4
    assert err.startswith("mcast-ns: error: cannot use PostgreSQL at") and err.count("\n") == 1
    assert "s3cret" not in err  # the password is never printed
    assert not (tmp_path / "ns" / URL_FILE).exists()  # nothing recorded: init can be re-run


def test_a_command_on_a_database_that_went_away_is_exit_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_server: LocalPostgres
) -> None:
    # a server of its own to stop (pg_server: only so that the test skips where none starts)
    with LocalPostgres(durable=False) as pg:
        url = pg.create_database()
        data = tmp_path / "ns"
        assert run(capsys, "init", "--data", str(data), "--database", url)[0] == 0
    code, _, err = run(capsys, "status", "--data", str(data))
    assert code == 4 and "cannot use PostgreSQL" in err and err.count("\n") == 1


def test_a_url_that_is_not_postgresql_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "init", "--data", str(tmp_path / "ns"), "--database", "mysql://x/y")
    assert code == 2 and "not a PostgreSQL URL" in err
    assert not (tmp_path / "ns").exists()


def test_concurrent_processors_fold_each_event_once(
    tmp_path: Path, ns_database: str | None
) -> None:
    """Two stores (two connections, as two servers have) drain one queue in small batches at
    once: every event is folded exactly once, whichever store takes it."""
    pop = populate(tmp_path / "ns", computers=4, package_bytes=10, database=ns_database)
    stores = [Store(pop.data_dir), Store(pop.data_dir)]
    try:
        per = 150
        for guid in pop.computers:
            for i in range(per):
                assert stores[0].record_event(_event(guid, pop.task_id, i))
        total = per * len(pop.computers)
        took = [0, 0]
        start = threading.Barrier(2)

        def drain(k: int) -> None:
            start.wait()
            while n := stores[k].process_events(limit=7):
                took[k] += n

        threads = [threading.Thread(target=drain, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(took) == total  # no event taken twice, none left behind
        counts = stores[1].queue_counts()
        assert counts == {"events": total, "processed": total, "pending": 0, "counted": total}
        assert {r.computer: r.events for r in stores[0].task_status()} == dict.fromkeys(
            pop.computers, per
        )
    finally:
        for s in stores:
            s.close()


async def _post_all(pop: Populated, urls: list[str], per: int) -> int:
    """Each computer posts ``per`` events, alternating between the servers; every third event
    is also re-sent to the other server (a retry that lands elsewhere). Returns the acks."""
    acks = 0

    async def one(index: int, guid: str) -> None:
        nonlocal acks
        clients = [pop.client(u, index, timeout=30) for u in urls]
        try:
            for i in range(per):
                body = event_xml(_event(guid, pop.task_id, i))
                sends = [i % 2, 1 - i % 2] if i % 3 == 0 else [i % 2]
                for k in sends:
                    resp = await clients[k].post("/PostEvent.aspx", content=body)
                    assert resp.status_code == 200, resp.text
                    acks += 1
        finally:
            for c in clients:
                await c.aclose()

    async with trio.open_nursery() as nursery:
        for index, guid in enumerate(pop.computers):
            nursery.start_soon(one, index, guid)
    return acks


@pytest.mark.slow
async def test_two_servers_on_one_store_process_every_event_once(
    tmp_path: Path, pg_url: str
) -> None:
    pop = populate(tmp_path / "ns", computers=10, package_bytes=1000, database=pg_url)
    servers = [ServerProcess(pop.data_dir), ServerProcess(pop.data_dir)]
    store = Store(pop.data_dir)
    try:
        urls = [await trio.to_thread.run_sync(s.start) for s in servers]
        per = 40
        total = per * len(pop.computers)
        acks = await _post_all(pop, urls, per)
        assert acks == total + len(pop.computers) * len(range(0, per, 3))
        counts = await await_for(
            lambda: (c := store.queue_counts())["pending"] == 0 and c, "the queue drained"
        )
        assert counts == {"events": total, "processed": total, "pending": 0, "counted": total}
        rows = {r.computer: r for r in store.task_status()}
        assert {g: rows[g].events for g in pop.computers} == dict.fromkeys(pop.computers, per)
        assert {rows[g].bytes_multicast for g in pop.computers} == {per - 1}  # the newest
    finally:
        store.close()
        for s in servers:
            s.stop()


async def test_a_server_answers_from_the_shared_store(tmp_path: Path, pg_url: str) -> None:
    """A setting changed by another process while the server runs is what it hands out."""
    pop = populate(tmp_path / "ns", computers=1, package_bytes=1000, database=pg_url)
    server = ServerProcess(pop.data_dir)
    try:
        url = await trio.to_thread.run_sync(server.start)
        data = str(pop.data_dir)
        assert main(["settings", "set", "peerCacheHours", "7", "--data", data]) == 0
        async with pop.client(url, timeout=30) as c:
            resp = await c.get("/GetClientPolicies.aspx", params={"guid": pop.computers[0]})
        assert resp.status_code == 200, resp.text
        assert fleet.parse_policy(resp.content).settings.peer_cache_hours == 7
    finally:
        server.stop()


def test_store_sql_with_percent_literals_and_placeholders_runs_on_both(
    tmp_path: Path, ns_database: str | None
) -> None:
    """The adapter's translation: a ``%`` in a literal stays a ``%`` while ``?`` binds."""
    pop = populate(tmp_path / "ns", computers=1, package_bytes=10, database=ns_database)
    store = Store(pop.data_dir)
    try:
        with store._read() as db:
            rows = db.execute(
                "SELECT key FROM settings WHERE key LIKE 'multicast%' AND value != ? ORDER BY key",
                ("no such value",),
            ).fetchall()
            (pct,) = db.execute("SELECT '100%'").fetchone()
        assert [k for (k,) in rows] == ["multicastEnabled", "multicastHoldSecs"]
        assert pct == "100%"
    finally:
        store.close()


@pytest.mark.slow
async def test_one_of_two_servers_sigkilled_mid_run_loses_and_doubles_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    """Two serve processes on one PostgreSQL store, the first SIGKILLed half-way and
    restarted; clients whose post fails resend to the other server."""
    from bench.status_queue import run_crash_test

    out = await run_crash_test(
        tmp_path / "ns", events=1000, clients=50, kill_at=500, database=pg_url, servers=2
    )
    print(out)
    assert out["engine"] == "postgresql" and out["servers"] == 2
    assert out["errors"] == []
    assert out["killed_at"] is not None and 500 <= out["killed_at"] < 1000
    assert out["acked"] == 1000
    assert out["rows"] == out["processed"] == out["counted"] == 1000
    assert out["lost"] == 0 and out["twice"] == 0
    assert out["computers_ok"] == 50
