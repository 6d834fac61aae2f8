"""The agent's durable state: one SQLite database in the state directory.

This module owns the schema and every SQL statement of the agent:

- ``jobs``: one row per (task, package hash): the task as the policy gave it and where it is
  in the state machine (:class:`mcast.fleet.JobState`; its legal transitions are
  :data:`TRANSITIONS`, here), the first download attempt (TotalTime), the failed download
  attempts and when to try again, the result;
- ``packages``: the package cache by hash (``STATE/cache/<hash>/``), complete or not, with
  the package's session key and when it was last downloaded or run (the peer cache);
- ``trust``: the newest snapshot version accepted per package name (rollback protection);
- ``events``: every status event the agent created, with its UUID; those not yet
  acknowledged are the outbox, retried with back-off;
- ``meta``: small key/values (the last Agent Settings).

Durability (``mcast.durable``): WAL with ``synchronous=FULL``; every change is one
``BEGIN IMMEDIATE .. COMMIT`` and a state change and the status event that reports it are
written in the same transaction, so a status is never lost nor invented by a crash.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from mcast.durable import open_store, transaction
from mcast.errors import StorageError
from mcast.fleet import JobState

__all__ = [
    "TRANSITIONS",
    "AgentState",
    "CacheEntry",
    "Job",
    "JobState",
    "OutboxEvent",
    "Report",
    "StateError",
]

DB_NAME = "agent.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    task_id      TEXT NOT NULL,
    package_hash TEXT NOT NULL,
    package_id   TEXT NOT NULL,
    package_name TEXT NOT NULL,
    command      TEXT NOT NULL,
    schedule     TEXT NOT NULL,
    credentials  TEXT NOT NULL,
    run_from     TEXT NOT NULL,
    state        TEXT NOT NULL,
    first_try    REAL,
    exit_code    INTEGER,
    message      TEXT NOT NULL DEFAULT '',
    bytes_multicast INTEGER NOT NULL DEFAULT 0,
    bytes_http   INTEGER NOT NULL DEFAULT 0,
    route        TEXT NOT NULL DEFAULT '',
    runs         INTEGER NOT NULL DEFAULT 0,
    download_attempts INTEGER NOT NULL DEFAULT 0,
    next_try     REAL NOT NULL DEFAULT 0,
    created      REAL NOT NULL,
    updated      REAL NOT NULL,
    PRIMARY KEY (task_id, package_hash)
);
CREATE TABLE IF NOT EXISTS packages (
    hash     TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    version  INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    downloads INTEGER NOT NULL DEFAULT 0,
    added    REAL NOT NULL,
    session_key TEXT NOT NULL DEFAULT '',
    used     REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS trust (
    name    TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    task_id    TEXT NOT NULL,
    state      TEXT NOT NULL,
    exit_code  INTEGER,
    bytes_multicast INTEGER NOT NULL,
    bytes_http INTEGER NOT NULL,
    message    TEXT NOT NULL,
    agent_time REAL NOT NULL,
    acked      INTEGER NOT NULL DEFAULT 0,
    result     TEXT NOT NULL DEFAULT '',
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_try   REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_outbox ON events(acked, next_try, seq);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


# columns added since the first schema: (table, column, definition), added to an older database
MIGRATIONS: tuple[tuple[str, str, str], ...] = (
    ("jobs", "download_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "next_try", "REAL NOT NULL DEFAULT 0"),
    ("packages", "session_key", "TEXT NOT NULL DEFAULT ''"),
    ("packages", "used", "REAL NOT NULL DEFAULT 0"),
)


# the legal transitions, in one place
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.RECEIVED: frozenset({JobState.DOWNLOADING, JobState.FAILED, JobState.SUPERSEDED}),
    JobState.DOWNLOADING: frozenset(
        {JobState.DOWNLOADING, JobState.DOWNLOADED, JobState.FAILED, JobState.SUPERSEDED}
    ),
    JobState.DOWNLOADED: frozenset({JobState.SCHEDULED, JobState.FAILED, JobState.SUPERSEDED}),
    JobState.SCHEDULED: frozenset(
        {JobState.RUNNING, JobState.DOWNLOADING, JobState.FAILED, JobState.SUPERSEDED}
    ),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.SUPERSEDED: frozenset(),
}


class StateError(StorageError):
    """An illegal transition (a bug), or a state directory we cannot use."""


@dataclass(frozen=True)
class Job:
    task_id: str
    package_hash: str
    package_id: str
    package_name: str
    command: str
    schedule: str
    credentials: str
    run_from: str
    state: JobState
    first_try: float | None
    exit_code: int | None
    message: str
    bytes_multicast: int
    bytes_http: int
    route: str
    runs: int
    download_attempts: int = 0  # failed download attempts so far (survives restarts)
    next_try: float = 0.0  # epoch seconds before which the download is not tried again


@dataclass(frozen=True)
class CacheEntry:
    """A package complete in the cache, for the peer cache."""

    hash: str
    size: int
    session_key: bytes | None
    used: float  # epoch seconds it was last downloaded or run


@dataclass(frozen=True)
class OutboxEvent:
    event_id: str
    task_id: str
    state: str
    exit_code: int | None
    bytes_multicast: int
    bytes_http: int
    message: str
    agent_time: float
    attempts: int


@dataclass(frozen=True)
class Report:
    """What a transition reports to the server (the status event's figures)."""

    exit_code: int | None = None
    bytes_multicast: int = 0
    bytes_http: int = 0
    message: str = ""


_TERMINAL = tuple(s.value for s in JobState if s.terminal)
_JOB_COLS = (
    "task_id, package_hash, package_id, package_name, command, schedule, credentials, "
    "run_from, state, first_try, exit_code, message, bytes_multicast, bytes_http, route, runs, "
    "download_attempts, next_try"
)


def _job(row: tuple[object, ...]) -> Job:
    values = list(row)
    values[8] = JobState(values[8])
    return Job(*values)  # type: ignore[arg-type]


class AgentState:
    """One connection to ``STATE/agent.sqlite3`` (the agent is single-threaded)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "cache").mkdir(exist_ok=True)
            self._db = open_store(self.dir / DB_NAME, SCHEMA)
            self._migrate()
        except (OSError, StorageError, sqlite3.Error) as exc:
            raise StateError(f"cannot use state directory {self.dir}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        with self._write() as db:
            for table, column, definition in MIGRATIONS:
                have = {str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db)

    # -- paths ---------------------------------------------------------------------------
    def cache_dir(self, package_hash: str) -> Path:
        return self.dir / "cache" / package_hash

    # -- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                "excluded.value",
                (key, value),
            )

    # -- trust ---------------------------------------------------------------------------
    def trusted_versions(self) -> dict[str, int]:
        return {str(n): int(v) for n, v in self._db.execute("SELECT name, version FROM trust")}

    def save_trusted(self, newest: dict[str, int]) -> None:
        with self._write() as db:
            for name, version in newest.items():
                db.execute(
                    "INSERT INTO trust VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                    "version = max(version, excluded.version)",
                    (name, version),
                )

    # -- package cache -------------------------------------------------------------------
    def package_complete(self, package_hash: str) -> bool:
        row = self._db.execute(
            "SELECT complete FROM packages WHERE hash = ?", (package_hash,)
        ).fetchone()
        return bool(row and row[0])

    def package_downloads(self, package_hash: str) -> int:
        row = self._db.execute(
            "SELECT downloads FROM packages WHERE hash = ?", (package_hash,)
        ).fetchone()
        return int(row[0]) if row else 0

    def mark_package(
        self,
        package_hash: str,
        name: str,
        version: int,
        size: int,
        *,
        complete: bool,
        session_key: bytes | None = None,
    ) -> None:
        now = time.time()
        key = session_key.hex() if session_key else ""
        with self._write() as db:
            db.execute(
                "INSERT INTO packages (hash, name, version, size, complete, downloads, added, "
                "session_key, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(hash) DO "
                "UPDATE SET complete = excluded.complete, "
                "downloads = downloads + excluded.downloads, used = excluded.used, "
                "session_key = iif(excluded.session_key != '', excluded.session_key, session_key)",
                (package_hash, name, version, size, int(complete), int(complete), now, key, now),
            )

    def touch_package(self, package_hash: str, when: float | None = None) -> None:
        """Record a use of the package (it ran): the peer cache offers it from then on."""
        with self._write() as db:
            db.execute(
                "UPDATE packages SET used = ? WHERE hash = ?",
                (time.time() if when is None else when, package_hash),
            )

    def cache_entries(self) -> list[CacheEntry]:
        """The complete packages, most recently used first."""
        rows = self._db.execute(
            "SELECT hash, size, session_key, used FROM packages WHERE complete = 1 "
            "ORDER BY used DESC, hash"
        ).fetchall()
        return [
            CacheEntry(str(h), int(n), bytes.fromhex(k) if k else None, float(u))
            for h, n, k, u in rows
        ]

    def forget_package(self, package_hash: str) -> None:
        with self._write() as db:
            db.execute("UPDATE packages SET complete = 0 WHERE hash = ?", (package_hash,))

    # -- jobs ----------------------------------------------------------------------------
    def job(self, task_id: str, package_hash: str) -> Job | None:
        row = self._db.execute(
            f"SELECT {_JOB_COLS} FROM jobs WHERE task_id = ? AND package_hash = ?",
            (task_id, package_hash),
        ).fetchone()
        return None if row is None else _job(row)

    def jobs(self, *, active_only: bool = False) -> list[Job]:
        where = ""
        args: tuple[str, ...] = ()
        if active_only:  # the terminal state names come from mcast.fleet.JobState
            where = f"WHERE state NOT IN ({', '.join('?' * len(_TERMINAL))})"
            args = _TERMINAL
        rows = self._db.execute(
            f"SELECT {_JOB_COLS} FROM jobs {where} ORDER BY created, rowid", args
        )
        return [_job(r) for r in rows]

    def add_job(self, job: Job, computer: str, report: Report) -> bool:
        """Record a newly received job and its ``received`` event; False if already known."""
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                f"INSERT OR IGNORE INTO jobs ({_JOB_COLS}, created, updated) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.task_id,
                    job.package_hash,
                    job.package_id,
                    job.package_name,
                    job.command,
                    job.schedule,
                    job.credentials,
                    job.run_from,
                    JobState.RECEIVED.value,
                    None,
                    None,
                    report.message,
                    0,
                    0,
                    "",
                    0,
                    0,
                    0.0,
                    now,
                    now,
                ),
            )
            if cur.rowcount != 1:
                return False
            self._add_event(db, job.task_id, JobState.RECEIVED.value, report, now)
        return True

    def transition(
        self,
        job: Job,
        new: JobState,
        report: Report | None = None,
        *,
        event: bool = True,
        route: str | None = None,
        count_run: bool = False,
        retry_at: float | None = None,
    ) -> Job:
        """Move ``job`` to ``new`` and (unless ``event`` is False) queue its status event,
        in one transaction. ``retry_at``: a download attempt failed; count it and do not try
        again before that time. Returns the job as stored."""
        report = report or Report()
        now = time.time()
        with self._write() as db:
            row = db.execute(
                "SELECT state FROM jobs WHERE task_id = ? AND package_hash = ?",
                (job.task_id, job.package_hash),
            ).fetchone()
            if row is None:
                raise StateError(f"no job {job.task_id}/{job.package_hash[:12]}")
            current = JobState(row[0])
            if new not in TRANSITIONS[current]:
                raise StateError(
                    f"job {job.task_id}: illegal transition {current.value} -> {new.value}"
                )
            db.execute(
                "UPDATE jobs SET state = ?, updated = ?, "
                "first_try = CASE WHEN ? = 'downloading' THEN coalesce(first_try, ?) "
                "ELSE first_try END, "
                "exit_code = coalesce(?, exit_code), message = ?, "
                "bytes_multicast = max(bytes_multicast, ?), bytes_http = max(bytes_http, ?), "
                "route = coalesce(?, route), runs = runs + ?, "
                "download_attempts = download_attempts + ?, "
                "next_try = coalesce(?, next_try) "
                "WHERE task_id = ? AND package_hash = ?",
                (
                    new.value,
                    now,
                    new.value,
                    now,
                    report.exit_code,
                    report.message,
                    report.bytes_multicast,
                    report.bytes_http,
                    route,
                    int(count_run),
                    int(retry_at is not None),
                    retry_at,
                    job.task_id,
                    job.package_hash,
                ),
            )
            if event:
                self._add_event(db, job.task_id, new.value, report, now)
        stored = self.job(job.task_id, job.package_hash)
        assert stored is not None
        return stored

    # -- events / outbox -----------------------------------------------------------------
    def _add_event(
        self, db: sqlite3.Connection, task_id: str, state: str, report: Report, now: float
    ) -> None:
        # agent times of one task strictly increase, so the server's fold sees them in order
        (last,) = db.execute(
            "SELECT coalesce(max(agent_time), 0) FROM events WHERE task_id = ?", (task_id,)
        ).fetchone()
        agent_time = max(now, float(last) + 0.001)
        db.execute(
            "INSERT INTO events (event_id, task_id, state, exit_code, bytes_multicast, "
            "bytes_http, message, agent_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(uuid.uuid4()),
                task_id,
                state,
                report.exit_code,
                report.bytes_multicast,
                report.bytes_http,
                report.message,
                agent_time,
            ),
        )

    def outbox(self, now: float | None = None) -> list[OutboxEvent]:
        """Unacknowledged events, oldest first (only those due at ``now`` if given)."""
        sql = (
            "SELECT event_id, task_id, state, exit_code, bytes_multicast, bytes_http, message, "
            "agent_time, attempts FROM events WHERE acked = 0"
        )
        args: tuple[float, ...] = ()
        if now is not None:
            sql += " AND next_try <= ?"
            args = (now,)
        rows = self._db.execute(sql + " ORDER BY seq", args).fetchall()
        return [OutboxEvent(*r) for r in rows]

    def next_outbox_try(self) -> float | None:
        (t,) = self._db.execute("SELECT min(next_try) FROM events WHERE acked = 0").fetchone()
        return None if t is None else float(t)

    def ack_event(self, event_id: str, result: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE events SET acked = 1, result = ? WHERE event_id = ?", (result, event_id)
            )

    def retry_event_later(self, event_id: str, next_try: float) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE events SET attempts = attempts + 1, next_try = ? WHERE event_id = ?",
                (next_try, event_id),
            )

    def events(self, task_id: str | None = None) -> list[tuple[str, str, int, str]]:
        """(event id, state, acked, result) of every event, oldest first (for tests, status)."""
        sql = "SELECT event_id, state, acked, result FROM events"
        args: tuple[str, ...] = ()
        if task_id is not None:
            sql += " WHERE task_id = ?"
            args = (task_id,)
        return [
            (str(a), str(b), int(c), str(d))
            for a, b, c, d in self._db.execute(sql + " ORDER BY seq", args)
        ]
