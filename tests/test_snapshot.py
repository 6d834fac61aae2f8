"""Adversarial tests of mcast.snapshot, the root of trust: building, XML, signing, paths, keys.

The contract under test: a snapshot document either parses and verifies into exactly what was
signed, or ``parse_snapshot_xml`` / ``TrustStore.verify`` raise ``SnapshotError``. No other
exception, and never a changed snapshot.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import re
import stat
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcast.snapshot import (
    FileEntry,
    Snapshot,
    SnapshotError,
    TrustStore,
    UnsafePath,
    build_snapshot,
    generate_key,
    key_id_of,
    load_private_key,
    load_public_key,
    load_verified,
    parse_snapshot_xml,
    public_key_pem,
    safe_join,
    safe_relpath,
    save_private_key,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

NOW = 1_700_000_000
BS = 16  # a small hash unit so that small trees span many units
KEY = generate_key()
OTHER_KEY = generate_key()


def _write(root: Path, files: dict[str, bytes], mtime: int = 1_600_000_000) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (mtime, mtime))


TREE = {
    "a.txt": b"alpha" * 7,  # 35 bytes
    "empty": b"",
    "sub/exact": b"E" * (2 * BS),  # exactly two units
    "sub/over": b"O" * (BS + 1),  # one byte over a unit
    "sub/deeper/z.bin": bytes(range(256)),
    "zz": b"last",
}
TREE_ORDER = ["a.txt", "empty", "zz", "sub/exact", "sub/over", "sub/deeper/z.bin"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    _write(root, TREE)
    return root


@pytest.fixture
def signed(tree: Path) -> Snapshot:
    return build_snapshot(tree, "pkg", version=3, block_size=BS, now=NOW).signed(KEY)


def _units(content: bytes, bs: int) -> tuple[bytes, ...]:
    return tuple(hashlib.sha256(content[i : i + bs]).digest() for i in range(0, len(content), bs))


def _accepted(xml: bytes, *publics: object) -> Snapshot:
    trust = TrustStore.of(*(publics or (KEY.public_key(),)))  # type: ignore[arg-type]
    return load_verified(xml, trust, NOW)


def _refused(xml: bytes) -> SnapshotError:
    with pytest.raises(SnapshotError) as info:
        _accepted(xml)
    return info.value


# ---------------------------------------------------------------------------------------
# building


def test_build_from_one_file_hashes_every_unit(tmp_path: Path):
    content = os.urandom(5 * BS + 3)
    path = tmp_path / "one.bin"
    path.write_bytes(content)
    snap = build_snapshot(path, block_size=BS, now=NOW)
    assert snap.name == "one.bin"
    assert [f.path for f in snap.files] == ["one.bin"] and snap.total_size == len(content)
    assert snap.block_hashes == _units(content, BS) and snap.block_count == 6
    assert snap.content_hash == hashlib.sha256(content).digest()
    assert snap.block_range(5) == (5 * BS, 3)


@pytest.mark.parametrize("size", [0, 1, BS - 1, BS, BS + 1, 3 * BS, 3 * BS + 1])
def test_build_unit_count_is_ceiling_of_size(tmp_path: Path, size: int):
    path = tmp_path / "f"
    content = os.urandom(size)
    path.write_bytes(content)
    snap = build_snapshot(path, block_size=BS, now=NOW)
    assert snap.block_count == -(-size // BS)
    assert snap.block_hashes == _units(content, BS)


def test_build_from_tree_lists_files_in_walk_order_and_hashes_concatenation(tree: Path):
    snap = build_snapshot(tree, block_size=BS, now=NOW)
    assert [f.path for f in snap.files] == TREE_ORDER
    assert [f.size for f in snap.files] == [len(TREE[p]) for p in TREE_ORDER]
    assert all(f.mtime == 1_600_000_000 for f in snap.files)
    content = b"".join(TREE[p] for p in TREE_ORDER)
    assert snap.block_hashes == _units(content, BS)
    assert snap.content_hash == hashlib.sha256(content).digest()
    assert (snap.created, snap.expires, snap.name) == (NOW, NOW + 30 * 24 * 3600, "pkg")
    spans = [(e.path, off) for e, off in snap.file_spans()]
    assert spans[3] == ("sub/exact", 35 + 0 + 4)


def test_hash_units_span_file_boundaries(tmp_path: Path):
    _write(tmp_path / "p", {"a": b"x" * (BS - 3), "b": b"y" * 5})
    snap = build_snapshot(tmp_path / "p", block_size=BS, now=NOW)
    assert snap.block_hashes == _units(b"x" * (BS - 3) + b"y" * 5, BS)


def test_build_skips_symlinks_in_the_tree(tmp_path: Path):
    outside = tmp_path / "secret"
    outside.write_bytes(b"do not ship")
    _write(tmp_path / "p", {"f": b"1"})
    (tmp_path / "p" / "link").symlink_to(outside)
    (tmp_path / "p" / "dirlink").symlink_to(tmp_path)
    snap = build_snapshot(tmp_path / "p", block_size=BS, now=NOW)
    assert [f.path for f in snap.files] == ["f"]


@pytest.mark.parametrize("bs", [0, -2, 1, 17])
def test_build_refuses_odd_or_non_positive_block_size(tree: Path, bs: int):
    with pytest.raises(SnapshotError):
        build_snapshot(tree, block_size=bs, now=NOW)


def test_build_refuses_missing_root(tmp_path: Path):
    with pytest.raises(SnapshotError):
        build_snapshot(tmp_path / "nope", now=NOW)


def test_xml_round_trip_gives_equal_snapshot_and_package_hash(signed: Snapshot):
    back = parse_snapshot_xml(signed.to_xml())
    assert back == signed
    assert back.package_hash == signed.package_hash
    assert _accepted(signed.to_xml()) == signed


def test_empty_package_round_trips(tmp_path: Path):
    (tmp_path / "e").mkdir()
    snap = build_snapshot(tmp_path / "e", block_size=BS, now=NOW).signed(KEY)
    assert snap.block_count == 0 and snap.total_size == 0
    assert _accepted(snap.to_xml()) == snap


def test_signing_after_reading_package_hash_gives_parseable_xml(tree: Path):
    snap = build_snapshot(tree, block_size=BS, now=NOW)
    _ = snap.package_hash_hex  # e.g. logged before signing
    signed = snap.signed(KEY)
    assert signed.package_hash == hashlib.sha256(signed.canonical_bytes()).digest()
    assert _accepted(signed.to_xml()) == signed


# ---------------------------------------------------------------------------------------
# the package hash follows every change


def _hash_of(root: Path) -> bytes:
    return build_snapshot(root, "pkg", block_size=BS, now=NOW).package_hash


def test_changed_content_byte_changes_package_hash(tree: Path):
    before = _hash_of(tree)
    data = bytearray((tree / "sub/over").read_bytes())
    data[-1] ^= 1
    (tree / "sub/over").write_bytes(bytes(data))
    os.utime(tree / "sub/over", (1_600_000_000, 1_600_000_000))
    assert _hash_of(tree) != before


def test_renamed_file_changes_package_hash(tree: Path):
    before = _hash_of(tree)
    (tree / "zz").rename(tree / "zy")
    assert _hash_of(tree) != before


def test_changed_mtime_changes_package_hash(tree: Path):
    before = _hash_of(tree)
    os.utime(tree / "empty", (1_600_000_001, 1_600_000_001))
    assert _hash_of(tree) != before


def test_added_empty_file_changes_package_hash(tree: Path):
    before = _hash_of(tree)
    _write(tree, {"new": b""})
    assert _hash_of(tree) != before


def test_unchanged_tree_gives_same_package_hash(tree: Path):
    assert _hash_of(tree) == _hash_of(tree)


# ---------------------------------------------------------------------------------------
# tampering with the signed XML


def _set_attr(xml: bytes, element: str, attr: str, value: str, nth: int = 0) -> bytes:
    pattern = re.compile(rf'(<{element}\b[^>]*?\s{attr}=")([^"]*)(")'.encode())
    matches = list(pattern.finditer(xml))
    m = matches[nth]
    assert m.group(2) != value.encode(), "tamper case must change the value"
    return xml[: m.start(2)] + value.encode() + xml[m.end(2) :]


TAMPER = [
    ("Snapshot", "name", "other"),
    ("Snapshot", "version", "4"),
    ("Snapshot", "version", "2"),
    ("Snapshot", "created", str(NOW + 1)),
    ("Snapshot", "expires", str(NOW + 10**9)),
    ("Snapshot", "blockSize", str(2 * BS)),
    ("Snapshot", "blockSize", "15"),
    ("Snapshot", "format", "2"),
    ("Snapshot", "hash", "00" * 32),
    ("Snapshot", "contentHash", "00" * 32),
    ("File", "path", "a.txu"),
    ("File", "size", "36"),
    ("File", "size", "-35"),
    ("File", "mtime", "1600000001"),
    ("Signature", "keyId", "0" * 16),
]


@pytest.mark.parametrize(("element", "attr", "value"), TAMPER)
def test_changed_attribute_is_refused(signed: Snapshot, element: str, attr: str, value: str):
    _refused(_set_attr(signed.to_xml(), element, attr, value))


@pytest.mark.parametrize(("element", "attr", "value"), [t for t in TAMPER if t[1] != "hash"])
def test_changed_attribute_with_hash_removed_is_still_refused(
        signed: Snapshot, element: str, attr: str, value: str):
    """Without the declared hash, only the signature stands between tamper and trust."""
    xml = _set_attr(signed.to_xml(), element, attr, value)
    _refused(re.sub(rb' hash="[0-9a-f]*"', b"", xml))


@pytest.mark.parametrize(("element", "attr", "value"),
                         [("Snapshot", "size", "1"), ("Blocks", "count", "1")])
def test_changed_declared_totals_are_refused(signed: Snapshot, element, attr, value):
    _refused(_set_attr(signed.to_xml(), element, attr, value))


def test_every_block_hash_digit_is_covered(signed: Snapshot):
    xml = signed.to_xml()
    m = re.search(rb"<Blocks[^>]*>([0-9a-f]+)</Blocks>", xml)
    assert m is not None and len(m.group(1)) == 64 * signed.block_count
    for i in range(m.start(1), m.end(1)):
        changed = b"0" if xml[i : i + 1] != b"0" else b"1"
        _refused(xml[:i] + changed + xml[i + 1 :])


def test_changed_signature_is_refused(signed: Snapshot):
    xml = signed.to_xml()
    sig = base64.b64encode(signed.signature)
    for i in range(0, 85):  # every base64 character of the 64-byte signature
        flipped = bytearray(sig)
        flipped[i] = ord("A") if flipped[i] != ord("A") else ord("B")
        error = _refused(xml.replace(sig, bytes(flipped)))
        assert "signature" in str(error)


@pytest.mark.parametrize("sig", [b"", b"!!!!", base64.b64encode(bytes(64)),
                                 base64.b64encode(bytes(63))])
def test_junk_or_missing_signature_is_refused(signed: Snapshot, sig: bytes):
    xml = signed.to_xml()
    _refused(xml.replace(base64.b64encode(signed.signature), sig))


def test_keyid_of_another_trusted_key_is_refused(signed: Snapshot):
    xml = _set_attr(signed.to_xml(), "Signature", "keyId", key_id_of(OTHER_KEY.public_key()))
    xml = re.sub(rb' hash="[0-9a-f]*"', b"", xml)
    with pytest.raises(SnapshotError):
        _accepted(xml, KEY.public_key(), OTHER_KEY.public_key())


def test_removed_file_is_refused(signed: Snapshot):
    xml = signed.to_xml()
    _refused(re.sub(rb'<File path="zz"[^>]*/>', b"", xml))
    _refused(re.sub(rb'<File path="empty"[^>]*/>', b"", xml))  # even an empty one


def test_duplicated_file_is_refused(signed: Snapshot):
    xml = signed.to_xml()
    m = re.search(rb'<File path="empty"[^>]*/>', xml)
    assert m is not None
    _refused(xml[: m.end()] + m.group(0) + xml[m.end() :])
    with pytest.raises(SnapshotError, match="twice"):
        parse_snapshot_xml(xml[: m.end()] + m.group(0) + xml[m.end() :])


def test_reordered_files_are_refused(signed: Snapshot):
    xml = signed.to_xml()
    a = re.search(rb'<File path="a.txt"[^>]*/>', xml)
    z = re.search(rb'<File path="zz"[^>]*/>', xml)
    assert a and z
    swapped = xml[: a.start()] + z.group(0) + xml[a.end() : z.start()] + a.group(0) + xml[z.end() :]
    _refused(swapped)


def _parse_verify_or_error(xml: bytes) -> Snapshot | None:
    """The tamper property: a SnapshotError, or exactly the signed snapshot."""
    try:
        return _accepted(xml)
    except SnapshotError:
        return None


@pytest.fixture(scope="module")
def signed_xml() -> tuple[Snapshot, bytes]:
    with tempfile.TemporaryDirectory() as d:
        _write(Path(d) / "pkg", TREE)
        snap = build_snapshot(Path(d) / "pkg", "pkg", version=3, block_size=BS, now=NOW)
    snap = snap.signed(KEY)
    return snap, snap.to_xml()


@FUZZ
@given(data=st.data())
def test_any_changed_byte_is_refused_or_neutral(signed_xml, data):
    snap, xml = signed_xml
    i = data.draw(st.integers(0, len(xml) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != xml[i]))
    result = _parse_verify_or_error(xml[:i] + bytes([new]) + xml[i + 1 :])
    assert result is None or result == snap


@FUZZ
@given(data=st.data())
def test_any_inserted_or_deleted_byte_is_refused_or_neutral(signed_xml, data):
    snap, xml = signed_xml
    i = data.draw(st.integers(0, len(xml) - 1))
    if data.draw(st.booleans()):
        changed = xml[:i] + bytes([data.draw(st.integers(0, 255))]) + xml[i:]
    else:
        changed = xml[:i] + xml[i + 1 :]
    result = _parse_verify_or_error(changed)
    assert result is None or result == snap


def test_whitespace_between_elements_is_neutral(signed: Snapshot):
    xml = signed.to_xml().replace(b"><Files>", b">\n  <Files>")
    assert _accepted(xml) == signed


# ---------------------------------------------------------------------------------------
# malformed numbers and hashes


@pytest.mark.parametrize("value", ["--1", "1" * 5000, str(2**64), str(-(2**63) - 1)],
                         ids=["double-minus", "5000-digits", "u64-plus-1", "i64-minus-1"])
@pytest.mark.parametrize("attr", ["version", "created", "expires"])
def test_out_of_range_or_malformed_integer_is_snapshot_error(signed: Snapshot, attr, value):
    xml = _set_attr(signed.to_xml(), "Snapshot", attr, value)
    with pytest.raises(SnapshotError):
        parse_snapshot_xml(xml)
    with pytest.raises(SnapshotError):
        parse_snapshot_xml(re.sub(rb' hash="[0-9a-f]*"', b"", xml))



@pytest.mark.parametrize("value", ["1.5", "0x10", "", " 1", "1e3", "٣", "+1"])
def test_non_integer_attribute_is_refused(signed: Snapshot, value: str):
    with pytest.raises(SnapshotError, match="integer"):
        parse_snapshot_xml(_set_attr(signed.to_xml(), "File", "size", value))


def test_block_hash_of_wrong_length_is_refused_at_parse(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * BS)
    snap = build_snapshot(path, block_size=BS, now=NOW)
    xml = re.sub(rb' hash="[0-9a-f]*"', b"", snap.to_xml())
    xml = re.sub(rb"(<Blocks[^>]*>)[0-9a-f]{64}", rb"\1" + b"ab" * 15 + b"  " + b"ab" * 16, xml)
    with pytest.raises(SnapshotError):
        parse_snapshot_xml(xml)


@pytest.mark.parametrize("text", ["0" * 63, "0" * 65, "g" * 64])
def test_partial_or_non_hex_block_hash_is_refused(signed: Snapshot, text: str):
    xml = re.sub(rb"(<Blocks[^>]*>)[0-9a-f]+", rb"\1" + text.encode(), signed.to_xml())
    with pytest.raises(SnapshotError):
        parse_snapshot_xml(xml)


def test_block_count_must_match_content_size(signed: Snapshot):
    xml = signed.to_xml()
    one_less = re.sub(rb"(<Blocks[^>]*>)[0-9a-f]{64}", rb"\1", xml)
    with pytest.raises(SnapshotError, match="block hashes"):
        parse_snapshot_xml(re.sub(rb' hash="[0-9a-f]*"', b"", one_less))


# ---------------------------------------------------------------------------------------
# trust store


def test_unknown_key_is_refused_by_name(signed: Snapshot):
    with pytest.raises(SnapshotError, match="unknown key"):
        TrustStore.of(OTHER_KEY.public_key()).verify(signed, NOW)


def test_bad_signature_is_refused_by_name(signed: Snapshot):
    forged = dataclasses.replace(signed, version=99)
    with pytest.raises(SnapshotError, match="bad signature"):
        TrustStore.of(KEY.public_key()).verify(forged, NOW)


def test_unsigned_snapshot_is_refused_by_name(tree: Path):
    snap = build_snapshot(tree, block_size=BS, now=NOW)
    with pytest.raises(SnapshotError, match="not signed"):
        TrustStore.of(KEY.public_key()).verify(snap, NOW)


def test_expiry_is_exclusive(signed: Snapshot):
    trust = TrustStore.of(KEY.public_key())
    assert trust.verify(signed, signed.expires - 0.001) == signed
    for now in (signed.expires, signed.expires + 1):
        with pytest.raises(SnapshotError, match="expired"):
            trust.verify(signed, now)


def _version(tree: Path, version: int, name: str = "pkg") -> Snapshot:
    return build_snapshot(tree, name, version=version, block_size=BS, now=NOW).signed(KEY)


def test_rollback_is_refused_same_or_newer_accepted(tree: Path):
    trust = TrustStore.of(KEY.public_key())
    trust.verify(_version(tree, 5), NOW)
    with pytest.raises(SnapshotError, match="older"):
        trust.verify(_version(tree, 4), NOW)
    trust.verify(_version(tree, 5), NOW)
    trust.verify(_version(tree, 6), NOW)
    with pytest.raises(SnapshotError, match="older"):
        trust.verify(_version(tree, 5), NOW)
    trust.verify(_version(tree, 1, name="another package"), NOW)
    assert trust.newest == {"pkg": 6, "another package": 1}


def test_refused_snapshot_does_not_raise_the_trusted_version(tree: Path):
    trust = TrustStore.of(KEY.public_key())
    forged = dataclasses.replace(_version(tree, 1), version=1000)
    with pytest.raises(SnapshotError):
        trust.verify(forged, NOW)
    expired = build_snapshot(tree, "pkg", version=900, block_size=BS, now=NOW,
                             valid_for=10).signed(KEY)
    with pytest.raises(SnapshotError, match="expired"):
        trust.verify(expired, NOW + 10)
    trust.verify(_version(tree, 2), NOW)
    assert trust.newest == {"pkg": 2}


def test_same_negative_version_is_accepted_twice(tree: Path):
    trust = TrustStore.of(KEY.public_key())
    trust.verify(_version(tree, -3), NOW)
    trust.verify(_version(tree, -3), NOW)


# ---------------------------------------------------------------------------------------
# hostile documents

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Snapshot format="1" name="&lol3;"/>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE s [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><Snapshot format="1" name="&xxe;"/>"""
PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE s [<!ENTITY % p SYSTEM "http://198.18.0.1/x.dtd"> %p;]><Snapshot format="1"/>"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, EXTERNAL_ENTITY, PARAMETER_ENTITY],
                         ids=["billion-laughs", "external-entity", "parameter-entity"])
