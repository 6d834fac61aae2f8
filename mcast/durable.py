"""The one way this project opens a durable SQLite store, and its write transaction.

Both the agent's state (``STATE/agent.sqlite3``) and the Notification Server's store
(``DATA/ns.sqlite3``) are opened here, so they share the same durability rules: WAL journal
with ``synchronous=FULL`` (a committed transaction is on disk), a busy timeout instead of an
immediate "database is locked", autocommit mode so that every write is an explicit
``BEGIN IMMEDIATE .. COMMIT`` (:func:`transaction`), and the schema created in the first such
transaction. A store that cannot be opened raises :class:`mcast.errors.StorageError`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import StorageError

BUSY_TIMEOUT_MS = 10_000


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One durable write: ``BEGIN IMMEDIATE``, committed (fsynced) on exit, rolled back on
    any exception (the exception propagates)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def open_store(
    path: Path,
    schema: str,
    *,
    threads: bool = False,
    foreign_keys: bool = False,
) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` and apply ``schema``.

    ``schema`` is a script of ``CREATE ... IF NOT EXISTS`` statements separated by ``;``.
    ``threads``: the connection may be used from several threads (the caller serialises use
    with a lock). ``foreign_keys`` turns on SQLite's foreign key checks.
    """
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=not threads)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {path}: {exc}") from None
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if foreign_keys:
            db.execute("PRAGMA foreign_keys=ON")
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        with transaction(db):
            for stmt in schema.split(";"):
                if stmt.strip():
                    db.execute(stmt)
    except sqlite3.Error as exc:
        db.close()
        raise StorageError(f"cannot use {path}: {exc}") from None
    return db
