"""The package snapshot: the root of trust for every byte the engine writes.

A snapshot lists the files of a package (relative path, size, mtime), the hash-unit size
(``block_size``), the SHA-256 of every unit of the concatenated file contents, the SHA-256 of
the whole content, a version and an expiry time. It is signed with Ed25519 over a canonical
msgpack encoding of those fields (not over the XML text), serialised as XML for the server's
``getSnapshot.asp`` and parsed back with defusedxml.

This module owns: building a snapshot from a file or directory, the XML form, signing and
verification against a :class:`TrustStore` (known keys, expiry, version rollback), the keys
(:func:`load_trust_key` reads the signer's public key file, ``DATA/signing.pub``), and the
validation of file names before anything is written (:func:`safe_relpath`, :func:`safe_join`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.etree.ElementTree import Element, SubElement, tostring

import defusedxml.ElementTree as SafeET
import msgpack
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcast.errors import StorageError, TrustError

DEFAULT_BLOCK_SIZE = 64 * 1024
SNAPSHOT_FORMAT = 1
_MAX_XML_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


class SnapshotError(TrustError):
    """A snapshot is malformed, unsigned, untrusted, expired or rolled back."""


class UnsafePath(SnapshotError):
    """A file name in a snapshot would escape the destination directory."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # POSIX-style relative path, validated by safe_relpath
    size: int
    mtime: int  # seconds since the epoch


@dataclass(frozen=True)
class Snapshot:
    """Signed description of a package. ``package_hash`` identifies it on the network."""

    name: str
    version: int
    created: int
    expires: int
    block_size: int
    files: tuple[FileEntry, ...]
    block_hashes: tuple[bytes, ...]
    content_hash: bytes
    key_id: str = ""
    signature: bytes = b""
    _hash_cache: bytes = field(default=b"", init=False, compare=False, repr=False)

    # -- derived -------------------------------------------------------------------------
    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def block_count(self) -> int:
        return len(self.block_hashes)

    def block_range(self, index: int) -> tuple[int, int]:
        """Byte offset and length of hash unit ``index`` in the concatenated content."""
        start = index * self.block_size
        return start, min(self.block_size, self.total_size - start)

    def canonical_bytes(self) -> bytes:
        """The exact bytes the signature covers (everything but the signature)."""
        body = [
            SNAPSHOT_FORMAT,
            self.name,
            self.version,
            self.created,
            self.expires,
            self.block_size,
            [[f.path, f.size, f.mtime] for f in self.files],
            list(self.block_hashes),
            self.content_hash,
            self.key_id,
        ]
        return bytes(msgpack.packb(body, use_bin_type=True))

    @property
    def package_hash(self) -> bytes:
        """SHA-256 of the canonical form: changes whenever any file, name or time changes."""
        if not self._hash_cache:
            object.__setattr__(self, "_hash_cache", hashlib.sha256(self.canonical_bytes()).digest())
        return self._hash_cache

    @property
    def package_hash_hex(self) -> str:
        return self.package_hash.hex()

    def file_spans(self) -> Iterator[tuple[FileEntry, int]]:
        """Each file with the offset of its first byte in the concatenated content."""
        offset = 0
        for entry in self.files:
            yield entry, offset
            offset += entry.size

    # -- signing ---------------------------------------------------------------------------
    def signed(self, key: Ed25519PrivateKey) -> Snapshot:
        unsigned = replace(self, key_id=key_id_of(key.public_key()), signature=b"")
        return replace(unsigned, signature=key.sign(unsigned.canonical_bytes()))

    # -- XML -------------------------------------------------------------------------------
    def to_xml(self) -> bytes:
        root = Element(
            "Snapshot",
            {
                "format": str(SNAPSHOT_FORMAT),
                "name": self.name,
                "version": str(self.version),
                "created": str(self.created),
                "expires": str(self.expires),
                "blockSize": str(self.block_size),
                "size": str(self.total_size),
                "hash": self.package_hash_hex,
                "contentHash": self.content_hash.hex(),
            },
        )
        files = SubElement(root, "Files")
        for f in self.files:
            SubElement(files, "File", {"path": f.path, "size": str(f.size), "mtime": str(f.mtime)})
        blocks = SubElement(root, "Blocks", {"count": str(self.block_count)})
        blocks.text = "".join(h.hex() for h in self.block_hashes)
        SubElement(
            root, "Signature", {"alg": "Ed25519", "keyId": self.key_id}
        ).text = base64.b64encode(self.signature).decode("ascii")
        body: bytes = tostring(root, encoding="utf-8")
        return b'<?xml version="1.0" encoding="utf-8"?>\n' + body