def test_entity_documents_are_refused(doc: bytes):
    with pytest.raises(SnapshotError):
        parse_snapshot_xml(doc)


@pytest.mark.parametrize("doctype", [b"<!DOCTYPE Snapshot>",
                                     b'<!DOCTYPE Snapshot SYSTEM "http://198.18.0.1/s.dtd">',
                                     b'<!DOCTYPE Snapshot [<!ATTLIST File note CDATA "x">]>'])
def test_document_with_dtd_is_refused(signed: Snapshot, doctype: bytes):
    xml = signed.to_xml().replace(b"\n<Snapshot", b"\n" + doctype + b"\n<Snapshot", 1)
    with pytest.raises(SnapshotError):
        parse_snapshot_xml(xml)


def test_oversized_document_is_refused_before_parsing(signed: Snapshot):
    xml = signed.to_xml()
    padded = xml + b" " * (64 * 1024 * 1024 + 1 - len(xml))
    with pytest.raises(SnapshotError, match="too large"):
        parse_snapshot_xml(padded)
    assert parse_snapshot_xml(xml + b" " * 1000) == signed  # padding alone is harmless


@pytest.mark.parametrize("doc", [
    b"", b"\x00\xff\xfe", b"not xml", b"<Snapshot", b'{"name": "pkg"}', b"<a/>",
    b'<Snapshot format="2"/>', b'<Snapshot format="1"/>',
    b'<Snapshot format="1"><Files/><Blocks/></Snapshot>',
    "<Snapshot format='1'>\u00e9</Snapshot>".encode("latin-1"),
])
def test_garbage_is_refused(doc: bytes):
    with pytest.raises(SnapshotError):
        parse_snapshot_xml(doc)


