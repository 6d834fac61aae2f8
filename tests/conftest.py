"""Fixtures shared by the agent tests: a live Notification Server on loopback.

``url`` serves the data directory of the test module's own ``ns`` fixture (each module makes
the computers and packages it needs) and yields the server's base URL. ``ns_database`` (from
``tests.pg``) runs a test on each of the store's engines, SQLite and a private PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server_stub.app import create_app
from server_stub.testing import running_server
from tests.pg import ns_database, pg_server, pg_url  # noqa: F401  (the store's engines)
from tests.test_agent_support import NS


@pytest.fixture
async def url(ns: NS) -> AsyncIterator[str]:
    async with running_server(create_app(ns.data)) as base:
        yield base
