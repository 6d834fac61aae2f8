"""Crash test of the durable status event queue, from the command line.

Starts ``mcast-ns serve`` (HTTPS) as a subprocess on a fresh data directory, lets ``--clients``
concurrent trio/httpx clients (each signing as its own computer, trusting the data
directory's CA) post ``--events`` status events (each retried until
acknowledged), SIGKILLs the server once ``--kill-at`` events are acknowledged, restarts it on
the same port and data directory, waits until the queue is drained, and prints one JSON
object: events, clients, killed_at (events acknowledged when killed), stored_at_kill and
pending_at_kill (rows on disk right after the kill, and how many of them were not yet
processed), acked, duplicates (acks of events already stored: retries across the crash),
retries, rows, processed, counted, lost, twice, computers_ok, wall_s, and engine and
events_per_s (events / wall_s: posted, stored, processed, through one SIGKILL and restart).
A correct server has rows == processed == counted == events and lost == twice == 0.

``--servers N`` runs N ``mcast-ns serve`` processes on the one store; a client whose post
fails tries the next server, and the first server is the one SIGKILLed and restarted.
``--database postgresql`` keeps the store in a private PostgreSQL server the bench starts
(``server_stub.pgserver``: unix socket in a temp dir, fsync on) and stops; the default is
SQLite in the data directory.

    python -m bench.status_queue --events 1000 --clients 50 --kill-at 500
    python -m bench.status_queue --database postgresql --events 10000 --clients 500
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from server_stub.db import Database, open_database
from server_stub.docs import event_xml
from server_stub.pgserver import LocalPostgres, unavailable
from server_stub.store import SCHEMA, EventRecord
from server_stub.testing import Populated, ServerProcess, populate

STATES = ("downloading", "downloaded", "running", "succeeded")


@dataclass
class Run:
    servers: list[ServerProcess]  # servers[0] is the one SIGKILLed
    db: Database
    kill_at: int
    acked: int = 0
    stored: int = 0
    duplicates: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    killed_at: int | None = None
    at_kill: dict[str, int] = field(default_factory=dict)
    restarted: trio.Event = field(default_factory=trio.Event)
    reached: trio.Event = field(default_factory=trio.Event)

    @property
    def server(self) -> ServerProcess:
        return self.servers[0]


def _events_for(computer: str, task_id: str, n: int) -> list[EventRecord]:
    base = time.time()
    return [
        EventRecord(
            event_id=str(uuid.uuid4()),
            computer=computer,
            task_id=task_id,
            state=STATES[min(i, len(STATES) - 1)],
            exit_code=0 if i == n - 1 else None,
            bytes_multicast=1000 * i,
            bytes_http=10 * i,
            message=f"event {i} of {computer[:8]}",
            agent_time=base + i * 0.001,
        )
        for i in range(n)
    ]


async def _post_until_acked(client: httpx.AsyncClient, run: Run, body: bytes, first: int) -> None:
    """Post until acknowledged, starting with server ``first``; a failed try moves on to the
    next server (with one server: retries the same), as an agent's outbox would resend."""
    k = first
    while True:
        url = run.servers[k % len(run.servers)].url
        try:
            resp = await client.post(f"{url}/PostEvent.aspx", content=body)
        except httpx.TransportError:
            run.retries += 1
            k += 1
            await trio.sleep(0.05)
            continue
        if resp.status_code >= 500:
            run.retries += 1
            k += 1
            await trio.sleep(0.05)
            continue
        if resp.status_code != 200:
            run.errors.append(f"{resp.status_code}: {resp.text[:200]}")
            return
        run.acked += 1
        if 'result="duplicate"' in resp.text:
            run.duplicates += 1
        else:
            run.stored += 1
        if run.acked >= run.kill_at:
            run.reached.set()
        return


async def _client(run: Run, fixture: Populated, guid: str, events: list[EventRecord]) -> None:
    timeout = httpx.Timeout(10.0, connect=2.0)
    index = fixture.computers.index(guid)
    async with fixture.client(run.server.url, index, timeout=timeout) as client:
        for ev in events:
            await _post_until_acked(client, run, event_xml(ev), first=index)


async def _killer(run: Run) -> None:
    await run.reached.wait()
    run.killed_at = run.acked
    run.server.kill9()
    fig = queue_figures(run.db)
    run.at_kill = {"rows": fig["rows"], "pending": fig["rows"] - fig["processed"]}
    await trio.to_thread.run_sync(run.server.start)