@FUZZ
@given(doc=st.binary(max_size=300))
def test_parse_of_arbitrary_bytes_is_snapshot_error(doc: bytes):
    with pytest.raises(SnapshotError):
        parse_snapshot_xml(doc)


# ---------------------------------------------------------------------------------------
# paths

BAD_NAMES = [
    "", "/etc/passwd", "//x", "..", "../x", "a/../b", "a/..", "a/./b", ".", "./a", "a//b", "a/",
    "a\\b", "..\\x", "a\x00b", "C:x", "C:/x", "c:\\x",
]
GOOD_NAMES = ["a", "a/b/c.txt", "dir.d/file", "...", "..a", "a..", ".hidden/x", "sp ace/ü"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_safe_relpath_rejects(name: str):
    with pytest.raises(UnsafePath):
        safe_relpath(name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_safe_relpath_accepts_ordinary_names_unchanged(name: str):
    assert safe_relpath(name) == name


_JAIL = Path(tempfile.mkdtemp(prefix="mcast-jail-")).resolve()
pathish = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(["a", "b.c", ".", "..", "", "/", "\\", ":", "C:", "\x00", "~"]),
             max_size=8).map("/".join),
    st.lists(st.text(st.sampled_from("ab./\\:\x00"), max_size=4), max_size=6).map("/".join),
)


