"""The package a lab run moves, and the check that a receiver's copy is the package.

Shared by every lab mode (:mod:`bench.lab`, :mod:`bench.lab_fetch`): random bytes, generated
fresh for each run (or kept in a directory for runs that must share one), and their SHA-256
recorded when written, so a receiver counts as verified only when its files re-hash equal on
disk.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIG_NAME = "payload.bin"
_CHUNK = 1 << 20


@dataclass
class Package:
    root: Path
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # rel -> (size, sha256)

    @property
    def total(self) -> int:
        return sum(size for size, _ in self.files.values())


def make_package(root: Path, size: int) -> Package:
    """Random bytes: ``payload.bin`` of ``size`` bytes plus two small files (1 and 3 KiB)."""
    pkg = Package(root)
    root.mkdir(parents=True, exist_ok=True)
    for rel, n in ((BIG_NAME, size), ("README.txt", 1024), ("etc/config.ini", 3072)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            left = n
            while left:
                chunk = os.urandom(min(_CHUNK, left))
                f.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        pkg.files[rel] = (n, digest.hexdigest())
    return pkg


def kept_package(root: Path, size: int) -> Package:
    """The package an earlier run left in ``root`` (re-hashed), or a new one made there: runs
    that share it send the same package version, so one can replay what another recorded."""
    if not root.is_dir():
        return make_package(root, size)
    pkg = Package(root)
    for rel in (BIG_NAME, "README.txt", "etc/config.ini"):
        path = root / rel
        pkg.files[rel] = (path.stat().st_size, sha256_file(path))
    if pkg.files[BIG_NAME][0] != size:
        raise ValueError(f"{root} holds a package of another size: {pkg.files[BIG_NAME][0]}")
    return pkg


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_tree(outdir: Path, pkg: Package) -> bool:
    """True only if every package file is under ``outdir`` and re-hashes to its SHA-256."""
    return all(
        (outdir / rel).is_file() and sha256_file(outdir / rel) == sha
        for rel, (_, sha) in pkg.files.items()
    )


def receiver_verified(final: dict[str, Any] | None, files_ok: bool) -> bool:
    """The one rule of every lab mode: a receiver counts as verified only if its last JSON
    line is ``done`` and says ``complete``, and its files re-hash equal on disk."""
    return (
        final is not None
        and final.get("event") == "done"
        and final.get("complete") is True
        and files_ok is True
    )
