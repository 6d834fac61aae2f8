"""The server's store: SQLite in the data directory (the default) or a PostgreSQL database.

This module owns the schema and every SQL statement of the server: agent settings, sites and
their subnets, the discovery key of each site (and one server-wide key for addresses in no
site), package servers, packages (one row per signed version), tasks and their target
computers, each computer's secret (approved, or an enrolment request waiting for approval),
the status event queue and the task status it is processed into.

Every statement is written once, with ``?`` placeholders and SQL both engines run (``INSERT
... ON CONFLICT``, ``CASE``); :mod:`server_stub.db` runs it on SQLite (``mcast.durable``'s
rules: WAL, ``synchronous=FULL``, every write ``BEGIN IMMEDIATE``, so a write that returned is
on disk) or on PostgreSQL (a connection pool; several servers may share the database). The
HTTP app calls a :class:`Store` from worker threads, the CLI calls it directly.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mcast import argtypes
from mcast.errors import UsageError
from mcast.fleet import PENDING, SETTING_DEFAULTS, DocumentError, StatusEvent, parse_setting

from .db import DB_NAME, Conn, Database, open_database

# One schema for both engines: DOUBLE PRECISION for times (PostgreSQL's REAL is 4 bytes),
# BIGINT for byte counts, {serial_pk} for the queue's sequence number (see server_stub.db).
SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS subnets (
    cidr TEXT PRIMARY KEY,
    site TEXT NOT NULL REFERENCES sites(name)
);
CREATE TABLE IF NOT EXISTS discovery_keys (
    site TEXT PRIMARY KEY,
    key  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pkgservers (
    url  TEXT PRIMARY KEY,
    site TEXT NOT NULL REFERENCES sites(name)
);
CREATE TABLE IF NOT EXISTS packages (
    hash        TEXT PRIMARY KEY,
    package_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    size        BIGINT NOT NULL,
    content_hash TEXT NOT NULL,
    session_key TEXT NOT NULL,
    added       DOUBLE PRECISION NOT NULL,
    UNIQUE (package_id, version)
);
CREATE INDEX IF NOT EXISTS packages_by_name ON packages(name, version);
CREATE TABLE IF NOT EXISTS computers (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS credentials (
    guid     TEXT PRIMARY KEY,
    secret   TEXT NOT NULL,
    approved INTEGER NOT NULL,
    created  DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id     TEXT PRIMARY KEY,
    package_id  TEXT NOT NULL,
    command     TEXT NOT NULL,
    schedule    TEXT NOT NULL,
    credentials TEXT NOT NULL,
    run_from    TEXT NOT NULL,
    created     DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS task_targets (
    task_id  TEXT NOT NULL REFERENCES tasks(task_id),
    computer TEXT NOT NULL REFERENCES computers(guid),
    PRIMARY KEY (task_id, computer)
);
CREATE TABLE IF NOT EXISTS events (
    seq        {serial_pk},
    event_id   TEXT NOT NULL UNIQUE,
    digest     TEXT NOT NULL,
    computer   TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    state      TEXT NOT NULL,
    exit_code  INTEGER,
    bytes_multicast BIGINT NOT NULL,
    bytes_http BIGINT NOT NULL,
    message    TEXT NOT NULL,
    agent_time DOUBLE PRECISION NOT NULL,
    received   DOUBLE PRECISION NOT NULL,
    processed  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_unprocessed ON events(processed, seq);
CREATE TABLE IF NOT EXISTS task_status (
    computer   TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    state      TEXT NOT NULL,
    exit_code  INTEGER,
    bytes_multicast BIGINT NOT NULL,
    bytes_http BIGINT NOT NULL,
    message    TEXT NOT NULL,
    agent_time DOUBLE PRECISION NOT NULL,
    events     INTEGER NOT NULL,
    updated    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (computer, task_id)
);
"""

SERVER_SITE = "serverSite"  # the site the Notification Server itself belongs to
# the Agent Settings of every policy, and the one setting that stays on the server
DEFAULT_SETTINGS: dict[str, str] = {**SETTING_DEFAULTS, SERVER_SITE: ""}


