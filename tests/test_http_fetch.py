"""HTTP fallback against real servers on 127.0.0.1: the package server and adversarial apps.

A partial multicast download is simulated by writing selected units with ``write_unit``;
``fetch_missing`` must then fetch exactly the rest, verified, from the codebases that behave.
"""

from __future__ import annotations

import hashlib
import queue
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from mcast.http_fetch import HttpFetchError, coalesce, fetch_missing, speed_test
from mcast.partial import PartialDownload
from mcast.snapshot import Snapshot
from server_stub import repo
from server_stub.app import _one_range, create_app
from server_stub.serve import serve
from server_stub.testing import Populated, populate, running_server
from tests.harness import WAIT_S, within

PACKAGE_BYTES = 700_000  # + 21 bytes of small.txt: 11 units of 64 KiB, the last one short
UNIT = 64 * 1024


# -- fixtures --------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    pop: Populated
    snap: Snapshot
    content: bytes

    def unit(self, u: int) -> bytes:
        off, n = self.snap.block_range(u)
        return self.content[off : off + n]

    def size_of(self, units: list[int] | set[int]) -> int:
        return sum(self.snap.block_range(u)[1] for u in units)


def make_package(data_dir: Path) -> Package:
    pop = populate(data_dir, computers=1, package_bytes=PACKAGE_BYTES)
    snap = repo.load_snapshot(pop.data_dir, pop.package.hash)
    files = pop.data_dir / "packages" / pop.package.hash / "files"
    content = b"".join((files / f.path).read_bytes() for f in snap.files)
    return Package(pop, snap, content)


@pytest.fixture
def pkg(tmp_path: Path) -> Package:
    return make_package(tmp_path / "ns")


@pytest.fixture
async def good(pkg: Package) -> AsyncIterator[str]:
    """A codebase on the real package server."""
    async with running_server(create_app(pkg.pop.data_dir)) as base:
        yield f"{base}/pkg/{pkg.pop.package.hash}/"


@dataclass
class Recorder:
    ranges: list[str] = field(default_factory=list)

    async def hook(self, request: httpx.Request) -> None:
        self.ranges.append(request.headers.get("range", ""))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
        yield c


def partial(tmp: Path, pkg: Package, have: set[int]) -> PartialDownload:
    """A download in which multicast delivered the units ``have``."""
    part = PartialDownload.open(pkg.snap, tmp / "dest")
    for u in sorted(have):
        part.write_unit(u, pkg.unit(u))
    part.checkpoint()
    return part


def assert_placed(tmp: Path, pkg: Package, part: PartialDownload) -> None:
    placed = part.finish()
    assert [p.relative_to(tmp / "dest").as_posix() for p in placed] == [
        f.path for f in pkg.snap.files
    ]
    assert b"".join(p.read_bytes() for p in placed) == pkg.content


def refused_codebase() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/pkg/{'0' * 64}/"


@dataclass
class Adversary:
    """A codebase that misbehaves in one way; records the Range of every request."""

    content: bytes
    mode: str = "honest"  # honest, flip, ignore_range, error, no_content_range, slow
    flip_at: int = 0
    delay: float = 0.0
    truncate_at: int | None = None  # cut every body after this many bytes
    ranges: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        body = bytearray(self.content)
        if self.mode == "flip":
            body[self.flip_at] ^= 0x01
        data = bytes(body)

        async def content(request: Request) -> Response:
            self.ranges.append(request.headers.get("range", ""))
            if self.mode == "error":
                return Response("overloaded", status_code=503)
            status, lo, hi = 200, 0, len(data)
            headers: dict[str, str] = {}
            if self.mode != "ignore_range":
                rng = _one_range(request.headers.get("range"), len(data))
                if rng == 416:
                    return Response("not satisfiable", status_code=416)
                if isinstance(rng, tuple):
                    status, (lo, hi) = 206, rng
                    if self.mode != "no_content_range":
                        headers["Content-Range"] = f"bytes {lo}-{hi - 1}/{len(data)}"
            headers["Content-Length"] = str(hi - lo)

            cut = hi if self.truncate_at is None else min(hi, lo + self.truncate_at)

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(lo, cut, 16 * 1024):
                    if self.delay:
                        await trio.sleep(self.delay)
                    yield data[i : min(i + 16 * 1024, cut)]

            return StreamingResponse(chunks(), status_code=status, headers=headers)

        return Starlette(routes=[Route("/pkg/{hash}/content", content)])


