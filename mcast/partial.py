"""A download in progress on disk: partial files, the map of verified units, resume, finish.

Owns the files under ``DEST/.mcast/<package hash>/``: one partial file per package file,
created at its declared size (space reserved up front, so a full disk is found before the
download, not in the middle), written only with verified units by ``pwrite`` at offsets
computed from the snapshot, so nothing past a file's declared size is ever written; and
``verified.map``, one byte per unit, saved atomically after the data it describes is fsynced.
A restart re-hashes the units the map claims and resumes from those that still match. When
every unit is verified, ``finish`` fsyncs and renames each file into place under ``DEST``; a
write error removes the work directory, so no partial file is ever left at a destination path.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import NoReturn

from mcast.errors import StorageError
from mcast.snapshot import FileEntry, Snapshot, UnsafePath, safe_join

WORK_DIR = ".mcast"
_MAP = "verified.map"


class DownloadError(StorageError):
    """The download cannot go on: no space, a write error, an unsafe destination."""


class PartialDownload:
    def __init__(self, snapshot: Snapshot, dest: Path) -> None:
        self.snapshot = snapshot
        self.dest = Path(dest)
        self.work = self.dest / WORK_DIR / snapshot.package_hash_hex
        self._spans = list(snapshot.file_spans())
        self._starts = [offset for _, offset in self._spans]
        self._fds: dict[str, int] = {}
        self.verified = bytearray(snapshot.block_count)
        self.resumed_units = 0
        self.bytes_written = 0
        self._dirty = False

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, snapshot: Snapshot, dest: Path) -> PartialDownload:
        part = cls(snapshot, dest)
        try:
            part._open()
        except BaseException:
            part.close()
            raise
        return part

    def _open(self) -> None:
        try:
            self.dest.mkdir(parents=True, exist_ok=True)
            for entry, _ in self._spans:
                safe_join(self.dest, entry.path)  # every destination is checked before any write
            safe_join(self.dest, f"{WORK_DIR}/{self.snapshot.package_hash_hex}")
        except UnsafePath as exc:
            raise DownloadError(str(exc)) from None
        except OSError as exc:
            raise DownloadError(f"cannot create {self.dest}: {exc.strerror}") from None
        self._check_space()
        (self.work / "files").mkdir(parents=True, exist_ok=True)
        for entry, _ in self._spans:
            self._fds[entry.path] = self._open_file(entry)
        self._load_map()

    def _check_space(self) -> None:
        need = self.snapshot.total_size
        if self.work.exists():
            need -= sum(
                (self.work / "files" / e.path).stat().st_size
                for e, _ in self._spans
                if (self.work / "files" / e.path).is_file()
            )
        free = shutil.disk_usage(self.dest).free
        if need > free:
            raise DownloadError(
                f"not enough space in {self.dest}: {need:,} bytes needed, {free:,} free"
            )

    def _open_file(self, entry: FileEntry) -> int:
        path = self.work / "files" / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DownloadError(f"cannot open {path}: {exc.strerror}") from None
        try:
            if os.fstat(fd).st_size != entry.size:
                os.ftruncate(fd, entry.size)
            if entry.size:
                try:
                    os.posix_fallocate(fd, 0, entry.size)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise
                    # filesystems without fallocate: the space check above must do
        except OSError as exc:
            os.close(fd)
            self._fail(f"cannot reserve {entry.size:,} bytes for {entry.path}", exc)
        return fd

    def _load_map(self) -> None:
        path = self.work / _MAP
        try:
            saved = path.read_bytes()
        except FileNotFoundError:
            return
        if len(saved) != len(self.verified):
            return  # not ours: start over
        for unit, flag in enumerate(saved):
            if flag and self._unit_matches(unit):  # trust the disk only after re-hashing
                self.verified[unit] = 1
        self.resumed_units = sum(self.verified)

    def _unit_matches(self, unit: int) -> bool:
        try:
            data = self.read_unit(unit)
        except OSError:
            return False
        return hashlib.sha256(data).digest() == self.snapshot.block_hashes[unit]

    # -- I/O by unit ---------------------------------------------------------------------
    def _pieces(self, offset: int, length: int) -> list[tuple[str, int, int, int]]:
        """(file, offset in file, offset in the unit, length) for a range of the package."""
        out = []
        i = bisect.bisect_right(self._starts, offset) - 1
        end = offset + length
        while length and i < len(self._spans):
            entry, start = self._spans[i]
            lo, hi = max(offset, start), min(end, start + entry.size)
            if hi > lo:
                out.append((entry.path, lo - start, lo - offset, hi - lo))
            if start + entry.size >= end:
                break
            i += 1
        return out

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the package as written so far (a master serves verified units from here)."""
        buf = bytearray(length)
        for path, file_off, at, n in self._pieces(offset, length):
            buf[at : at + n] = os.pread(self._fds[path], n, file_off)
        return bytes(buf)

    def read_unit(self, unit: int) -> bytes:
        return self.read(*self.snapshot.block_range(unit))

    def verified_prefix(self) -> int:
        """How many units from the start are verified: what a streaming master may send."""
        try:
            return self.verified.index(0)
        except ValueError:
            return len(self.verified)

    def write_unit(self, unit: int, data: bytes) -> None:
        """Write one verified unit into place (the receiver core has checked its hash)."""
        offset, length = self.snapshot.block_range(unit)
        if len(data) != length:
            raise ValueError(f"unit {unit} is {len(data)} bytes, expected {length}")
        view = memoryview(data)
        for path, file_off, unit_off, n in self._pieces(offset, length):
            try:
                written = os.pwrite(self._fds[path], view[unit_off : unit_off + n], file_off)
            except OSError as exc:
                self._fail(f"cannot write {path}", exc)
            if written != n:
                self._fail(f"short write to {path}", OSError(errno.EIO, "short write"))
        self.verified[unit] = 1
        self.bytes_written += length
        self._dirty = True

    def checkpoint(self) -> None:
        """Make what is written durable, then record it in the map (in that order)."""
        if not self._dirty or not self._fds:  # nothing new, or finished/discarded already
            return
        try:
            for fd in self._fds.values():
                os.fsync(fd)
            tmp = self.work / (_MAP + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(self.verified)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.work / _MAP)
        except OSError as exc:
            self._fail("cannot save progress", exc)
        self._dirty = False

    @property
    def complete(self) -> bool:
        return all(self.verified)

    def verified_units(self) -> list[int]:
        return [u for u, ok in enumerate(self.verified) if ok]

    def missing_units(self) -> list[int]:
        return [u for u, ok in enumerate(self.verified) if not ok]

    # -- ending --------------------------------------------------------------------------
    def finish(self) -> list[Path]:
        """Every unit verified: fsync, rename each file into place, drop the work directory."""
        if not self.complete:
            raise DownloadError(f"{len(self.missing_units())} units are still missing")
        placed = []
        try:
            for entry, _ in self._spans:
                os.fsync(self._fds[entry.path])
                target = safe_join(self.dest, entry.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.utime(self._fds[entry.path], (entry.mtime, entry.mtime))
                os.replace(self.work / "files" / entry.path, target)
                placed.append(target)
            for directory in {p.parent for p in placed}:
                _fsync_dir(directory)
        except (OSError, UnsafePath) as exc:
            self._fail("cannot move the finished package into place", exc)
        self.close()
        shutil.rmtree(self.work, ignore_errors=True)
        _remove_if_empty(self.dest / WORK_DIR)
        return placed

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._dirty = False

    def discard(self) -> None:
        self.close()
        shutil.rmtree(self.work, ignore_errors=True)
        _remove_if_empty(self.dest / WORK_DIR)

    def _fail(self, what: str, exc: BaseException) -> NoReturn:
        """A write error or a full disk: remove every partial file and say why."""
        reason = getattr(exc, "strerror", None) or str(exc)
        self.discard()
        raise DownloadError(f"{what}: {reason}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
