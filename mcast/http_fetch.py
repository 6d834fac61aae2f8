"""HTTP fallback: download only the hash units multicast could not deliver, from codebases.

This module owns step 6 of the seed flow for what is still missing after multicast: the
speed test of the codebases (``SpeedTestCodebases``, :func:`speed_test`) and the download of
exactly the units ``PartialDownload.missing_units()`` lists (:func:`fetch_missing`).

A codebase is ``http://HOST:PORT/pkg/<hash>/`` and ``CODEBASE/content`` is the concatenated
package (``server_stub/PROTOCOL.md``). Runs of consecutive missing units are coalesced into
one ``Range: bytes=a-b`` request each (capped at ``max_range_bytes``); the body is streamed
and cut into units as bytes arrive, so at most one unit and one network chunk are held in
memory. Every unit is checked against ``snapshot.block_hashes`` before it reaches
``PartialDownload.write_unit``: a codebase is an untrusted transport, the signed snapshot
decides which bytes are right, exactly as for multicast.

Codebase failure policy (each failure is recorded with its reason and the next codebase, in
speed-test order, gets what is still missing; units already written are never asked again):

- permanent, the codebase is dropped at once: a unit whose SHA-256 does not match, a 4xx
  (or any status but 206/200/5xx), a missing or wrong ``Content-Range``, a body longer than
  the range, a ``Content-Encoding``, a malformed or non-HTTP codebase URL, and a ``200``
  answer to a range request. A server that ignores
  ``Range`` is treated as not supporting ranges: we close the response without reading it
  rather than pull the whole package to use a few units of it. The one exception is a
  request for the whole content (every unit missing), where RFC 9110 allows a 200 and the
  full body is exactly what was asked.
- transient, retried with doubling back-off (``retry_delay``, then twice that, ...): 5xx,
  connection errors and timeouts, and a body shorter than its range (what a dropped
  connection looks like). A retry asks only for the units still missing, so the verified
  units of a cut body are kept. After ``attempts_per_codebase`` consecutive transient
  failures without a newly verified unit the codebase is dropped; progress resets the count.

Codebases that failed the speed test are still tried, after those that passed (a timeout in
the test may only mean a slow server), so the speed test reorders but never loses a source.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import trio

from mcast.errors import McastError
from mcast.partial import DownloadError, PartialDownload
from mcast.snapshot import Snapshot

DEFAULT_SAMPLE_BYTES = 256 * 1024
DEFAULT_MAX_RANGE_BYTES = 8 * 1024 * 1024
CHECKPOINT_BYTES = 4 * 1024 * 1024
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_REQUEST_HEADERS = {"Accept-Encoding": "identity"}


class HttpFetchError(McastError):
    """Units are still missing after every codebase was tried; says why each one failed."""

    def __init__(self, missing_units: int, missing_bytes: int, failed: dict[str, str]) -> None:
        self.missing_units = missing_units
        self.missing_bytes = missing_bytes
        self.failed = dict(failed)
        if failed:
            lines = "".join(f"\n  {cb}: {why}" for cb, why in failed.items())
            detail = f" after every codebase failed:{lines}"
        else:
            detail = ": no codebase to download from"
        super().__init__(f"{missing_units} units ({missing_bytes:,} bytes) still missing{detail}")


@dataclass(frozen=True)
class Ranked:
    """One codebase's speed-test outcome. Failed entries have ``ok=False`` and a reason."""

    codebase: str
    ok: bool
    bytes_per_s: float = 0.0
    seconds: float = 0.0
    sample_bytes: int = 0
    reason: str = ""


@dataclass
class HttpFetchResult:
    bytes_http: int  # bytes of verified units written from HTTP
    units_fetched: int
    codebase_used: str | None  # the codebase most of those bytes came from
    codebases_failed: dict[str, str]  # codebase -> why it was dropped
    requests: int  # content requests sent, retries and refused answers included
    bytes_received: int = 0  # body bytes read, including any that failed verification
    bytes_by_codebase: dict[str, int] = field(default_factory=dict)
    ranking: list[Ranked] = field(default_factory=list)  # the speed test, if one was run


# -- speed test ------------------------------------------------------------------------