async def serve_all(stack: AsyncExitStack, pkg: Package, *advs: Adversary) -> list[str]:
    urls = []
    for adv in advs:
        base = await stack.enter_async_context(running_server(adv.app()))
        urls.append(f"{base}/pkg/{pkg.pop.package.hash}/")
    return urls


# -- only what is missing --------------------------------------------------------------


async def test_only_missing_units_are_fetched(
    tmp_path: Path, pkg: Package, good: str, client: httpx.AsyncClient
) -> None:
    have = {0, 2, 3, 7, 10}
    part = partial(tmp_path, pkg, have)
    missing = part.missing_units()
    seen: list[int] = []
    result = await fetch_missing(pkg.snap, part, [good], client=client, progress=seen.append)
    assert result.bytes_http == pkg.size_of(missing) == result.bytes_received
    assert result.units_fetched == len(missing)
    assert result.codebase_used == good and result.codebases_failed == {}
    assert seen == sorted(seen) and seen[-1] == result.bytes_http and len(seen) == len(missing)
    assert part.bytes_written == pkg.size_of(have) + result.bytes_http
    assert_placed(tmp_path, pkg, part)


async def test_nothing_missing_sends_nothing(
    tmp_path: Path, pkg: Package, client: httpx.AsyncClient
) -> None:
    part = partial(tmp_path, pkg, set(range(pkg.snap.block_count)))
    result = await fetch_missing(pkg.snap, part, [refused_codebase()], client=client)
    assert (result.requests, result.bytes_http, result.codebase_used) == (0, 0, None)
    assert_placed(tmp_path, pkg, part)


async def test_consecutive_missing_units_are_coalesced(
    tmp_path: Path, pkg: Package, good: str
) -> None:
    # missing: 1-3, 5, 7-8 -> three requests
    part = partial(tmp_path, pkg, {0, 4, 6, 9, 10})
    rec = Recorder()
    async with httpx.AsyncClient(event_hooks={"request": [rec.hook]}, trust_env=False) as c:
        result = await fetch_missing(pkg.snap, part, [good], client=c)
    assert result.requests == 3
    assert rec.ranges == [
        f"bytes={1 * UNIT}-{4 * UNIT - 1}",
        f"bytes={5 * UNIT}-{6 * UNIT - 1}",
        f"bytes={7 * UNIT}-{9 * UNIT - 1}",
    ]
    assert_placed(tmp_path, pkg, part)


async def test_ranges_are_capped_at_max_range_bytes(
    tmp_path: Path, pkg: Package, good: str
) -> None:
    part = partial(tmp_path, pkg, set())
    rec = Recorder()
    async with httpx.AsyncClient(event_hooks={"request": [rec.hook]}, trust_env=False) as c:
        result = await fetch_missing(pkg.snap, part, [good], client=c, max_range_bytes=2 * UNIT)
    assert result.requests == 6  # 11 units, two per request
    assert rec.ranges[-1] == f"bytes={10 * UNIT}-{pkg.snap.total_size - 1}"
    assert result.bytes_http == pkg.snap.total_size
    assert_placed(tmp_path, pkg, part)


def test_coalesce_never_splits_below_one_unit(pkg: Package) -> None:
    assert coalesce(pkg.snap, [0, 1, 2, 5], 1) == [[0], [1], [2], [5]]
    assert coalesce(pkg.snap, [0, 1, 2, 5], 3 * UNIT) == [[0, 1, 2], [5]]


# -- bad codebases ---------------------------------------------------------------------