def queue_figures(database: Database) -> dict[str, Any]:
    """The queue as the server's store holds it (read beside the server process)."""
    with database.read() as db:
        rows, processed = db.execute(
            "SELECT count(*), coalesce(sum(processed), 0) FROM events"
        ).fetchone()
        counted = db.execute("SELECT coalesce(sum(events), 0) FROM task_status").fetchone()[0]
        per = dict(db.execute("SELECT computer, events FROM task_status").fetchall())
    return {
        "rows": int(rows),
        "processed": int(processed),
        "counted": int(counted),
        "per_computer": per,
    }


async def wait_drained(database: Database, limit_s: float) -> dict[str, Any]:
    """Poll the server's database (another process) until no event is pending."""
    deadline = trio.current_time() + limit_s
    fig = queue_figures(database)
    while fig["processed"] < fig["rows"] and trio.current_time() < deadline:
        await trio.sleep(0.05)
        fig = queue_figures(database)
    return fig


async def run_crash_test(
    data_dir: Path,
    *,
    events: int = 1000,
    clients: int = 50,
    kill_at: int | None = None,
    database: str | None = None,
    servers: int = 1,
) -> dict[str, Any]:
    """The whole scenario; returns the figures (see the module docstring). ``database``: a
    PostgreSQL URL for the store (default SQLite in ``data_dir``); ``servers``: how many
    ``mcast-ns serve`` processes share the store (client i starts with server i mod N; the
    first server is the one killed)."""
    per_client = events // clients
    if per_client * clients != events:
        raise ValueError("events must be a multiple of clients")
    fixture = populate(data_dir, computers=clients, package_bytes=1000, database=database)
    store_db = open_database(data_dir, SCHEMA)
    try:
        return await _run(fixture, store_db, events, clients, kill_at, servers)
    finally:
        store_db.close()


async def _run(
    fixture: Populated,
    store_db: Database,
    events: int,
    clients: int,
    kill_at: int | None,
    servers: int,
) -> dict[str, Any]:
    data_dir = fixture.data_dir
    per_client = events // clients
    procs = [ServerProcess(data_dir) for _ in range(servers)]
    run = Run(procs, store_db, kill_at if kill_at is not None else events // 2)
    for proc in procs:
        await trio.to_thread.run_sync(proc.start)
    t0 = time.monotonic()
    try:
        async with trio.open_nursery() as nursery:
            if 0 < run.kill_at <= events:
                nursery.start_soon(_killer, run)
            async with trio.open_nursery() as posting:
                for guid in fixture.computers:
                    events_of = _events_for(guid, fixture.task_id, per_client)
                    posting.start_soon(_client, run, fixture, guid, events_of)
            run.reached.set()  # let the killer finish if the threshold was never reached
        await wait_drained(store_db, limit_s=60)
        wall = time.monotonic() - t0
    finally:
        for proc in procs:
            proc.stop()
    fig = queue_figures(store_db)
    per = fig.pop("per_computer")
    return {
        "engine": store_db.engine,
        "servers": servers,
        "events": events,
        "clients": clients,
        "killed_at": run.killed_at,
        "stored_at_kill": run.at_kill.get("rows"),
        "pending_at_kill": run.at_kill.get("pending"),
        "acked": run.acked,
        "duplicates": run.duplicates,
        "retries": run.retries,
        "errors": run.errors[:5],
        **fig,
        "lost": events - fig["rows"],
        "twice": fig["counted"] - fig["rows"],
        "computers_ok": sum(1 for g in fixture.computers if per.get(g) == per_client),
        "wall_s": round(wall, 3),
        "events_per_s": round(events / wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--kill-at", type=int, default=None, help="acked events before SIGKILL")
    p.add_argument("--data", type=Path, default=None, help="data dir (default: a temp dir)")
    p.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="the store's engine; postgresql starts a private server for the run",
    )
    p.add_argument(
        "--servers",
        type=int,
        default=1,
        help="mcast-ns serve processes sharing the store (the first is the one killed)",
    )
    args = p.parse_args(argv)
    if args.servers < 1:
        p.error("--servers must be at least 1")
    if args.database == "postgresql" and (reason := unavailable()):
        p.error(f"--database postgresql: {reason}")
    with tempfile.TemporaryDirectory(prefix="status-queue-") as tmp, ExitStack() as stack:
        data = args.data or Path(tmp) / "ns"
        url = None
        if args.database == "postgresql":
            url = stack.enter_context(LocalPostgres(durable=True)).create_database("status_queue")
        out = trio.run(
            lambda: run_crash_test(
                data, events=args.events, clients=args.clients, kill_at=args.kill_at,
                database=url, servers=args.servers,
            )
        )  # fmt: skip
    print(json.dumps(out))
    ok = out["lost"] == 0 and out["twice"] == 0 and out["processed"] == out["events"]
    return 0 if ok and not out["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