def content_url(codebase: str) -> str:
    return codebase.rstrip("/") + "/content"


async def speed_test(
    codebases: list[str],
    client: httpx.AsyncClient,
    *,
    sample_bytes: int = DEFAULT_SAMPLE_BYTES,
    timeout: float = 5.0,  # noqa: ASYNC109 - a per-codebase bound, the brief's API
) -> list[Ranked]:
    """Time a ``sample_bytes`` range of every codebase's content, all at once.

    Returns the codebases fastest first, then the failed ones (error, unexpected status,
    wrong length, or no answer within ``timeout`` seconds) in their given order. The whole
    test takes at most about ``timeout`` seconds and reads at most ``sample_bytes`` from each.
    """
    if sample_bytes <= 0:
        raise ValueError("sample_bytes must be positive")
    results: dict[int, Ranked] = {}

    async def one(index: int, codebase: str) -> None:
        results[index] = await _measure(codebase, client, sample_bytes, timeout)

    async with trio.open_nursery() as nursery:
        for index, codebase in enumerate(codebases):
            nursery.start_soon(one, index, codebase)
    ranked = [results[i] for i in range(len(codebases))]
    good = sorted((r for r in ranked if r.ok), key=lambda r: -r.bytes_per_s)
    return good + [r for r in ranked if not r.ok]


async def _measure(
    codebase: str, client: httpx.AsyncClient, sample_bytes: int, limit_s: float
) -> Ranked:
    start = trio.current_time()
    got = 0
    with trio.move_on_after(limit_s):
        try:
            got = await _read_sample(codebase, client, sample_bytes)
        except _SampleFailed as exc:
            return Ranked(codebase, False, seconds=trio.current_time() - start, reason=str(exc))
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return Ranked(codebase, False, seconds=trio.current_time() - start, reason=_why(exc))
        elapsed = max(trio.current_time() - start, 1e-6)
        return Ranked(codebase, True, got / elapsed, elapsed, got)
    return Ranked(codebase, False, seconds=limit_s, reason=f"no sample within {limit_s:g} s")


class _SampleFailed(Exception):
    pass


async def _read_sample(codebase: str, client: httpx.AsyncClient, sample_bytes: int) -> int:
    headers = {**_REQUEST_HEADERS, "Range": f"bytes=0-{sample_bytes - 1}"}
    async with client.stream("GET", content_url(codebase), headers=headers) as resp:
        if resp.status_code == 206:
            span = _parse_content_range(resp.headers.get("content-range"))
            if span is None or span[0] != 0:
                raise _SampleFailed(f"bad Content-Range {resp.headers.get('content-range')!r}")
            _, last, total = span
            expected = min(sample_bytes, total) if total is not None else last + 1
            if last + 1 != expected:
                raise _SampleFailed(f"asked {expected} bytes, Content-Range says {last + 1}")
        elif resp.status_code == 200:  # fine only if the whole content fits in the sample
            expected = sample_bytes
        else:
            raise _SampleFailed(f"HTTP {resp.status_code}")
        got = 0
        async for chunk in resp.aiter_bytes():
            got += len(chunk)
            if got > expected:
                if resp.status_code == 200:
                    raise _SampleFailed("ignores Range: 200 with more than the sample")
                raise _SampleFailed(f"body longer than the {expected} bytes asked")
        if resp.status_code == 206 and got != expected:
            raise _SampleFailed(f"body of {got} bytes for a range of {expected}")
        return got


# -- fetching missing units ------------------------------------------------------------


class _CodebaseBad(Exception):
    """The codebase is dropped for the rest of this fetch."""


class _Transient(Exception):
    """Worth another attempt at the same codebase after a pause."""


@dataclass
class _State:
    snapshot: Snapshot
    part: PartialDownload
    progress: Callable[[int], None] | None
    bytes_http: int = 0
    units: int = 0
    requests: int = 0
    received: int = 0
    since_checkpoint: int = 0
    by_codebase: dict[str, int] = field(default_factory=dict)


