"""Read-only queries behind the web console (:mod:`.console`).

This module owns what the console shows and in what order: every function takes a
:class:`~server_stub.store.Store`, reads through its read connection and never writes. The SQL
is portable (``?`` placeholders, standard functions), so it runs on whatever database the
store is opened on.

What agents report about multicast sessions: a ``downloaded`` event's message starts with
``downloaded via ROUTE`` (joined, master, http, cached) and, when the package came through a
multicast session, names it: ``in session HEX``. The sessions view is built from those
reports (the newest within a window) and from the jobs that are downloading now.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mcast.fleet import EVENT_STATES, PENDING

from . import repo
from .store import Store

FAILED = "failed"
# the columns of the per-state counts, in the order a job passes through the states
STATE_ORDER: tuple[str, ...] = (PENDING, *EVENT_STATES)
HISTORY_LIMIT = 200  # events shown on a computer's page, newest first
FAILURES_LIMIT = 100
SESSION_WINDOW_S = 3600.0  # a session reported within the last hour is shown
TAIL_CHARS = 2000  # the end of a message that the console shows

_DOWNLOADED = re.compile(
    r"^downloaded via (?P<route>[a-z]+)(?: in session (?P<session>[0-9a-f]{16}))?"
)


def tail(text: str, limit: int = TAIL_CHARS) -> str:
    """The last ``limit`` characters of ``text`` (where a command's error is)."""
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


@dataclass
class TaskSummary:
    task_id: str
    package_name: str
    command: str
    created: float
    counts: dict[str, int] = field(default_factory=dict)  # state -> computers in it

    @property
    def targets(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return self.counts.get(FAILED, 0)


@dataclass(frozen=True)
class Failure:
    computer: str
    computer_name: str
    task_id: str
    package_name: str
    exit_code: int | None
    message: str
    agent_time: float


@dataclass(frozen=True)
class PackageSummary:
    name: str
    package_id: str
    version: int
    size: int
    hash: str
    added: float
    expires: int | None  # from the signed snapshot; None when it cannot be read


@dataclass(frozen=True)
class HistoryEvent:
    task_id: str
    package_name: str
    state: str
    exit_code: int | None
    bytes_multicast: int
    bytes_http: int
    message: str
    agent_time: float
    received: float


@dataclass(frozen=True)
class ComputerView:
    guid: str
    name: str
    credential: str  # "approved", "pending" or "no secret"
    status: list[tuple[str, str, str, int | None]]  # (task, package, state, exit code)
    events: list[HistoryEvent]


@dataclass
class Session:
    session: str
    package_name: str
    master: list[str] = field(default_factory=list)  # computers that led it
    joined: list[str] = field(default_factory=list)
    bytes_multicast: int = 0
    last_report: float = 0.0


@dataclass(frozen=True)
class Download:
    computer: str
    computer_name: str
    task_id: str
    package_name: str
    message: str
    agent_time: float


@dataclass(frozen=True)
class SessionsView:
    sessions: list[Session]
    downloading: list[Download]
    routes: dict[str, int]  # route -> downloads reported within the window
    window_s: float


def _package_name_sql(task_alias: str) -> str:
    return (
        f"coalesce((SELECT p.name FROM packages p WHERE p.package_id = {task_alias}.package_id "
        "ORDER BY p.version DESC LIMIT 1), '')"
    )


def tasks(store: Store) -> list[TaskSummary]:
    """Every task with how many of its computers are in each state; tasks with failed
    computers first (most failures first), then the newest."""
    with store._read() as db:
        rows = db.execute(
            f"SELECT t.task_id, {_package_name_sql('t')}, t.command, t.created, "
            "s.state, count(*) "
            "FROM tasks t JOIN task_targets g ON g.task_id = t.task_id "
            "LEFT JOIN task_status s ON s.computer = g.computer AND s.task_id = g.task_id "
            "GROUP BY t.task_id, t.package_id, t.command, t.created, s.state"
        ).fetchall()  # grouped on plain columns: PostgreSQL does not match two "?" as one
    out: dict[str, TaskSummary] = {}
    for task_id, package, command, created, state, n in rows:
        state = state or PENDING  # no status row yet: the job is pending
        summary = out.setdefault(task_id, TaskSummary(task_id, package, command, created))
        summary.counts[state] = summary.counts.get(state, 0) + n
    return sorted(out.values(), key=lambda t: (-t.failed, -t.created, t.task_id))


def failures(store: Store, limit: int = FAILURES_LIMIT) -> list[Failure]:
    """The (computer, task) pairs whose job failed, the most recent first."""
    with store._read() as db:
        rows = db.execute(
            f"SELECT s.computer, coalesce(c.name, ''), s.task_id, {_package_name_sql('t')}, "
            "s.exit_code, s.message, s.agent_time "
            "FROM task_status s JOIN tasks t ON t.task_id = s.task_id "
            "LEFT JOIN computers c ON c.guid = s.computer "
            "WHERE s.state = ? ORDER BY s.agent_time DESC, s.computer LIMIT ?",
            (FAILED, limit),
        ).fetchall()
    return [Failure(c, n, t, p, code, tail(m), at) for c, n, t, p, code, m, at in rows]


def packages(store: Store, data_dir: Path) -> list[PackageSummary]:
    """Every stored package version, with the expiry its signed snapshot carries."""
    with store._read() as db:
        rows = db.execute(
            "SELECT name, package_id, version, size, hash, added FROM packages "
            "ORDER BY name, version DESC"
        ).fetchall()
    out = []
    for name, package_id, version, size, hash_hex, added in rows:
        try:
            expires: int | None = repo.load_snapshot(data_dir, hash_hex).expires
        except (repo.RepoError, OSError, ValueError):
            expires = None
        out.append(PackageSummary(name, package_id, version, size, hash_hex, added, expires))
    return out


def computer(store: Store, guid: str, limit: int = HISTORY_LIMIT) -> ComputerView | None:
    """A computer's jobs and its event history (newest first), or None if it is unknown."""
    with store._read() as db:
        known = db.execute("SELECT name FROM computers WHERE guid = ?", (guid,)).fetchone()
        cred = db.execute("SELECT approved FROM credentials WHERE guid = ?", (guid,)).fetchone()
        if known is None and cred is None:
            return None
        status = db.execute(
            f"SELECT g.task_id, {_package_name_sql('t')}, coalesce(s.state, ?), s.exit_code "
            "FROM task_targets g JOIN tasks t ON t.task_id = g.task_id "
            "LEFT JOIN task_status s ON s.computer = g.computer AND s.task_id = g.task_id "
            "WHERE g.computer = ? ORDER BY t.created",
            (PENDING, guid),
        ).fetchall()
        rows = db.execute(
            f"SELECT e.task_id, {_package_name_sql('t')}, e.state, e.exit_code, "
            "e.bytes_multicast, e.bytes_http, e.message, e.agent_time, e.received "
            "FROM events e LEFT JOIN tasks t ON t.task_id = e.task_id "
            "WHERE e.computer = ? ORDER BY e.agent_time DESC, e.seq DESC LIMIT ?",
            (guid, limit),
        ).fetchall()
    credential = "no secret" if cred is None else ("approved" if cred[0] else "pending")
    events = [
        HistoryEvent(t, p, s, code, bmc, bhttp, tail(m), at, rcv)
        for t, p, s, code, bmc, bhttp, m, at, rcv in rows
    ]
    jobs = [(t, p, s, code) for t, p, s, code in status]
    return ComputerView(guid, known[0] if known else "", credential, jobs, events)


def computers_with_failures(store: Store) -> list[tuple[str, str, int]]:
    """(guid, name, failed jobs) of every computer with a failed job, most failures first."""
    with store._read() as db:
        rows = db.execute(
            "SELECT s.computer, coalesce(c.name, ''), count(*) FROM task_status s "
            "LEFT JOIN computers c ON c.guid = s.computer WHERE s.state = ? "
            "GROUP BY s.computer, c.name ORDER BY count(*) DESC, s.computer",
            (FAILED,),
        ).fetchall()
    return [(g, n, k) for g, n, k in rows]


def sites(store: Store) -> list[tuple[str, list[str], list[str]]]:
    """(site, its subnets, its package servers' URLs) of every site, by name."""
    servers: dict[str, list[str]] = {}
    for url, site in store.pkgservers():
        servers.setdefault(site, []).append(url)
    return [(name, nets, servers.get(name, [])) for name, nets in sorted(store.sites().items())]


def _parse_downloaded(message: str) -> tuple[str, str | None] | None:
    m = _DOWNLOADED.match(message)
    return (m["route"], m["session"]) if m else None


def sessions(
    store: Store, now: float | None = None, window_s: float = SESSION_WINDOW_S
) -> SessionsView:
    """The multicast sessions agents reported within ``window_s`` (newest first) and the jobs
    downloading now."""
    now = time.time() if now is None else now
    with store._read() as db:
        rows = db.execute(
            f"SELECT e.computer, {_package_name_sql('t')}, e.bytes_multicast, e.message, "
            "e.agent_time FROM events e LEFT JOIN tasks t ON t.task_id = e.task_id "
            "WHERE e.state = ? AND e.received >= ? ORDER BY e.agent_time",
            ("downloaded", now - window_s),
        ).fetchall()
        busy = db.execute(
            f"SELECT s.computer, coalesce(c.name, ''), s.task_id, {_package_name_sql('t')}, "
            "s.message, s.agent_time FROM task_status s JOIN tasks t ON t.task_id = s.task_id "
            "LEFT JOIN computers c ON c.guid = s.computer WHERE s.state = ? "
            "ORDER BY s.agent_time DESC",
            ("downloading",),
        ).fetchall()
    found: dict[str, Session] = {}
    routes: dict[str, int] = {}
    for guid, package, bmc, message, at in rows:
        parsed = _parse_downloaded(message)
        if parsed is None:
            continue
        route, sid = parsed
        routes[route] = routes.get(route, 0) + 1
        if sid is None:
            continue
        s = found.setdefault(sid, Session(sid, package))
        (s.master if route == "master" else s.joined).append(guid)
        s.bytes_multicast += bmc
        s.last_report = max(s.last_report, at)
    ordered = sorted(found.values(), key=lambda s: -s.last_report)
    return SessionsView(ordered, [Download(*r) for r in busy], routes, window_s)


def counts_columns(summaries: Iterable[TaskSummary]) -> list[str]:
    """The states to show as columns: every state in its order, then any other reported."""
    seen = {s for t in summaries for s in t.counts}
    return [s for s in STATE_ORDER] + sorted(seen - set(STATE_ORDER))