@FUZZ
@given(name=pathish)
def test_safe_relpath_result_stays_inside_destination(name: str):
    try:
        result = safe_relpath(name)
    except UnsafePath:
        return
    assert result == name
    joined = os.path.realpath(os.path.join(_JAIL, result))
    assert os.path.commonpath([_JAIL, joined]) == str(_JAIL) and joined != str(_JAIL)


def test_safe_join_nests_ordinary_names(tmp_path: Path):
    assert safe_join(tmp_path, "a/b/c") == tmp_path.resolve() / "a" / "b" / "c"


def test_safe_join_refuses_symlinked_directory_pointing_outside(tmp_path: Path):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "d").symlink_to(outside)
    with pytest.raises(UnsafePath):
        safe_join(dest, "d/file")
    (dest / "f").symlink_to(outside / "file")
    with pytest.raises(UnsafePath):
        safe_join(dest, "f")


def test_safe_join_refuses_any_existing_symlink_even_one_pointing_inside(tmp_path: Path):
    """The docstring's promise: a link that stays inside is refused too (it may be re-aimed)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePath, match="symlink"):
        safe_join(tmp_path, "alias/file")
    assert safe_join(tmp_path, "real/file") == tmp_path.resolve() / "real" / "file"


def test_safe_join_refuses_unsafe_names(tmp_path: Path):
    for name in BAD_NAMES:
        with pytest.raises(UnsafePath):
            safe_join(tmp_path, name)


@pytest.mark.parametrize("name", BAD_NAMES[1:])  # "" is read as a missing path: also refused
def test_snapshot_with_unsafe_name_is_refused_at_parse(name: str):
    snap = Snapshot("evil", 1, NOW, NOW + 100, BS, (FileEntry(name, 0, 0),), (), bytes(32))
    xml = snap.signed(KEY).to_xml()  # signed by a trusted key: the name alone must refuse it
    with pytest.raises(SnapshotError):
        parse_snapshot_xml(xml)


# ---------------------------------------------------------------------------------------
# keys


def test_private_key_saved_0600_and_loads_back(tmp_path: Path):
    path = tmp_path / "signing.pem"
    save_private_key(KEY, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_private_key(path)
    assert key_id_of(loaded.public_key()) == key_id_of(KEY.public_key())
    assert loaded.sign(b"m") == KEY.sign(b"m")  # Ed25519 is deterministic


def test_private_key_saved_over_readable_file_becomes_0600(tmp_path: Path):
    path = tmp_path / "signing.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    save_private_key(KEY, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_load_public_key_from_public_and_private_pem():
    priv_pem = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    want = key_id_of(KEY.public_key())
    assert key_id_of(load_public_key(public_key_pem(KEY.public_key()))) == want
    assert key_id_of(load_public_key(priv_pem)) == want


def _pems() -> dict[str, bytes]:
    enc, priv, pub = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, \
        serialization.PublicFormat.SubjectPublicKeyInfo
    none = serialization.NoEncryption()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed448_key = ed448.Ed448PrivateKey.generate()
    x_key = x25519.X25519PrivateKey.generate()
    return {
        "ec-private": ec_key.private_bytes(enc, priv, none),
        "ec-public": ec_key.public_key().public_bytes(enc, pub),
        "ed448-private": ed448_key.private_bytes(enc, priv, none),
        "ed448-public": ed448_key.public_key().public_bytes(enc, pub),
        "x25519-private": x_key.private_bytes(enc, priv, none),
        "x25519-public": x_key.public_key().public_bytes(enc, pub),
        "garbage": b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "garbage-private": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "empty": b"",
    }


PEMS = _pems()


@pytest.mark.parametrize("kind", sorted(PEMS))
def test_load_public_key_refuses_other_key_types(kind: str):
    with pytest.raises(SnapshotError):
        load_public_key(PEMS[kind])


@pytest.mark.parametrize("kind", sorted(k for k in PEMS if "public" not in k))
def test_load_private_key_refuses_other_key_types(tmp_path: Path, kind: str):
    path = tmp_path / "k.pem"
    path.write_bytes(PEMS[kind])
    with pytest.raises(SnapshotError):
        load_private_key(path)


def test_load_private_key_refuses_missing_file(tmp_path: Path):
    with pytest.raises(SnapshotError):
        load_private_key(tmp_path / "missing.pem")


ENCRYPTED = Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"secret"))


@pytest.mark.parametrize("loader", ["public", "private"])
def test_encrypted_private_key_is_refused_with_snapshot_error(tmp_path: Path, loader: str):
    path = tmp_path / "enc.pem"
    path.write_bytes(ENCRYPTED)
    with pytest.raises(SnapshotError):
        load_public_key(ENCRYPTED) if loader == "public" else load_private_key(path)
