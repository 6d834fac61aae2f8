"""The peer cache on loopback: an agent that holds a package serves it to later askers, so a
package crosses the WAN once however far apart the agents arrive."""

from __future__ import annotations

from pathlib import Path

import trio

from mcast.fetch import Route, fetch
from mcast.peer_cache import Cached, CacheStats, serve_cache
from tests.test_fetch import (
    codebase_root,
    content_of,
    make_package,
    publish,
    settings,
    watch_sessions,
)

__all__ = ["codebase_root"]  # the fixture, imported for pytest to find
DEAD = "http://127.0.0.1:9/pkg/"  # nothing listens there: a WAN that is down


async def test_a_later_agent_gets_the_package_from_a_peer_cache_not_the_wan(
    tmp_path: Path, codebase_root
) -> None:
    src = tmp_path / "src"
    snap = make_package(src, 1_500_000, 31)
    url = publish(codebase_root, src, snap)
    s = settings(hold_s=0.2)
    first = await fetch(snap, tmp_path / "a", [url], s)
    assert first.complete and first.bytes_http == snap.total_size  # the one WAN copy
    held = {snap.package_hash: Cached(snap, tmp_path / "a", s.session_key)}
    stats = CacheStats()
    seen: list[tuple[float, int, bool | None]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_cache(held.get, s, stats=stats,
                                                            task_status=task_status))
        nursery.start_soon(watch_sessions, s, seen)
        with trio.fail_after(30):
            later = await fetch(snap, tmp_path / "b", [DEAD], s)  # an hour later, say
        nursery.cancel_scope.cancel()
    assert later.complete and later.route is Route.JOINED, later.notes
    assert later.bytes_http == 0 and later.bytes_multicast == snap.total_size
    assert content_of(tmp_path / "b", snap) == content_of(src, snap)
    assert stats.sessions == 1 and stats.solicits >= 1
    assert {sid for _, sid, claiming in seen if claiming is False} == {later.session_id}


async def test_two_cache_holders_and_three_askers_make_one_session(
    tmp_path: Path, codebase_root
) -> None:
    src = tmp_path / "src"
    snap = make_package(src, 1_000_000, 32)
    s = settings(hold_s=0.3)
    for holder in ("c1", "c2"):
        r = await fetch(snap, tmp_path / holder, [publish(codebase_root, src, snap)],
                        settings(multicast_enabled=False))  # fmt: skip
        assert r.complete
    stats = [CacheStats(), CacheStats()]
    seen: list[tuple[float, int, bool | None]] = []
    results = {}
    async with trio.open_nursery() as nursery:
        for i, holder in enumerate(("c1", "c2")):
            held = {snap.package_hash: Cached(snap, tmp_path / holder, s.session_key)}
            await nursery.start(lambda task_status, held=held, st=stats[i]: serve_cache(
                held.get, s, stats=st, task_status=task_status))  # fmt: skip
        nursery.start_soon(watch_sessions, s, seen)
        with trio.fail_after(30):
            async with trio.open_nursery() as askers:
                for i in range(3):

                    async def ask(i: int = i) -> None:
                        results[i] = await fetch(snap, tmp_path / f"b{i}", [DEAD], s)

                    askers.start_soon(ask)
        nursery.cancel_scope.cancel()
    assert all(r.complete and r.bytes_http == 0 for r in results.values()), results
    assert sum(st.sessions for st in stats) == 1  # the election picked one holder
    assert len({sid for _, sid, claiming in seen if claiming is False}) == 1


async def test_a_cache_that_does_not_hold_the_package_stays_quiet(
    tmp_path: Path, codebase_root
) -> None:
    src = tmp_path / "src"
    snap = make_package(src, 300_000, 33)
    url = publish(codebase_root, src, snap)
    s = settings(hold_s=0.2)
    stats = CacheStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_cache(lambda h: None, s, stats=stats,
                                                            task_status=task_status))
        r = await fetch(snap, tmp_path / "b", [url], s)
        nursery.cancel_scope.cancel()
    assert r.complete and r.route is Route.MASTER  # nobody else had it: it fetched and served
    assert stats.solicits >= 1 and stats.sessions == 0
