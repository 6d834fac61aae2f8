"""The package repository on disk: what ``package add`` writes and the servers read.

Layout of a data directory::

    DATA/ns.sqlite3                  the store (see store.py), unless database.url names one
    DATA/database.url                the PostgreSQL URL of the store, if it is there (0600)
    DATA/signing.key                 Ed25519 private key that signs snapshots (0600)
    DATA/signing.pub                 its public half, for agents' trust stores
    DATA/packages/<hash>/snapshot.xml   the signed snapshot of one package version
    DATA/packages/<hash>/files/...      a private copy of the package's files

A package version is immutable once renamed into place under its hash: the files are copied
into a staging directory first and the snapshot is built from the copy, so what is served is
exactly what was hashed. This module owns that layout, adding packages, and reading byte
ranges of a package's content (the concatenation of its files in snapshot order) in chunks.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from mcast.errors import StorageError
from mcast.fleet import MAX_SAME_CONTENT
from mcast.snapshot import (
    Snapshot,
    SnapshotError,
    build_snapshot,
    generate_key,
    load_private_key,
    parse_snapshot_xml,
    public_key_pem,
    save_private_key,
)

from .db import check_choice, record_url
from .store import PackageRow, Store, StoreError

DAY_S = 24 * 3600
DEFAULT_VALID_DAYS = 30.0  # how long a new or renewed snapshot is valid
KEY_NAME = "signing.key"
PUB_NAME = "signing.pub"
CHUNK = 256 * 1024


class RepoError(StorageError):
    """A package could not be added or read."""


def init_data_dir(data_dir: Path, database: str | None = None) -> Store:
    """Create the data directory, the store and the signing key (idempotent).

    ``database``: a PostgreSQL URL to keep the store in, recorded in ``DATA/database.url``;
    None keeps the store the directory has (SQLite in ``DATA/ns.sqlite3`` for a new one)."""
    data_dir = Path(data_dir)
    if database is not None:
        check_choice(data_dir, database)  # refused before anything is written
    try:
        (data_dir / "packages").mkdir(parents=True, exist_ok=True)
        key_path = data_dir / KEY_NAME
        if not key_path.exists():
            key = generate_key()
            save_private_key(key, key_path)
            (data_dir / PUB_NAME).write_bytes(public_key_pem(key.public_key()))
    except OSError as exc:
        raise RepoError(f"cannot create data directory {data_dir}: {exc.strerror or exc}") from None
    store = Store(data_dir, database)  # a database that cannot be reached is not recorded
    if database is not None:
        try:
            record_url(data_dir, database)
        except BaseException:
            store.close()
            raise
    return store


def package_dir(data_dir: Path, hash_hex: str) -> Path:
    return Path(data_dir) / "packages" / hash_hex


@dataclass(frozen=True)
class AddResult:
    row: PackageRow
    changed: bool  # False: the content equals the newest version, nothing was added


def _same_content(old: Snapshot, new: Snapshot) -> bool:
    return (
        old.content_hash == new.content_hash
        and [(f.path, f.size) for f in old.files] == [(f.path, f.size) for f in new.files]
        and old.block_size == new.block_size
    )


def add_package(
    store: Store, source: Path, name: str, *, valid_days: float = DEFAULT_VALID_DAYS
) -> AddResult:
    """Copy ``source`` (file or directory), build and sign its snapshot, register it.

    The package keeps its id across versions; a changed content gets version + 1 and a new
    hash. Re-adding unchanged content is a no-op that returns the current version, unless
    that version's snapshot has expired: then it is renewed (:func:`renew_package`), since
    an expired version is one no agent can verify.
    """
    source = Path(source)
    if not source.exists():
        raise RepoError(f"{source} does not exist")
    try:
        return _add_package(store, source, name, valid_days * DAY_S)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise RepoError(f"cannot add {source}: {exc.strerror or exc}{where}") from None
    except SnapshotError as exc:
        raise RepoError(f"cannot add {source}: {exc}") from None


def _add_package(store: Store, source: Path, name: str, valid_for: float) -> AddResult:
    data_dir = store.data_dir
    key = load_private_key(data_dir / KEY_NAME)
    staging = data_dir / "packages" / f".staging-{uuid.uuid4().hex}"
    files = staging / "files"
    try:
        if source.is_dir():
            shutil.copytree(source, files, symlinks=True)
        else:
            files.mkdir(parents=True)
            shutil.copy2(source, files / source.name)
        current = store.latest_package(name=name)
        version = current.version + 1 if current else 1
        snap = build_snapshot(files, name, version=version, valid_for=valid_for)
        if current is not None:
            old = load_snapshot(data_dir, current.hash)
            if _same_content(old, snap):
                if old.expires > time.time():
                    return AddResult(current, changed=False)
                return AddResult(_renew(store, current, old, valid_for), changed=True)
        signed = snap.signed(key)
        (staging / "snapshot.xml").write_bytes(signed.to_xml())
        _fsync_tree(staging)
        final = package_dir(data_dir, signed.package_hash_hex)
        os.rename(staging, final)
        row = PackageRow(
            hash=signed.package_hash_hex,
            package_id=current.package_id if current else str(uuid.uuid4()),
            name=name,
            version=version,
            size=signed.total_size,
            content_hash=signed.content_hash.hex(),
            session_key=secrets.token_hex(32),
        )
        store.add_package(row)
        return AddResult(row, changed=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def renew_package(
    store: Store, row: PackageRow, *, valid_days: float = DEFAULT_VALID_DAYS
) -> PackageRow:
    """Re-sign the newest version ``row`` of a package with a new validity: a new version
    with the same files and hash units. The package hash covers the validity, so the renewal
    is a new hash that tasks follow like any new version; the policy lists the versions it
    renews (:func:`same_content_as`) so an agent that has the package already keeps its job
    and does not fetch or run it again."""
    newest = store.latest_package(package_id=row.package_id)
    if newest is None or newest.hash != row.hash:
        raise StoreError(f"{row.hash[:12]} is not the newest version of {row.name!r}: renew that")
    try:
        return _renew(store, row, load_snapshot(store.data_dir, row.hash), valid_days * DAY_S)
    except OSError as exc:
        raise RepoError(f"cannot renew {row.name!r}: {exc.strerror or exc}") from None


def _renew(store: Store, row: PackageRow, old: Snapshot, valid_for: float) -> PackageRow:
    data_dir = store.data_dir
    key = load_private_key(data_dir / KEY_NAME)
    now = int(time.time())
    snap = replace(
        old, version=row.version + 1, created=now, expires=int(now + valid_for),
        key_id="", signature=b"",
    ).signed(key)  # fmt: skip
    staging = data_dir / "packages" / f".staging-{uuid.uuid4().hex}"
    try:
        # the files are immutable once in place: links cost no space (a copy where they fail)
        shutil.copytree(package_dir(data_dir, row.hash) / "files", staging / "files",
                        copy_function=_link_or_copy)  # fmt: skip
        (staging / "snapshot.xml").write_bytes(snap.to_xml())
        _fsync_tree(staging)
        os.rename(staging, package_dir(data_dir, snap.package_hash_hex))
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    new = replace(row, hash=snap.package_hash_hex, version=snap.version,
                  session_key=secrets.token_hex(32))  # fmt: skip
    store.add_package(new)
    return new


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def same_content_as(store: Store, row: PackageRow) -> tuple[str, ...]:
    """The hashes of the versions before ``row`` that hold exactly its content (renewals
    re-sign; nothing else makes two versions alike), the newest first, at most
    ``MAX_SAME_CONTENT``; a version whose snapshot is gone ends the chain."""
    out: list[str] = []
    try:
        snap = load_snapshot(store.data_dir, row.hash)
        for older in store.package_versions(row.package_id):
            if older.version >= row.version:
                continue
            if len(out) == MAX_SAME_CONTENT or older.content_hash != row.content_hash:
                break
            if not _same_content(load_snapshot(store.data_dir, older.hash), snap):
                break
            out.append(older.hash)
    except (RepoError, SnapshotError):
        pass
    return tuple(out)


def remove_files(data_dir: Path, hash_hex: str) -> None:
    """Remove a package version's directory (after the store forgot it)."""
    shutil.rmtree(package_dir(data_dir, hash_hex), ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            fd = os.open(os.path.join(dirpath, n), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@lru_cache(maxsize=256)
def _load_snapshot_cached(path: str, mtime_ns: int) -> Snapshot:
    return parse_snapshot_xml(Path(path).read_bytes())


def load_snapshot(data_dir: Path, hash_hex: str) -> Snapshot:
    """The parsed snapshot of a stored package version (cached). Raises RepoError if absent."""
    path = package_dir(data_dir, hash_hex) / "snapshot.xml"
    try:
        st = path.stat()
    except OSError:
        raise RepoError(f"no package with hash {hash_hex}") from None
    return _load_snapshot_cached(str(path), st.st_mtime_ns)


def snapshot_xml(data_dir: Path, hash_hex: str) -> bytes:
    try:
        return (package_dir(data_dir, hash_hex) / "snapshot.xml").read_bytes()
    except OSError:
        raise RepoError(f"no package with hash {hash_hex}") from None


def content_pieces(
    data_dir: Path, snap: Snapshot, start: int, end: int
) -> Iterator[tuple[Path, int, int]]:
    """(file, offset in file, length) pieces covering content bytes [start, end)."""
    files_root = package_dir(data_dir, snap.package_hash_hex) / "files"
    for entry, offset in snap.file_spans():
        lo, hi = max(start, offset), min(end, offset + entry.size)
        if lo < hi:
            yield files_root.joinpath(*entry.path.split("/")), lo - offset, hi - lo


def read_chunks(
    pieces: list[tuple[Path, int, int]], chunk: int = CHUNK
) -> Generator[bytes, None, None]:
    """Read the pieces in order, ``chunk`` bytes at a time (a blocking generator)."""
    for path, offset, length in pieces:
        with open(path, "rb") as fh:
            fh.seek(offset)
            left = length
            while left > 0:
                data = fh.read(min(chunk, left))
                if not data:
                    raise RepoError(f"{path} is shorter than its snapshot says")
                left -= len(data)
                yield data