async def fetch_missing(
    snapshot: Snapshot,
    part: PartialDownload,
    codebases: list[str],
    *,
    client: httpx.AsyncClient | None = None,
    speed_test: bool = True,
    progress: Callable[[int], None] | None = None,
    max_range_bytes: int = DEFAULT_MAX_RANGE_BYTES,
    attempts_per_codebase: int = 3,
    retry_delay: float = 0.25,
    sample_bytes: int = DEFAULT_SAMPLE_BYTES,
    verify: ssl.SSLContext | None = None,
) -> HttpFetchResult:
    """Download every unit ``part`` is missing from ``codebases``, verified, then return.

    ``verify`` is the TLS context https codebases are checked with (default: the system's
    CAs); it is not used when ``client`` is given. Does not call ``part.finish()``: the
    caller decides when the package is placed. Raises
    :class:`HttpFetchError` when units are still missing after every codebase was tried;
    the partial download is checkpointed and resumable in every case.
    """
    if attempts_per_codebase < 1:
        raise ValueError("attempts_per_codebase must be at least 1")
    st = _State(snapshot, part, progress)
    failed: dict[str, str] = {}
    ranking: list[Ranked] = []
    if not part.missing_units():
        return HttpFetchResult(0, 0, None, failed, 0)
    own = client is None
    http = client or httpx.AsyncClient(
        timeout=DEFAULT_TIMEOUT, trust_env=False, verify=True if verify is None else verify
    )
    try:
        order = list(dict.fromkeys(codebases))
        if speed_test and len(order) > 1:
            ranking = await _speed_test(order, http, sample_bytes=sample_bytes)
            order = [r.codebase for r in ranking]
        for codebase in order:
            if not part.missing_units():
                break
            try:
                await _from_codebase(
                    st, http, codebase, max_range_bytes, attempts_per_codebase, retry_delay
                )
            except _CodebaseBad as exc:
                failed[codebase] = str(exc)
    except DownloadError:
        raise  # the partial download is gone (disk error): nothing left to save
    except BaseException:
        await _checkpoint(part)  # cancelled or crashed: keep what was verified
        raise
    else:
        await _checkpoint(part)
    finally:
        if own:
            with trio.CancelScope(shield=True):
                await http.aclose()
    missing = part.missing_units()
    if missing:
        lost = sum(snapshot.block_range(u)[1] for u in missing)
        raise HttpFetchError(len(missing), lost, failed)
    used = max(st.by_codebase, key=lambda cb: st.by_codebase[cb]) if st.by_codebase else None
    return HttpFetchResult(
        st.bytes_http,
        st.units,
        used,
        failed,
        st.requests,
        st.received,
        dict(st.by_codebase),
        ranking,
    )


_speed_test = speed_test  # fetch_missing's ``speed_test`` flag shadows the function


def coalesce(snapshot: Snapshot, units: list[int], max_range_bytes: int) -> list[list[int]]:
    """Group sorted units into runs of consecutive units of at most ``max_range_bytes``
    (a run always holds at least one unit, however large)."""
    runs: list[list[int]] = []
    size = 0
    for unit in units:
        length = snapshot.block_range(unit)[1]
        if runs and runs[-1][-1] == unit - 1 and size + length <= max_range_bytes:
            runs[-1].append(unit)
            size += length
        else:
            runs.append([unit])
            size = length
    return runs


async def _from_codebase(
    st: _State,
    client: httpx.AsyncClient,
    codebase: str,
    max_range_bytes: int,
    attempts: int,
    retry_delay: float,
) -> None:
    """Fetch what is missing from one codebase; raises _CodebaseBad to move on."""
    failures = 0
    delay = retry_delay
    while True:
        missing = st.part.missing_units()
        if not missing:
            return
        run = coalesce(st.snapshot, missing, max_range_bytes)[0]
        before = st.units
        try:
            await _fetch_run(st, client, codebase, run)
        except _Transient as exc:
            if st.units > before:  # progress: the codebase works, start counting again
                failures, delay = 0, retry_delay
            failures += 1
            if failures >= attempts:
                raise _CodebaseBad(f"{exc} ({failures} attempts)") from None
            await trio.sleep(delay)
            delay *= 2
        else:
            failures, delay = 0, retry_delay