class StoreError(UsageError, ValueError):
    """A store operation was refused (unknown name, duplicate, bad value)."""


def check_setting(key: str, value: str) -> str:
    """``value`` as setting ``key`` stores it (Agent Settings normalised), or StoreError
    with one line that says which rule it breaks (type, range, unknown key)."""
    if key not in DEFAULT_SETTINGS:
        raise StoreError(f"unknown setting {key!r}; known: {', '.join(DEFAULT_SETTINGS)}")
    if key == SERVER_SITE:  # "" (none) or a site's name; `set_setting` checks it exists
        value = value.strip()
        if value:
            try:
                argtypes.name(value)
            except argparse.ArgumentTypeError as exc:
                raise StoreError(f"{SERVER_SITE} {value[:40]!r}: {exc}") from None
        return value
    try:
        return parse_setting(key, value)
    except DocumentError as exc:
        raise StoreError(str(exc)) from None


@dataclass(frozen=True)
class PackageRow:
    hash: str
    package_id: str
    name: str
    version: int
    size: int
    content_hash: str
    session_key: str


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    package_id: str
    command: str
    schedule: str
    credentials: str
    run_from: str


# one status event as the agent sent it (validated by the caller); the name the store's
# callers have always used for it
EventRecord = StatusEvent


def event_digest(ev: StatusEvent) -> str:
    """Identity of an event's content, to tell a retry from a different event reusing an id."""
    return "|".join(
        str(v)
        for v in (
            ev.computer,
            ev.task_id,
            ev.state,
            ev.exit_code,
            ev.bytes_multicast,
            ev.bytes_http,
            ev.message,
            repr(ev.agent_time),
        )
    )


@dataclass(frozen=True)
class StatusRow:
    computer: str
    computer_name: str
    task_id: str
    package_name: str
    state: str
    exit_code: int | None
    bytes_multicast: int
    bytes_http: int
    events: int
    message: str