# ---------------------------------------------------------------------------------------
# keys and trust


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already exists
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SnapshotError(f"cannot load signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SnapshotError(f"{path} is not an Ed25519 private key")
    return key


def public_key_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """Load a PEM public key, or the public half of a PEM private key."""
    try:
        if b"PRIVATE" in data:
            priv = serialization.load_pem_private_key(data, password=None)
            if not isinstance(priv, Ed25519PrivateKey):
                raise SnapshotError("not an Ed25519 key")
            return priv.public_key()
        pub = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SnapshotError(f"cannot load public key: {exc}") from exc
    if not isinstance(pub, Ed25519PublicKey):
        raise SnapshotError("not an Ed25519 public key")
    return pub


def load_trust_key(path: Path) -> Ed25519PublicKey:
    """The public key that signs snapshots (the server's ``DATA/signing.pub``), read from a
    PEM file: :class:`StorageError` if the file cannot be read, :class:`TrustError` if it
    is not an Ed25519 key. The messages are one line and name the file."""
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read trust key {path}: {exc.strerror or exc}") from None
    try:
        return load_public_key(pem)
    except SnapshotError:
        raise TrustError(f"trust key {path} is not an Ed25519 public key (PEM)") from None


@dataclass
class TrustStore:
    """Keys that may sign snapshots, and the newest version trusted per package name.

    ``verify`` refuses unknown keys, bad signatures, expired snapshots and versions older
    than one already accepted (rollback), each with a message that says which.
    """

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    newest: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, *publics: Ed25519PublicKey) -> TrustStore:
        return cls(keys={key_id_of(p): p for p in publics})

    def add(self, public: Ed25519PublicKey) -> None:
        self.keys[key_id_of(public)] = public

    def verify(self, snap: Snapshot, now: float) -> Snapshot:
        if not snap.signature:
            raise SnapshotError(f"snapshot {snap.name!r} is not signed")
        public = self.keys.get(snap.key_id)
        if public is None:
            raise SnapshotError(f"snapshot {snap.name!r} is signed by unknown key {snap.key_id}")
        try:
            public.verify(snap.signature, snap.canonical_bytes())
        except InvalidSignature:
            raise SnapshotError(f"snapshot {snap.name!r}: bad signature") from None
        if now >= snap.expires:
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(snap.expires))
            raise SnapshotError(f"snapshot {snap.name!r} expired at {when}")
        known = self.newest.get(snap.name)
        if known is not None and snap.version < known:
            raise SnapshotError(
                f"snapshot {snap.name!r} version {snap.version} is older than"
                f" trusted version {known}"
            )
        self.newest[snap.name] = snap.version if known is None else max(snap.version, known)
        return snap


# ---------------------------------------------------------------------------------------
# paths