async def test_wrong_bytes_are_detected_and_the_next_codebase_completes(
    tmp_path: Path, pkg: Package, good: str, client: httpx.AsyncClient
) -> None:
    have = {0, 1, 8}
    part = partial(tmp_path, pkg, have)
    flip = Adversary(pkg.content, "flip", flip_at=5 * UNIT + 1234)  # inside unit 5
    async with AsyncExitStack() as stack:
        (bad,) = await serve_all(stack, pkg, flip)
        written: list[int] = []
        original = part.write_unit

        def spy(unit: int, data: bytes) -> None:
            assert hashlib.sha256(data).digest() == pkg.snap.block_hashes[unit]
            assert data == pkg.unit(unit)
            written.append(unit)
            original(unit, data)

        part.write_unit = spy  # type: ignore[method-assign]
        result = await fetch_missing(pkg.snap, part, [bad, good], client=client, speed_test=False)
    assert list(result.codebases_failed) == [bad]
    assert "unit 5" in result.codebases_failed[bad]
    assert "verification" in result.codebases_failed[bad]
    # units 2-4 came from the bad codebase before the flip; 5 onwards from the good one
    assert result.bytes_by_codebase == {
        bad: pkg.size_of({2, 3, 4}),
        good: pkg.size_of(set(range(5, 11)) - have),
    }
    assert result.codebase_used == good
    assert sorted(written) == sorted(set(range(11)) - have)  # each unit written once
    assert result.bytes_http == pkg.size_of(written)
    assert result.bytes_received > result.bytes_http  # the bad unit was read, not written
    assert_placed(tmp_path, pkg, part)


async def test_ignored_range_5xx_and_refused_codebases_are_skipped(
    tmp_path: Path, pkg: Package, good: str, client: httpx.AsyncClient
) -> None:
    part = partial(tmp_path, pkg, {3, 4})
    ignore = Adversary(pkg.content, "ignore_range")
    error = Adversary(pkg.content, "error")
    no_cr = Adversary(pkg.content, "no_content_range")
    refused = refused_codebase()
    async with AsyncExitStack() as stack:
        ign, err, ncr = await serve_all(stack, pkg, ignore, error, no_cr)
        result = await fetch_missing(
            pkg.snap,
            part,
            [ign, err, refused, ncr, good],
            client=client,
            speed_test=False,
            retry_delay=0.01,
        )
    failed = result.codebases_failed
    assert list(failed) == [ign, err, refused, ncr]
    assert "ignores Range" in failed[ign]
    assert "HTTP 503" in failed[err] and "3 attempts" in failed[err]
    assert len(error.ranges) == 3  # attempts_per_codebase
    assert "ConnectError" in failed[refused]
    assert "Content-Range" in failed[ncr]
    assert len(ignore.ranges) == 1 and len(no_cr.ranges) == 1  # dropped at once
    assert result.codebase_used == good
    assert result.bytes_http == pkg.size_of(set(range(11)) - {3, 4})
    assert_placed(tmp_path, pkg, part)


