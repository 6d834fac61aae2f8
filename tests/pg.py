"""The store's engines for tests: SQLite, and a private PostgreSQL server of the session.

``pg_server`` starts one :class:`server_stub.pgserver.LocalPostgres` for the whole session
(unix socket in a temp dir, fsync off, stopped at the end whatever happened) or skips with
the reason it cannot start. ``ns_database`` is parametrized over both engines: None (SQLite
in the data directory) or the URL of a fresh PostgreSQL database of the test's own; pass it
to ``populate(..., database=ns_database)`` or ``init_data_dir``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server_stub.pgserver import LocalPostgres, unavailable

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no PostgreSQL for the tests: {reason}")
    server = LocalPostgres(durable=False)
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"no PostgreSQL for the tests: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: LocalPostgres) -> str:
    """A fresh PostgreSQL database of this test."""
    return pg_server.create_database()


@pytest.fixture(params=ENGINES)
def ns_database(request: pytest.FixtureRequest) -> str | None:
    """None (SQLite in the data directory) or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url
