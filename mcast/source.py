"""Package bytes for a sender, read from the files a snapshot lists and checked against it.

``FileSource`` maps offsets of the concatenated package onto the files under a root and
hashes every whole unit it reads: a file changed since the snapshot was made stops the
session with :class:`SourceMismatch` instead of streaming bytes that every receiver would
reject.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from pathlib import Path

from mcast.errors import StorageError
from mcast.snapshot import Snapshot, safe_join


class SourceMismatch(StorageError):
    """The files on disk are not the ones the snapshot describes."""


class FileSource:
    def __init__(self, snapshot: Snapshot, root: Path) -> None:
        self.snapshot = snapshot
        root = Path(root)
        self._spans = list(snapshot.file_spans())
        self._starts = [offset for _, offset in self._spans]
        self._fds: list[int] = []
        self._checked = bytearray(snapshot.block_count)
        single = len(self._spans) == 1 and root.is_file()
        try:
            for entry, _ in self._spans:
                path = root if single else safe_join(root, entry.path)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self._fds.append(fd)
                size = os.fstat(fd).st_size
                if size != entry.size:
                    raise SourceMismatch(
                        f"{path} is {size:,} bytes, the snapshot says {entry.size:,}"
                    )
        except OSError as exc:
            self.close()
            raise SourceMismatch(f"cannot read the package under {root}: {exc}") from None
        except BaseException:
            self.close()
            raise

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        i = bisect.bisect_right(self._starts, offset) - 1
        pos, end = offset, offset + length
        while pos < end and i < len(self._spans):
            entry, start = self._spans[i]
            n = min(end, start + entry.size) - pos
            if n > 0:
                buf[pos - offset : pos - offset + n] = os.pread(self._fds[i], n, pos - start)
                pos += n
            i += 1
        data = bytes(buf)
        self._check(offset, data)
        return data

    def _check(self, offset: int, data: bytes) -> None:
        size = self.snapshot.block_size
        if offset % size:
            return
        for k in range(0, len(data), size):
            unit = (offset + k) // size
            if self._checked[unit]:
                continue
            chunk = data[k : k + size]
            if len(chunk) != self.snapshot.block_range(unit)[1]:
                continue
            if hashlib.sha256(chunk).digest() != self.snapshot.block_hashes[unit]:
                raise SourceMismatch(f"unit {unit} on disk does not match the snapshot")
            self._checked[unit] = 1

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