async def test_a_body_cut_short_is_retried_from_where_it_stopped(
    tmp_path: Path, pkg: Package, good: str, client: httpx.AsyncClient
) -> None:
    part = partial(tmp_path, pkg, {0})
    cuts = Adversary(pkg.content, "truncate", truncate_at=UNIT + UNIT // 2)  # 1.5 units each
    dead = Adversary(pkg.content, "truncate", truncate_at=0)
    async with AsyncExitStack() as stack:
        cut_url, dead_url = await serve_all(stack, pkg, cuts, dead)
        result = await fetch_missing(
            pkg.snap,
            part,
            [dead_url, cut_url, good],
            client=client,
            speed_test=False,
            retry_delay=0.01,
        )
    assert list(result.codebases_failed) == [dead_url] and len(dead.ranges) == 3
    # every attempt at the cutting codebase verified one more unit: it finished the job
    assert result.bytes_by_codebase == {cut_url: pkg.size_of(set(range(1, 11)))}
    assert cuts.ranges == [f"bytes={u * UNIT}-{pkg.snap.total_size - 1}" for u in range(1, 11)]
    assert result.bytes_received > result.bytes_http
    assert_placed(tmp_path, pkg, part)


async def test_a_200_is_accepted_when_the_whole_content_was_asked(
    tmp_path: Path, pkg: Package, client: httpx.AsyncClient
) -> None:
    part = partial(tmp_path, pkg, set())
    ignore = Adversary(pkg.content, "ignore_range")
    async with AsyncExitStack() as stack:
        (ign,) = await serve_all(stack, pkg, ignore)
        result = await fetch_missing(pkg.snap, part, [ign], client=client)
    assert result.requests == 1 and result.bytes_http == pkg.snap.total_size
    assert_placed(tmp_path, pkg, part)


async def test_all_codebases_bad_leaves_a_resumable_download(
    tmp_path: Path, pkg: Package, good: str, client: httpx.AsyncClient
) -> None:
    have = {0, 5, 6}
    part = partial(tmp_path, pkg, have)
    missing = part.missing_units()
    flip = Adversary(pkg.content, "flip", flip_at=1 * UNIT)  # the first missing unit
    error = Adversary(pkg.content, "error")
    ignore = Adversary(pkg.content, "ignore_range")
    refused = refused_codebase()
    async with AsyncExitStack() as stack:
        urls = await serve_all(stack, pkg, flip, error, ignore)
        with pytest.raises(HttpFetchError) as info:
            await fetch_missing(pkg.snap, part, [*urls, refused], client=client, retry_delay=0.01)
    err = info.value
    assert set(err.failed) == {*urls, refused}
    assert err.missing_units == len(missing) and err.missing_bytes == pkg.size_of(missing)
    for cb in (*urls, refused):
        assert cb in str(err)
    assert part.missing_units() == missing  # nothing written, nothing wrong written
    assert not (tmp_path / "dest" / "big.bin").exists()
    assert not (tmp_path / "dest" / "sub").exists()
    part.close()

    # a restart resumes from the units multicast delivered, and a good codebase finishes
    again = PartialDownload.open(pkg.snap, tmp_path / "dest")
    assert again.missing_units() == missing and again.resumed_units == len(have)
    result = await fetch_missing(pkg.snap, again, [good], client=client)
    assert result.bytes_http == pkg.size_of(missing)
    assert_placed(tmp_path, pkg, again)


async def test_malformed_codebase_urls_are_dropped_at_once(
    tmp_path: Path, pkg: Package, good: str, client: httpx.AsyncClient
) -> None:
    part = partial(tmp_path, pkg, {1})
    bogus = ["not-a-url/", "ftp://127.0.0.1/pkg/x/", "http://[::1/pkg/x/"]
    result = await fetch_missing(pkg.snap, part, [*bogus, good], client=client, speed_test=False)
    assert list(result.codebases_failed) == bogus
    assert all("unusable codebase URL" in why for why in result.codebases_failed.values())
    assert result.requests == len(bogus) + 2  # units 0, then 2-10
    ranked = await speed_test([*bogus, good], client)
    assert [r.ok for r in ranked] == [True, False, False, False]
    assert_placed(tmp_path, pkg, part)


async def test_no_codebases_is_an_error(tmp_path: Path, pkg: Package) -> None:
    part = partial(tmp_path, pkg, {1})
    with pytest.raises(HttpFetchError, match="no codebase"):
        await fetch_missing(pkg.snap, part, [])
    part.close()


async def test_cancelled_fetch_keeps_what_was_verified(
    tmp_path: Path, pkg: Package, client: httpx.AsyncClient
) -> None:
    part = partial(tmp_path, pkg, {0})
    slow = Adversary(pkg.content, "slow", delay=0.01)
    async with AsyncExitStack() as stack:
        (url,) = await serve_all(stack, pkg, slow)
        with trio.CancelScope() as scope:

            def stop_after_three(done: int) -> None:
                if done >= 3 * UNIT:
                    scope.cancel()

            await fetch_missing(pkg.snap, part, [url], client=client, progress=stop_after_three)
    assert scope.cancelled_caught
    part.close()
    again = PartialDownload.open(pkg.snap, tmp_path / "dest")
    assert again.resumed_units >= 4  # unit 0 plus the three verified before the cancel
    again.close()


# -- speed test ------------------------------------------------------------------------


async def test_speed_test_orders_slow_after_fast_and_failures_last(
    pkg: Package, good: str, client: httpx.AsyncClient
) -> None:
    slow = Adversary(pkg.content, "slow", delay=0.02)  # 16 chunks of 16 KiB: >= 0.3 s
    ignore = Adversary(pkg.content, "ignore_range")
    refused = refused_codebase()
    async with AsyncExitStack() as stack:
        slow_url, ign = await serve_all(stack, pkg, slow, ignore)
        with within(WAIT_S, "the speed test of four codebases"):
            ranked = await speed_test([refused, slow_url, ign, good], client, timeout=3)
    assert [r.codebase for r in ranked] == [good, slow_url, refused, ign]
    fast, slowr, ref, ig = ranked
    assert fast.ok and slowr.ok and fast.bytes_per_s > slowr.bytes_per_s
    assert fast.sample_bytes == slowr.sample_bytes == 256 * 1024
    assert not ref.ok and "ConnectError" in ref.reason
    assert not ig.ok and "ignores Range" in ig.reason
    assert slow.ranges == ["bytes=0-262143"]


async def test_speed_test_is_bounded_in_time(pkg: Package, client: httpx.AsyncClient) -> None:
    stalled = Adversary(pkg.content, "slow", delay=600)
    async with AsyncExitStack() as stack:
        (url,) = await serve_all(stack, pkg, stalled)
        with within(WAIT_S, "the speed test to give up on a codebase stalled for 10 minutes"):
            (ranked,) = await speed_test([url], client, timeout=0.3)
    assert not ranked.ok and "no sample within 0.3 s" in ranked.reason


async def test_fetch_uses_the_fastest_codebase_first(
    tmp_path: Path, pkg: Package, good: str, client: httpx.AsyncClient
) -> None:
    part = partial(tmp_path, pkg, set(range(6)))
    slow = Adversary(pkg.content, "slow", delay=0.01)
    async with AsyncExitStack() as stack:
        (slow_url,) = await serve_all(stack, pkg, slow)
        result = await fetch_missing(pkg.snap, part, [slow_url, good], client=client)
    assert [r.codebase for r in result.ranking] == [good, slow_url]
    assert result.codebase_used == good and set(result.bytes_by_codebase) == {good}
    assert slow.ranges == ["bytes=0-262143"]  # only the speed test touched it
    assert_placed(tmp_path, pkg, part)


# -- property: any set of missing units ------------------------------------------------


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Package, str]]:
    """One package server for every hypothesis example, in a thread with its own trio run."""
    pkg = make_package(tmp_path_factory.mktemp("prop") / "ns")
    urls: queue.Queue[str] = queue.Queue()
    stop = threading.Event()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            urls.put(await nursery.start(serve, create_app(pkg.pop.data_dir), "127.0.0.1:0"))
            await trio.to_thread.run_sync(stop.wait)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    base = urls.get(timeout=10)
    yield pkg, f"{base}/pkg/{pkg.pop.package.hash}/"
    stop.set()
    thread.join(timeout=10)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    have=st.sets(st.integers(0, 10)),
    cap_units=st.integers(1, 12),
)
def test_any_missing_set_fetches_exactly_the_missing_bytes(
    shared_server: tuple[Package, str], have: set[int], cap_units: int
) -> None:
    pkg, url = shared_server
    with tempfile.TemporaryDirectory() as tmp:
        part = partial(Path(tmp), pkg, have)
        missing = part.missing_units()
        result = trio.run(
            lambda: fetch_missing(
                pkg.snap, part, [url], speed_test=False, max_range_bytes=cap_units * UNIT
            )
        )
        assert result.bytes_http == pkg.size_of(missing)
        assert result.units_fetched == len(missing)
        runs = coalesce(pkg.snap, missing, cap_units * UNIT)
        assert result.requests == len(runs)
        assert all(run == list(range(run[0], run[-1] + 1)) for run in runs)
        if missing:
            assert result.codebase_used == url
        assert_placed(Path(tmp), pkg, part)
