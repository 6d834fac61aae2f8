"""A package server's replication is bounded: a flood of requests for random hashes costs a
bounded number of upstream calls and leaves no locks behind, and real packages still
replicate (server_stub.replica_gate)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from mcast.snapshot import TrustStore, load_public_key
from server_stub import repo
from server_stub.app import create_app
from server_stub.replica_gate import ReplicaGate
from server_stub.testing import Populated, populate, running_server

FLOOD = 1000
BURST = 4


class Counting:
    """The upstream, counting the replications asked of it (each starts with a snapshot)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.calls = app, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/snapshot.xml"):
            self.calls += 1
        await self.app(scope, receive, send)


class Clock:
    """A frozen clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pop(tmp_path: Path) -> Populated:
    return populate(tmp_path / "ns", computers=1, package_bytes=200_000)


@pytest.fixture
async def upstream(pop: Populated) -> AsyncIterator[tuple[str, Counting]]:
    counting = Counting(create_app(pop.data_dir))
    async with running_server(counting) as url:  # type: ignore[arg-type]
        yield url, counting


def _package_server(pop: Populated, upstream_url: str, ps_dir: Path) -> Starlette:
    """A package server for site "lab" in ``ps_dir``, replicating from ``upstream_url``."""
    trust = TrustStore.of(load_public_key((pop.data_dir / repo.PUB_NAME).read_bytes()))
    (ps_dir / "packages").mkdir(parents=True)
    return create_app(ps_dir, mode="package-server", site="lab", upstream=upstream_url,
                      trust=trust)  # fmt: skip


async def test_flood_of_random_hashes_is_bounded_and_a_real_package_still_replicates(
    pop: Populated, upstream: tuple[str, Counting], tmp_path: Path
) -> None:
    url, counting = upstream
    ps_dir = tmp_path / "ps"
    app = _package_server(pop, url, ps_dir)
    clock = Clock()
    gate = ReplicaGate(clock=clock, burst=BURST, refill_per_s=1.0, miss_ttl_s=30.0)
    app.state.server.replicas = gate
    statuses: list[int] = []
    randoms = [os.urandom(32).hex() for _ in range(FLOOD)]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ps") as c:

        async def ask(h: str) -> None:
            statuses.append((await c.get(f"/pkg/{h}/content")).status_code)

        async with trio.open_nursery() as nursery:
            for h in randoms:
                nursery.start_soon(ask, h)
        assert statuses == [404] * FLOOD
        assert counting.calls <= BURST  # the budget, not one call per request
        assert gate.locks_held == 0  # no lock outlives its request
        assert gate.misses == counting.calls <= BURST

        # a hash the upstream just said it lacks: no new call until its miss expires
        missed = next(h for h in randoms if gate.missed_recently(h))
        calls = counting.calls
        clock.now += 10.0  # the budget refills; the miss is still remembered
        assert (await c.get(f"/pkg/{missed}/content")).status_code == 404
        assert counting.calls == calls

        # the real package replicates and is served while the flood's misses are remembered
        h = pop.package.hash
        r = await c.get(f"/pkg/{h}/files/sub/small.txt")
        assert r.status_code == 200 and r.content == b"hello from a package\n"
        assert counting.calls == calls + 1 and gate.locks_held == 0
        assert (ps_dir / "packages" / h / "snapshot.xml").is_file()

        clock.now += 31.0  # the miss expired: the upstream is asked once more
        assert (await c.get(f"/pkg/{missed}/content")).status_code == 404
        assert counting.calls == calls + 2


async def test_same_missing_hash_asked_at_once_costs_one_upstream_call(
    pop: Populated, upstream: tuple[str, Counting], tmp_path: Path
) -> None:
    url, counting = upstream
    ps_dir = tmp_path / "ps"
    app = _package_server(pop, url, ps_dir)
    gate = app.state.server.replicas
    missing = os.urandom(32).hex()
    statuses: list[int] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ps") as c:

        async def ask() -> None:
            statuses.append((await c.get(f"/pkg/{missing}/content")).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(ask)
    assert statuses == [404] * 50
    assert counting.calls == 1 and gate.locks_held == 0 and gate.misses == 1


def test_negative_cache_is_bounded_oldest_first() -> None:
    clock = Clock()
    gate = ReplicaGate(clock=clock, max_misses=3, miss_ttl_s=5.0)
    hashes = [f"{i:064x}" for i in range(5)]
    for h in hashes:
        gate.note_miss(h)
    assert gate.misses == 3
    assert [gate.missed_recently(h) for h in hashes] == [False, False, True, True, True]
    clock.now += 5.0
    assert not any(gate.missed_recently(h) for h in hashes) and gate.misses == 0


def test_upstream_budget_refills_with_time() -> None:
    clock = Clock()
    gate = ReplicaGate(clock=clock, burst=2, refill_per_s=0.5)
    assert [gate.take_token() for _ in range(3)] == [True, True, False]
    clock.now += 2.0
    assert [gate.take_token() for _ in range(2)] == [True, False]
    clock.now += 100.0  # never more than the burst
    assert [gate.take_token() for _ in range(3)] == [True, True, False]