def safe_relpath(path: str) -> str:
    """Validate a file name from a snapshot; returns it unchanged or raises UnsafePath."""
    if not path or "\x00" in path or "\\" in path:
        raise UnsafePath(f"invalid file name {path!r}")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafePath(f"absolute file name {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"file name {path!r} has an empty, '.' or '..' component")
    if posixpath.normpath(path) != path:
        raise UnsafePath(f"file name {path!r} is not normalised")
    return path


def safe_join(dest: Path, relpath: str) -> Path:
    """Join a validated name under ``dest``; refuse any existing symlink on the way."""
    safe_relpath(relpath)
    root = Path(dest).resolve()
    target = root.joinpath(*relpath.split("/"))
    probe = root
    for part in relpath.split("/"):
        probe = probe / part
        if probe.is_symlink():
            raise UnsafePath(f"{relpath!r} passes through symlink {probe}")
    if os.path.commonpath([root, target.resolve()]) != str(root):
        raise UnsafePath(f"{relpath!r} escapes {root}")
    return target


# ---------------------------------------------------------------------------------------
# building


def _list_files(root: Path) -> list[tuple[str, Path]]:
    if root.is_file():
        return [(root.name, root)]
    if not root.is_dir():
        raise SnapshotError(f"{root} is neither a file nor a directory")
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                continue  # links and special files are not part of a package
            rel = full.relative_to(root).as_posix()
            found.append((safe_relpath(rel), full))
    return found


def build_snapshot(
    root: Path,
    name: str | None = None,
    *,
    version: int = 1,
    block_size: int = DEFAULT_BLOCK_SIZE,
    valid_for: float = 30 * 24 * 3600,
    now: float | None = None,
) -> Snapshot:
    """Hash a file or directory into an unsigned snapshot (call ``.signed(key)`` next)."""
    if block_size <= 0 or block_size % 2:
        raise SnapshotError("block size must be a positive even number of bytes")
    root = Path(root)
    created = int(time.time() if now is None else now)
    entries: list[FileEntry] = []
    block_hashes: list[bytes] = []
    content = hashlib.sha256()
    unit = hashlib.sha256()
    in_unit = 0
    for rel, full in _list_files(root):
        st = full.stat()
        size = 0
        with open(full, "rb") as fh:
            while chunk := fh.read(_READ_CHUNK):
                size += len(chunk)
                content.update(chunk)
                view = memoryview(chunk)
                while view:
                    take = min(len(view), block_size - in_unit)
                    unit.update(view[:take])
                    in_unit += take
                    view = view[take:]
                    if in_unit == block_size:
                        block_hashes.append(unit.digest())
                        unit, in_unit = hashlib.sha256(), 0
        entries.append(FileEntry(rel, size, int(st.st_mtime)))
    if in_unit:
        block_hashes.append(unit.digest())
    return Snapshot(
        name=name or root.name,
        version=version,
        created=created,
        expires=int(created + valid_for),
        block_size=block_size,
        files=tuple(entries),
        block_hashes=tuple(block_hashes),
        content_hash=content.digest(),
    )


# ---------------------------------------------------------------------------------------
# parsing


_INT = re.compile(r"-?[0-9]{1,19}")
_HASHES = re.compile(r"(?:[0-9a-f]{64})*")
_MAX_INT = 2**63 - 1


def _int_attr(el: Element, name: str, *, minimum: int = 0) -> int:
    """An integer attribute within int64 (what the canonical msgpack form can hold)."""
    raw = el.get(name)
    if raw is None or not _INT.fullmatch(raw):
        raise SnapshotError(f"snapshot: <{el.tag}> attribute {name!r} is missing or not an integer")
    value = int(raw)
    if not minimum <= value <= _MAX_INT:
        raise SnapshotError(f"snapshot: <{el.tag}> attribute {name!r} is out of range")
    return value


def _hex(raw: str, what: str, length: int | None = None) -> bytes:
    try:
        value = bytes.fromhex(raw)
    except ValueError:
        raise SnapshotError(f"snapshot: {what} is not hex") from None
    if length is not None and len(value) != length:
        raise SnapshotError(f"snapshot: {what} has the wrong length")
    return value


def parse_snapshot_xml(data: bytes) -> Snapshot:
    """Parse (not verify) a snapshot document. Raises SnapshotError on any malformation."""
    if len(data) > _MAX_XML_BYTES:
        raise SnapshotError("snapshot document is too large")
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except Exception as exc:  # defusedxml raises several types for hostile documents
        raise SnapshotError(f"snapshot is not well-formed XML: {exc}") from None
    if root.tag != "Snapshot" or root.get("format") != str(SNAPSHOT_FORMAT):
        raise SnapshotError("not a format-1 <Snapshot> document")
    files_el, blocks_el, sig_el = root.find("Files"), root.find("Blocks"), root.find("Signature")
    if files_el is None or blocks_el is None or sig_el is None:
        raise SnapshotError("snapshot lacks <Files>, <Blocks> or <Signature>")
    files = []
    for f in files_el.findall("File"):
        size, mtime = _int_attr(f, "size"), _int_attr(f, "mtime")
        if size < 0:
            raise SnapshotError("snapshot: negative file size")
        files.append(FileEntry(safe_relpath(f.get("path") or ""), size, mtime))
    if len({f.path for f in files}) != len(files):
        raise SnapshotError("snapshot lists a file twice")
    text = (blocks_el.text or "").strip()
    if not _HASHES.fullmatch(text):
        raise SnapshotError("snapshot: block hashes must be 64 lowercase hex digits each")
    hashes = tuple(bytes.fromhex(text[i : i + 64]) for i in range(0, len(text), 64))
    block_size = _int_attr(root, "blockSize")
    if block_size <= 0 or block_size % 2:
        raise SnapshotError("snapshot: block size must be a positive even number")
    try:
        signature = base64.b64decode(sig_el.text or "", validate=True)
    except ValueError:
        raise SnapshotError("snapshot: signature is not base64") from None
    snap = Snapshot(
        name=root.get("name") or "",
        version=_int_attr(root, "version"),
        created=_int_attr(root, "created"),
        expires=_int_attr(root, "expires"),
        block_size=block_size,
        files=tuple(files),
        block_hashes=hashes,
        content_hash=_hex(root.get("contentHash") or "", "content hash", 32),
        key_id=sig_el.get("keyId") or "",
        signature=signature,
    )
    expected_blocks = -(-snap.total_size // block_size)
    if snap.block_count != expected_blocks:
        raise SnapshotError(
            f"snapshot: {snap.block_count} block hashes for {expected_blocks} blocks of content"
        )
    declared = root.get("hash")
    if declared is not None and declared != snap.package_hash_hex:
        raise SnapshotError("snapshot: declared hash does not match its contents")
    if _int_attr(root, "size") != snap.total_size:
        raise SnapshotError("snapshot: declared size does not match its files")
    if _int_attr(blocks_el, "count") != snap.block_count:
        raise SnapshotError("snapshot: declared block count does not match its hashes")
    return snap


def load_verified(data: bytes, trust: TrustStore, now: float) -> Snapshot:
    """Parse and verify in one step: what every consumer of a network snapshot should call."""
    return trust.verify(parse_snapshot_xml(data), now)
