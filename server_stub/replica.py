"""Package-server replication: fetch a package version from the upstream server on first use.

A package server started with ``--upstream URL`` that is asked for a package hash it does not
hold fetches it once from ``URL/pkg/HASH/``: the signed snapshot first (verified against the
Notification Server's public key), then the content, which is checked hash unit by hash unit
against the snapshot while it is split back into files in a staging directory; only a fully
verified package is renamed into ``DATA/packages/HASH``. A bad upstream therefore costs a
failed request, never a wrong byte served. This module owns that download.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from mcast.errors import NetworkError
from mcast.snapshot import Snapshot, SnapshotError, TrustStore, load_verified, safe_join

from .repo import package_dir

TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class ReplicaError(NetworkError):
    """The upstream does not have the package, or what it sent does not verify."""


class Throttle:
    """A token bucket on bytes: :meth:`take` blocks until ``n`` more bytes fit in
    ``rate_bps`` (bytes per second, one second's worth of burst); ``rate_bps`` 0 is no cap.
    Clock and sleep are injectable (tests count the sleeps)."""

    def __init__(
        self,
        rate_bps: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate_bps
        self._clock, self._sleep = clock, sleep
        self._tokens, self._stamp = rate_bps, clock()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= n
        if self._tokens < 0:  # in debt: wait until it is paid
            self._sleep(-self._tokens / self.rate)


def _throttled(chunks: Iterator[bytes], throttle: Throttle) -> Iterator[bytes]:
    for chunk in chunks:
        throttle.take(len(chunk))
        yield chunk


def _write_content(
    snap: Snapshot, resp: httpx.Response, files_root: Path, throttle: Throttle
) -> None:
    """Split the streamed content into the snapshot's files, verifying every hash unit."""
    spans = list(snap.file_spans())
    unit, unit_index, unit_fill = hashlib.sha256(), 0, 0
    offset, span_i, out = 0, 0, None
    total = snap.total_size

    def open_next() -> None:
        nonlocal out, span_i
        while span_i < len(spans) and spans[span_i][0].size == 0:
            safe_join(files_root, spans[span_i][0].path).parent.mkdir(parents=True, exist_ok=True)
            safe_join(files_root, spans[span_i][0].path).touch()
            span_i += 1
        if span_i < len(spans):
            path = safe_join(files_root, spans[span_i][0].path)
            path.parent.mkdir(parents=True, exist_ok=True)
            out = open(path, "wb")  # noqa: SIM115 - closed when its span is full

    open_next()
    try:
        for chunk in _throttled(resp.iter_bytes(), throttle):
            view = memoryview(chunk)
            if offset + len(view) > total:
                raise ReplicaError("upstream sent more bytes than the snapshot lists")
            while view:
                entry, start = spans[span_i]
                take = min(len(view), start + entry.size - offset, snap.block_size - unit_fill)
                assert out is not None
                out.write(view[:take])
                unit.update(view[:take])
                view, offset, unit_fill = view[take:], offset + take, unit_fill + take
                if unit_fill == snap.block_size or offset == total:
                    if unit.digest() != snap.block_hashes[unit_index]:
                        raise ReplicaError(f"hash unit {unit_index} from upstream does not verify")
                    unit, unit_index, unit_fill = hashlib.sha256(), unit_index + 1, 0
                if offset == start + entry.size:
                    out.flush()
                    os.fsync(out.fileno())
                    out.close()
                    out = None
                    span_i += 1
                    open_next()
    finally:
        if out is not None:
            out.close()
    if offset != total:
        raise ReplicaError(f"upstream sent {offset} of {total} bytes")


def replicate(
    data_dir: Path, upstream: str, hash_hex: str, trust: TrustStore, rate_bps: float = 0.0
) -> Snapshot:
    """Fetch package ``hash_hex`` from ``upstream`` into ``data_dir`` (blocking), reading
    the content at ``rate_bps`` bytes per second at most (0: as fast as it comes)."""
    base = f"{upstream.rstrip('/')}/pkg/{hash_hex}/"
    staging = Path(data_dir) / "packages" / f".replica-{uuid.uuid4().hex}"
    try:
        with httpx.Client(timeout=TIMEOUT) as client:
            resp = client.get(base + "snapshot.xml")
            if resp.status_code == 404:
                raise ReplicaError(f"upstream has no package {hash_hex}")
            resp.raise_for_status()
            try:
                snap = load_verified(resp.content, trust, time.time())
            except SnapshotError as exc:
                raise ReplicaError(f"upstream snapshot refused: {exc}") from None
            if snap.package_hash_hex != hash_hex:
                raise ReplicaError("upstream sent the snapshot of another package")
            (staging / "files").mkdir(parents=True)
            with client.stream("GET", base + "content") as content:
                content.raise_for_status()
                _write_content(snap, content, staging / "files", Throttle(rate_bps))
        (staging / "snapshot.xml").write_bytes(resp.content)
        final = package_dir(data_dir, hash_hex)
        if not final.exists():
            os.rename(staging, final)
        return snap
    except httpx.HTTPError as exc:
        raise ReplicaError(f"upstream {upstream}: {exc}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