class Store:
    """The store of one data directory (``DATA/ns.sqlite3``, or the PostgreSQL database
    ``DATA/database.url`` names) with the server's operations."""

    def __init__(self, data_dir: Path, database: str | None = None) -> None:
        """``database``: a PostgreSQL URL to use instead of the one the directory names."""
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self._db: Database = open_database(self.data_dir, SCHEMA, database)
        self.engine = self._db.engine
        with self._write() as db:
            for key, value in DEFAULT_SETTINGS.items():
                db.execute(
                    "INSERT INTO settings VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, value)
                )

    @property
    def where(self) -> str:
        """Where the store is (a path, or the PostgreSQL URL without its password)."""
        return self._db.where

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[Conn]:
        """One durable transaction: committed (on disk) on exit, rolled back on error."""
        with self._db.write() as db:
            yield db

    @contextmanager
    def _read(self) -> Iterator[Conn]:
        with self._db.read() as db:
            yield db

    # -- settings ----------------------------------------------------------------------
    def settings(self) -> dict[str, str]:
        with self._read() as db:
            return dict(db.execute("SELECT key, value FROM settings").fetchall())

    def set_setting(self, key: str, value: str) -> str:
        """Set one setting; returns the value as stored (Agent Settings are normalised)."""
        value = check_setting(key, value)
        with self._write() as db:
            known = db.execute("SELECT 1 FROM sites WHERE name = ?", (value,)).fetchone()
            if key == SERVER_SITE and value and not known:
                raise StoreError(f"unknown site {value!r} (add it with `site add`)")
            db.execute("UPDATE settings SET value = ? WHERE key = ?", (value, key))
        return value

    # -- sites, subnets, package servers -----------------------------------------------
    def add_site(self, name: str, subnets: list[str]) -> None:
        nets = []
        for cidr in subnets:
            try:
                nets.append(str(ipaddress.ip_network(cidr, strict=False)))
            except ValueError:
                raise StoreError(f"{cidr!r} is not a subnet in CIDR form") from None
        with self._write() as db:
            db.execute("INSERT INTO sites VALUES (?) ON CONFLICT (name) DO NOTHING", (name,))
            for net in nets:
                owner = db.execute("SELECT site FROM subnets WHERE cidr = ?", (net,)).fetchone()
                if owner and owner[0] != name:
                    raise StoreError(f"subnet {net} already belongs to site {owner[0]!r}")
                db.execute(
                    "INSERT INTO subnets VALUES (?, ?) ON CONFLICT (cidr) DO NOTHING", (net, name)
                )

    def sites(self) -> dict[str, list[str]]:
        with self._read() as db:
            out: dict[str, list[str]] = {n: [] for (n,) in db.execute("SELECT name FROM sites")}
            for cidr, site in db.execute("SELECT cidr, site FROM subnets ORDER BY cidr"):
                out[site].append(cidr)
            return out

    def site_of(self, ip: str) -> str | None:
        """The site owning the most specific subnet that contains ``ip``."""
        addr = ipaddress.ip_address(ip)
        best: tuple[int, str] | None = None
        with self._read() as db:
            rows = db.execute("SELECT cidr, site FROM subnets").fetchall()
        for cidr, site in rows:
            net = ipaddress.ip_network(cidr)
            if (
                net.version == addr.version
                and addr in net
                and (best is None or net.prefixlen > best[0])
            ):
                best = (net.prefixlen, site)
        return best[1] if best else None

    def discovery_key(self, site: str | None) -> bytes:
        """The discovery key of ``site`` (None or "": the server-wide key of addresses in no
        site): 32 random bytes made on first use and stored, so every agent of the site gets
        the same key for as long as the data directory lives. Separate from every package's
        session key."""
        name = site or ""
        with self._write() as db:
            db.execute(
                "INSERT INTO discovery_keys VALUES (?, ?) ON CONFLICT (site) DO NOTHING",
                (name, secrets.token_bytes(32).hex()),
            )
            (key,) = db.execute("SELECT key FROM discovery_keys WHERE site = ?", (name,)).fetchone()
        return bytes.fromhex(key)

    def add_pkgserver(self, site: str, url: str) -> None:
        with self._write() as db:
            if not db.execute("SELECT 1 FROM sites WHERE name = ?", (site,)).fetchone():
                raise StoreError(f"unknown site {site!r} (add it with `site add`)")
            db.execute(
                "INSERT INTO pkgservers VALUES (?, ?) "
                "ON CONFLICT (url) DO UPDATE SET site = excluded.site",
                (url, site),
            )

    def pkgservers(self, site: str | None = None) -> list[tuple[str, str]]:
        """(url, site) pairs, of one site or of all."""
        with self._read() as db:
            if site is None:
                return db.execute("SELECT url, site FROM pkgservers ORDER BY url").fetchall()
            return db.execute(
                "SELECT url, site FROM pkgservers WHERE site = ? ORDER BY url", (site,)
            ).fetchall()

    # -- packages ----------------------------------------------------------------------
    def add_package(self, row: PackageRow) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO packages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.hash,
                    row.package_id,
                    row.name,
                    row.version,
                    row.size,
                    row.content_hash,
                    row.session_key,
                    time.time(),
                ),
            )

    _PKG_COLS = "hash, package_id, name, version, size, content_hash, session_key"

    def latest_package(
        self, *, name: str | None = None, package_id: str | None = None
    ) -> PackageRow | None:
        """The newest version of a package, looked up by name or by package id."""
        col, value = ("name", name) if name is not None else ("package_id", package_id)
        with self._read() as db:
            row = db.execute(
                f"SELECT {self._PKG_COLS} FROM packages WHERE {col} = ? "
                "ORDER BY version DESC LIMIT 1",
                (value,),
            ).fetchone()
        return PackageRow(*row) if row else None

    def package_by_hash(self, hash_hex: str) -> PackageRow | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {self._PKG_COLS} FROM packages WHERE hash = ?", (hash_hex,)
            ).fetchone()
        return PackageRow(*row) if row else None

    def packages(self) -> list[PackageRow]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {self._PKG_COLS} FROM packages ORDER BY name, version"
            ).fetchall()
        return [PackageRow(*r) for r in rows]

    def package_versions(self, package_id: str) -> list[PackageRow]:
        """Every stored version of a package, the newest first."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {self._PKG_COLS} FROM packages WHERE package_id = ? "
                "ORDER BY version DESC",
                (package_id,),
            ).fetchall()
        return [PackageRow(*r) for r in rows]

    def tasks_of_package(self, package_id: str) -> list[str]:
        """The ids of the tasks that run package ``package_id``."""
        with self._read() as db:
            rows = db.execute(
                "SELECT task_id FROM tasks WHERE package_id = ? ORDER BY created", (package_id,)
            ).fetchall()
        return [r[0] for r in rows]

    def remove(self, *, tasks: list[str], packages: list[str]) -> int:
        """Remove tasks (their targets and status) and package versions (by hash) in one
        transaction; returns how many tasks were removed. The events stay: they are the log
        of what happened."""
        removed = 0
        with self._write() as db:
            for task_id in tasks:
                db.execute("DELETE FROM task_targets WHERE task_id = ?", (task_id,))
                db.execute("DELETE FROM task_status WHERE task_id = ?", (task_id,))
                removed += db.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,)).rowcount
            for hash_hex in packages:
                db.execute("DELETE FROM packages WHERE hash = ?", (hash_hex,))
        return removed

    # -- computers and tasks -----------------------------------------------------------
    def add_computer(self, guid: str, name: str = "") -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO computers VALUES (?, ?) "
                "ON CONFLICT(guid) DO UPDATE SET name = excluded.name WHERE excluded.name != ''",
                (guid, name),
            )

    def computer_exists(self, guid: str) -> bool:
        with self._read() as db:
            return (
                db.execute("SELECT 1 FROM computers WHERE guid = ?", (guid,)).fetchone() is not None
            )

    def add_task(self, task: TaskRow, targets: list[str]) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    task.task_id,
                    task.package_id,
                    task.command,
                    task.schedule,
                    task.credentials,
                    task.run_from,
                    time.time(),
                ),
            )
            for guid in targets:
                db.execute(
                    "INSERT INTO computers (guid) VALUES (?) ON CONFLICT (guid) DO NOTHING", (guid,)
                )
                db.execute(
                    "INSERT INTO task_targets VALUES (?, ?) "
                    "ON CONFLICT (task_id, computer) DO NOTHING",
                    (task.task_id, guid),
                )

    def tasks_for(self, guid: str) -> list[TaskRow]:
        with self._read() as db:
            rows = db.execute(
                "SELECT t.task_id, t.package_id, t.command, t.schedule, t.credentials, t.run_from "
                "FROM tasks t JOIN task_targets g ON g.task_id = t.task_id "
                "WHERE g.computer = ? ORDER BY t.created",
                (guid,),
            ).fetchall()
        return [TaskRow(*r) for r in rows]

    def is_target(self, task_id: str, guid: str) -> bool:
        with self._read() as db:
            return (
                db.execute(
                    "SELECT 1 FROM task_targets WHERE task_id = ? AND computer = ?",
                    (task_id, guid),
                ).fetchone()
                is not None
            )

    def is_targeted_with(self, guid: str, package_id: str) -> bool:
        """Whether a task for package ``package_id`` targets computer ``guid``."""
        with self._read() as db:
            row = db.execute(
                "SELECT 1 FROM tasks t JOIN task_targets g ON g.task_id = t.task_id "
                "WHERE g.computer = ? AND t.package_id = ? LIMIT 1",
                (guid, package_id),
            ).fetchone()
        return row is not None

    # -- computer secrets and enrolment ------------------------------------------------
    def set_secret(self, guid: str, secret: bytes, name: str = "") -> None:
        """Give computer ``guid`` (registered if new) the approved secret ``secret``."""
        with self._write() as db:
            db.execute(
                "INSERT INTO computers VALUES (?, ?) "
                "ON CONFLICT(guid) DO UPDATE SET name = excluded.name WHERE excluded.name != ''",
                (guid, name),
            )
            db.execute(
                "INSERT INTO credentials VALUES (?, ?, 1, ?) ON CONFLICT (guid) DO UPDATE SET "
                "secret = excluded.secret, approved = excluded.approved, "
                "created = excluded.created",
                (guid, secret.hex(), time.time()),
            )

    def secret_of(self, guid: str) -> tuple[bytes, bool] | None:
        """(secret, approved) of computer ``guid``, None when it has none."""
        with self._read() as db:
            row = db.execute(
                "SELECT secret, approved FROM credentials WHERE guid = ?", (guid,)
            ).fetchone()
        return (bytes.fromhex(row[0]), bool(row[1])) if row else None

    def request_enrolment(self, guid: str, secret: bytes, max_pending: int) -> str:
        """Record an agent's request to be enrolled with ``secret``: "pending" (recorded, or
        already asked with this secret), "approved" (already enrolled with it), "conflict" (the
        computer has another secret or request) or "full" (``max_pending`` requests wait)."""
        with self._write() as db:
            row = db.execute(
                "SELECT secret, approved FROM credentials WHERE guid = ?", (guid,)
            ).fetchone()
            if row is not None:
                if row[0] != secret.hex():
                    return "conflict"
                return "approved" if row[1] else "pending"
            (pending,) = db.execute(
                "SELECT count(*) FROM credentials WHERE approved = 0"
            ).fetchone()
            if pending >= max_pending:
                return "full"
            cur = db.execute(
                "INSERT INTO credentials VALUES (?, ?, 0, ?) ON CONFLICT (guid) DO NOTHING",
                (guid, secret.hex(), time.time()),
            )
            if cur.rowcount == 0:  # another server recorded a request for it meanwhile
                (stored,) = db.execute(
                    "SELECT secret FROM credentials WHERE guid = ?", (guid,)
                ).fetchone()
                return "pending" if stored == secret.hex() else "conflict"
        return "pending"

    def approve(self, guid: str) -> None:
        """Approve the waiting enrolment of ``guid``: it becomes a known computer."""
        with self._write() as db:
            row = db.execute("SELECT approved FROM credentials WHERE guid = ?", (guid,)).fetchone()
            if row is None:
                raise StoreError(f"computer {guid} has not asked to be enrolled")
            db.execute("UPDATE credentials SET approved = 1 WHERE guid = ?", (guid,))
            db.execute(
                "INSERT INTO computers (guid) VALUES (?) ON CONFLICT (guid) DO NOTHING", (guid,)
            )

    def computers(self) -> list[tuple[str, str, str, str]]:
        """(guid, name, state, secret) of every computer and enrolment request; state is
        "approved", "pending" or "no secret"; secret is hex, empty when there is none."""
        with self._read() as db:
            rows = db.execute(
                "SELECT c.guid, c.name, s.secret, s.approved FROM computers c "
                "LEFT JOIN credentials s ON s.guid = c.guid "
                "UNION ALL SELECT s.guid, '', s.secret, s.approved FROM credentials s "
                "WHERE s.guid NOT IN (SELECT guid FROM computers) ORDER BY 1"
            ).fetchall()
        states = {None: "no secret", 0: "pending", 1: "approved"}
        return [(g, n, states[a], s or "") for g, n, s, a in rows]

    # -- status event queue ------------------------------------------------------------
    def record_event(self, ev: EventRecord, order_time: float | None = None) -> bool:
        """Store an event durably. True if new, False if this exact event was already stored.

        ``order_time`` (default: the agent's time) is the time the event is ordered by when
        it is folded; the server passes the agent's time clamped to its own clock. A retry is
        recognised by the event as the agent sent it. Raises StoreError if the id was already
        used for a different event.
        """
        digest = event_digest(ev)
        when = ev.agent_time if order_time is None else order_time
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO events (event_id, digest, computer, task_id, state, "
                "exit_code, bytes_multicast, bytes_http, message, agent_time, received) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                (
                    ev.event_id,
                    digest,
                    ev.computer,
                    ev.task_id,
                    ev.state,
                    ev.exit_code,
                    ev.bytes_multicast,
                    ev.bytes_http,
                    ev.message,
                    when,
                    time.time(),
                ),
            )
            if cur.rowcount == 1:
                return True
            (stored,) = db.execute(
                "SELECT digest FROM events WHERE event_id = ?", (ev.event_id,)
            ).fetchone()
        if stored != digest:
            raise StoreError(f"event id {ev.event_id} was already used for a different event")
        return False

    # a newer (or equally new) event by agent time decides state and figures
    _NEWER = (
        "CASE WHEN excluded.agent_time >= task_status.agent_time "
        "THEN excluded.{0} ELSE task_status.{0} END"
    )

    def process_events(self, limit: int = 500) -> int:
        """Fold up to ``limit`` unprocessed events into task_status; returns how many.

        The fold and the ``processed`` mark are one transaction: after a crash an event is
        either fully counted and marked, or neither. Several processes may drain one queue:
        on PostgreSQL each takes its batch with ``FOR UPDATE SKIP LOCKED`` (an event another
        transaction holds is left to it, and a committed one is no longer unprocessed); on
        SQLite ``BEGIN IMMEDIATE`` lets one writer in at a time.
        """
        now = time.time()
        lock = " FOR UPDATE SKIP LOCKED" if self.engine == "postgresql" else ""
        newer = self._NEWER
        fold = (
            "INSERT INTO task_status VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?) "
            "ON CONFLICT (computer, task_id) DO UPDATE SET "
            "events = task_status.events + 1, updated = excluded.updated, "
            f"state = {newer.format('state')}, "
            f"exit_code = {newer.format('exit_code')}, "
            f"bytes_multicast = {newer.format('bytes_multicast')}, "
            f"bytes_http = {newer.format('bytes_http')}, "
            f"message = {newer.format('message')}, "
            f"agent_time = {newer.format('agent_time')}"
        )
        with self._write() as db:
            rows = db.execute(
                "SELECT seq, computer, task_id, state, exit_code, bytes_multicast, bytes_http, "
                "message, agent_time FROM events WHERE processed = 0 ORDER BY seq LIMIT ?" + lock,
                (limit,),
            ).fetchall()
            # Fold in (computer, task, seq) order: concurrent batches then lock the status
            # rows they share in the same order, and one key's events keep their queue order.
            for seq, computer, task_id, state, code, bmc, bhttp, msg, atime in sorted(
                rows, key=lambda r: (r[1], r[2], r[0])
            ):
                # Count every event; the newest by agent time decides state and figures.
                db.execute(fold, (computer, task_id, state, code, bmc, bhttp, msg, atime, now))
                db.execute("UPDATE events SET processed = 1 WHERE seq = ?", (seq,))
        return len(rows)

    def queue_counts(self) -> dict[str, int]:
        with self._read() as db:
            total, done = db.execute(
                "SELECT count(*), coalesce(sum(processed), 0) FROM events"
            ).fetchone()
            counted = db.execute("SELECT coalesce(sum(events), 0) FROM task_status").fetchone()[0]
        return {"events": total, "processed": done, "pending": total - done, "counted": counted}

    def task_status(self) -> list[StatusRow]:
        """One row per (task, target computer); "pending" where no event was processed yet."""
        with self._read() as db:
            rows = db.execute(
                "SELECT g.computer, coalesce(c.name, ''), g.task_id, "
                "coalesce((SELECT p.name FROM packages p WHERE p.package_id = t.package_id "
                "  LIMIT 1), ''), "
                "coalesce(s.state, ?), s.exit_code, coalesce(s.bytes_multicast, 0), "
                "coalesce(s.bytes_http, 0), coalesce(s.events, 0), coalesce(s.message, '') "
                "FROM task_targets g JOIN tasks t ON t.task_id = g.task_id "
                "LEFT JOIN computers c ON c.guid = g.computer "
                "LEFT JOIN task_status s ON s.computer = g.computer AND s.task_id = g.task_id "
                "ORDER BY t.created, g.computer",
                (PENDING,),
            ).fetchall()
        return [StatusRow(*r) for r in rows]