async def _fetch_run(st: _State, client: httpx.AsyncClient, codebase: str, run: list[int]) -> None:
    first, _ = st.snapshot.block_range(run[0])
    last_off, last_len = st.snapshot.block_range(run[-1])
    end = last_off + last_len  # exclusive
    total = st.snapshot.total_size
    headers = {**_REQUEST_HEADERS, "Range": f"bytes={first}-{end - 1}"}
    st.requests += 1
    try:
        async with client.stream("GET", content_url(codebase), headers=headers) as resp:
            _check_response(resp, first, end, total)
            await _consume(st, codebase, resp, run, first, end)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise _CodebaseBad(f"unusable codebase URL: {exc}") from None
    except httpx.HTTPError as exc:  # connection refused/reset, timeouts, protocol errors
        raise _Transient(_why(exc)) from None


def _check_response(resp: httpx.Response, first: int, end: int, total: int) -> None:
    status = resp.status_code
    if status >= 500:
        raise _Transient(f"HTTP {status}")
    encoding = resp.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise _CodebaseBad(f"Content-Encoding {encoding!r} on a byte range")
    if status == 200:
        whole = first == 0 and end == total
        length = resp.headers.get("content-length")
        if not whole:
            raise _CodebaseBad("ignores Range: answered 200 to a range request")
        if length is not None and length != str(total):
            raise _CodebaseBad(f"200 with Content-Length {length}, content is {total} bytes")
        return
    if status != 206:
        raise _CodebaseBad(f"HTTP {status} for bytes {first}-{end - 1}")
    raw = resp.headers.get("content-range")
    span = _parse_content_range(raw)
    if span is None:
        raise _CodebaseBad(f"206 with missing or malformed Content-Range {raw!r}")
    if span != (first, end - 1, total):
        raise _CodebaseBad(f"asked bytes {first}-{end - 1}/{total}, got Content-Range {raw!r}")


async def _consume(
    st: _State,
    codebase: str,
    resp: httpx.Response,
    run: list[int],
    first: int,
    end: int,
) -> None:
    """Cut the body into units as it arrives; verify each before it is written."""
    wanted = set(run)
    unit = first // st.snapshot.block_size
    length = st.snapshot.block_range(unit)[1]
    buf = bytearray()
    pos = first
    async for chunk in resp.aiter_bytes():
        st.received += len(chunk)
        if pos + len(chunk) > end:
            raise _CodebaseBad(f"body longer than the {end - first} bytes asked")
        view = memoryview(chunk)
        while view:
            take = min(len(view), length - len(buf))
            buf += view[:take]
            view = view[take:]
            pos += take
            if len(buf) == length:
                if unit in wanted:
                    await _accept(st, codebase, unit, bytes(buf))
                buf.clear()
                unit += 1
                if pos < end:
                    length = st.snapshot.block_range(unit)[1]
    if pos != end:
        raise _Transient(f"body ended after {pos - first} of {end - first} bytes")


async def _accept(st: _State, codebase: str, unit: int, data: bytes) -> None:
    if hashlib.sha256(data).digest() != st.snapshot.block_hashes[unit]:
        raise _CodebaseBad(f"unit {unit} failed verification (SHA-256 mismatch)")
    if st.part.verified[unit]:
        return  # written meanwhile (cannot happen within one fetch; never write twice)
    st.part.write_unit(unit, data)
    st.units += 1
    st.bytes_http += len(data)
    st.since_checkpoint += len(data)
    st.by_codebase[codebase] = st.by_codebase.get(codebase, 0) + len(data)
    if st.since_checkpoint >= CHECKPOINT_BYTES:
        await _checkpoint(st.part)
        st.since_checkpoint = 0
    if st.progress is not None:
        st.progress(st.bytes_http)


# -- helpers ---------------------------------------------------------------------------


async def _checkpoint(part: PartialDownload) -> None:
    """fsync and save the map off the trio thread; shielded so a cancel cannot skip it."""
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(part.checkpoint)


def _parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    if value is None:
        return None
    m = _CONTENT_RANGE_RE.fullmatch(value.strip())
    if m is None:
        return None
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if last < first:
        return None
    return first, last, total


def _why(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]
