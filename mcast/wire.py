"""Every datagram of the protocol, wire version 2: formats, encoders, ``*_untrusted`` decoders.

Layout of every datagram::

    header (12 B)  magic b"MC" | version u8 | type u8 | session id u64       (network order)
    body           DATA/PARITY: block u32 | index u32 | payload
                   control messages: one msgpack array (fields in a fixed order)
    tag (16 B)     HMAC-SHA-256(tag key, header + body), truncated; zeros when unkeyed

The tag key is never the key a caller holds (a package's key, or a site's discovery key) but
one derived from it for the session in the header (:func:`session_key`, HKDF-SHA-256): a
datagram recorded in one session is not authentic in any other, and whoever learns one
session's tag key can forge nothing elsewhere. Every control message carries ``seq``, its
origin's counter (strictly increasing: :mod:`mcast.freshness`), so a recipient drops a replay
from earlier in the same session; a SOLICIT carries a ``nonce`` that the answering ANNOUNCE
echoes, which is how a receiver knows a session is live now and not a recording.

DATA carries source shard ``index`` of FEC block ``block``; PARITY carries repair sequence
number ``index``, which ``Geometry.repair_symbol`` maps to a Reed-Solomon recovery shard or,
once those are used up, a zero-padded source shard. The control messages are ANNOUNCE (a
session describes itself; ``claiming`` marks an agent's bid to start one), NAK, STATUS (with
the overrun signals for rate control), END and SOLICIT (who sends this package?). The hot
path uses fixed ``struct`` formats; control bodies are msgpack, decoded with size limits.

The decoders take bytes from the network and raise only :class:`BadPacket`. A receiver that
holds the key drops any datagram whose tag does not match before parsing the body.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import Any

import msgpack
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mcast.errors import McastError

MAGIC = b"MC"
VERSION = 2
TAG_LEN = 16
HEADER = struct.Struct("!2sBBQ")
SHARD = struct.Struct("!II")
DATA_OVERHEAD = HEADER.size + SHARD.size + TAG_LEN  # bytes around a payload
MAX_DATAGRAM = 65507
_ZERO_TAG = bytes(TAG_LEN)
_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1
_HASH_LEN = 32
_MAX_NAK_ENTRIES = 256
MAX_RANK = 3
MAX_HOLD_MS = 60_000
MAX_ECHOES = 64  # SOLICIT nonces one ANNOUNCE echoes


class BadPacket(McastError):
    """A datagram that is not a valid, authentic message of this wire version."""


class TagMismatch(BadPacket):
    """Well formed as far as the header goes, but its tag is not the key's: forged, changed
    on the way, or made under another key."""


class MsgType(IntEnum):
    DATA = 1
    PARITY = 2
    ANNOUNCE = 3
    NAK = 4
    STATUS = 5
    END = 6
    SOLICIT = 7


# ---------------------------------------------------------------------------------------
# messages


@dataclass(frozen=True, slots=True)
class Data:
    session: int
    block: int
    index: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Parity:
    session: int
    block: int
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Announce:
    """A session describes itself: what it sends, how, and how far it has got."""

    session: int
    package_hash: bytes
    sender_id: int
    packet_size: int  # payload bytes of a full shard (even)
    units_per_block: int  # snapshot hash units per FEC block
    parity_ratio_pct: int  # parity shards per block, as a percentage of its source shards
    rate_bps: int
    group: str
    port: int
    next_block: int  # first block of the current pass not yet sent
    pass_done: bool  # every block has been sent at least once
    receivers: int  # receivers the sender currently hears
    progress_pct: int
    claiming: bool = False  # not sending yet: an agent's bid to start this session
    # what the election weighs (mcast.discovery.election_key) and liveness reads:
    complete: bool = False  # the master holds the whole package, verified (a cache)
    rank: int = 0  # the master's Rank: package server > wired > laptop > wireless
    verified_units: int = 0  # units the master itself holds verified: grows while it is live
    hold_ms: int = 0  # a new session holds its first data this long, so arrivals start together
    seq: int = 0  # the sender's counter: an older or repeated one is a replay
    echoes: tuple[int, ...] = ()  # nonces of the SOLICITs this answers: proof it is live now


@dataclass(frozen=True, slots=True)
class NakEntry:
    block: int
    need: int  # shards still missing to decode the block
    horizon: int  # highest parity sequence number seen for the block, plus one


@dataclass(frozen=True, slots=True)
class Nak:
    session: int
    receiver_id: int
    entries: tuple[NakEntry, ...]
    seq: int = 0  # the receiver's counter (shared with its STATUS and SOLICIT)


@dataclass(frozen=True, slots=True)
class Status:
    session: int
    receiver_id: int
    verified_units: int
    done: bool
    failed: bool = False
    loss_permille: int = 0  # first-pass data lost over the last report interval
    socket_drops: int = 0  # datagrams the receiver's own socket dropped (too fast for it)
    backlog_pct: int = 0  # how full the receiver's socket queue got over the last interval
    rank: int = 0  # the receiver's Rank: weighed, after its verified units, in a takeover
    seq: int = 0  # the receiver's counter


@dataclass(frozen=True, slots=True)
class End:
    session: int
    reason: str
    seq: int = 0  # the sender's counter (shared with its ANNOUNCEs)


@dataclass(frozen=True, slots=True)
class Solicit:
    """A receiver that needs ``package_hash`` and has heard no session asks for an announce."""

    session: int  # 0 unless the receiver already knows the session it wants
    package_hash: bytes
    receiver_id: int
    seq: int = 0  # the receiver's counter
    nonce: int = 0  # echoed by the ANNOUNCE that answers: a recorded announce cannot


Message = Data | Parity | Announce | Nak | Status | End | Solicit


# ---------------------------------------------------------------------------------------
# authentication


MIN_KEY_LEN = 16


def check_key(key: bytes | None) -> bytes | None:
    """None means an unauthenticated session; anything else must be a real key."""
    if key is not None and len(key) < MIN_KEY_LEN:
        raise ValueError(f"a session key must be at least {MIN_KEY_LEN} bytes (or None)")
    return key


@lru_cache(maxsize=1024)
def session_key(key: bytes, session: int) -> bytes:
    """The tag key of one session: HKDF-SHA-256 of the package's (or site's) key, with the
    session id as context. Cached: the hot path derives it for every datagram."""
    info = b"mcast session tag key" + session.to_bytes(8, "big")
    return HKDF(SHA256(), 32, salt=b"mcast wire v2", info=info).derive(key)


@lru_cache(maxsize=1024)
def _session_mac(key: bytes, session: int) -> hmac.HMAC:
    """The HMAC state of one session's tag key before any message. Each datagram's tag starts
    from a copy, so the key's two pad blocks are hashed once per session, not per datagram."""
    return hmac.new(session_key(key, session), digestmod=hashlib.sha256)


def _tag(key: bytes, session: int, *parts: bytes | memoryview) -> bytes:
    mac = _session_mac(key, session).copy()
    for part in parts:
        mac.update(part)
    return mac.digest()[:TAG_LEN]


def compute_tag(key: bytes | None, signed_part: bytes | memoryview) -> bytes:
    """The tag of a datagram's header and body under ``key`` (None: unkeyed, zeros); the
    tag key is derived for the session id in the header (:func:`session_key`)."""
    if not key:
        return _ZERO_TAG
    return _tag(key, int.from_bytes(signed_part[4 : HEADER.size], "big"), signed_part)


def _seal(header_and_body: bytes, key: bytes | None) -> bytes:
    return header_and_body + compute_tag(key, header_and_body)


def reseal(datagram: bytes, key: bytes | None) -> bytes:
    """One of our own datagrams with its tag made for ``key`` instead: a session's announces
    and END go to the discovery group under the site's discovery key."""
    return _seal(datagram[:-TAG_LEN], key)


def reseal_untrusted(data: bytes, from_key: bytes | None, to_key: bytes | None) -> bytes:
    """A datagram heard under ``from_key``, checked, and sealed again for ``to_key``;
    raises only BadPacket (a wrong tag, or not one of our datagrams)."""
    _kind, _session, signed = _authentic_untrusted(data, from_key)
    return _seal(bytes(signed), to_key)


# ---------------------------------------------------------------------------------------
# encoders


def encode_shard(
    kind: MsgType, session: int, block: int, index: int, payload: bytes, key: bytes | None
) -> bytes:
    """DATA or PARITY: the hot path, one struct pack, one HMAC and one copy of the payload."""
    head = _SHARD_HEADER.pack(MAGIC, VERSION, kind, session, block, index)
    tag = _tag(key, session, head, payload) if key else _ZERO_TAG
    return b"".join((head, payload, tag))


def _control(kind: MsgType, session: int, fields: list[Any], key: bytes | None) -> bytes:
    body = msgpack.packb(fields, use_bin_type=True)
    return _seal(HEADER.pack(MAGIC, VERSION, kind, session) + body, key)


def _enc_data(m: Data, key: bytes | None) -> bytes:
    return encode_shard(MsgType.DATA, m.session, m.block, m.index, m.payload, key)


def _enc_parity(m: Parity, key: bytes | None) -> bytes:
    return encode_shard(MsgType.PARITY, m.session, m.block, m.seq, m.payload, key)


def _enc_announce(m: Announce, key: bytes | None) -> bytes:
    fields = [
        m.package_hash, m.sender_id, m.packet_size, m.units_per_block, m.parity_ratio_pct,
        m.rate_bps, m.group, m.port, m.next_block, m.pass_done, m.receivers, m.progress_pct,
        m.claiming, m.complete, m.rank, m.verified_units, m.hold_ms, m.seq, list(m.echoes),
    ]  # fmt: skip
    return _control(MsgType.ANNOUNCE, m.session, fields, key)


def _enc_nak(m: Nak, key: bytes | None) -> bytes:
    flat = [[e.block, e.need, e.horizon] for e in m.entries]
    return _control(MsgType.NAK, m.session, [m.receiver_id, flat, m.seq], key)


def _enc_status(m: Status, key: bytes | None) -> bytes:
    fields = [
        m.receiver_id, m.verified_units, m.done, m.failed, m.loss_permille, m.socket_drops,
        m.backlog_pct, m.rank, m.seq,
    ]  # fmt: skip
    return _control(MsgType.STATUS, m.session, fields, key)


def _enc_end(m: End, key: bytes | None) -> bytes:
    return _control(MsgType.END, m.session, [m.reason, m.seq], key)


def _enc_solicit(m: Solicit, key: bytes | None) -> bytes:
    fields = [m.package_hash, m.receiver_id, m.seq, m.nonce]
    return _control(MsgType.SOLICIT, m.session, fields, key)


_ENCODERS: dict[type, Callable[[Any, bytes | None], bytes]] = {
    Solicit: _enc_solicit,
    Data: _enc_data,
    Parity: _enc_parity,
    Announce: _enc_announce,
    Nak: _enc_nak,
    Status: _enc_status,
    End: _enc_end,
}


def encode(msg: Message, key: bytes | None = None) -> bytes:
    return _ENCODERS[type(msg)](msg, key)


# ---------------------------------------------------------------------------------------
# decoders of untrusted bytes


def _u(value: Any, limit: int = _MAX_U32) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise BadPacket("field is not an unsigned integer in range")
    return value


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise BadPacket("field is not a boolean")
    return value


def _text(value: Any, limit: int = 64) -> str:
    if type(value) is not str or len(value) > limit:
        raise BadPacket("field is not a short string")
    return value


def _fields(body: bytes | memoryview, count: int) -> list[Any]:
    try:
        fields = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_bin_len=256,
            max_str_len=1024,  # bytes; _text limits characters (up to 4 bytes each)
            max_array_len=_MAX_NAK_ENTRIES,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types for hostile input
        raise BadPacket(f"control body is not msgpack: {type(exc).__name__}") from None
    if type(fields) is not list or len(fields) != count:
        raise BadPacket("control body has the wrong shape")
    return fields


def _dec_announce(session: int, body: memoryview) -> Announce:
    f = _fields(body, 19)
    _hash(f[0])
    packet_size = _u(f[2], 65_000)
    if packet_size < 2 or packet_size % 2:
        raise BadPacket("announce: packet size must be even and positive")
    units = _u(f[3], 4096)
    ratio = _u(f[4], 400)
    if units < 1 or ratio < 1:
        raise BadPacket("announce: bad FEC geometry")
    return Announce(
        session, f[0], _u(f[1], _MAX_U64), packet_size, units, ratio, _u(f[5], _MAX_U64),
        _text(f[6]), _u(f[7], 65535), _u(f[8]), _flag(f[9]), _u(f[10]), _u(f[11], 100),
        _flag(f[12]), _flag(f[13]), _u(f[14], MAX_RANK), _u(f[15]), _u(f[16], MAX_HOLD_MS),
        _u(f[17], _MAX_U64), _echoes(f[18]),
    )  # fmt: skip


def _dec_nak(session: int, body: memoryview) -> Nak:
    f = _fields(body, 3)
    if type(f[1]) is not list or not f[1]:
        raise BadPacket("nak: no entries")
    entries = []
    for item in f[1]:
        if type(item) is not list or len(item) != 3:
            raise BadPacket("nak: bad entry")
        entries.append(NakEntry(_u(item[0]), _u(item[1]), _u(item[2])))
    return Nak(session, _u(f[0], _MAX_U64), tuple(entries), _u(f[2], _MAX_U64))


def _dec_status(session: int, body: memoryview) -> Status:
    f = _fields(body, 9)
    return Status(
        session, _u(f[0], _MAX_U64), _u(f[1]), _flag(f[2]), _flag(f[3]), _u(f[4], 1000),
        _u(f[5]), _u(f[6], 100), _u(f[7], MAX_RANK), _u(f[8], _MAX_U64),
    )  # fmt: skip


def _dec_end(session: int, body: memoryview) -> End:
    f = _fields(body, 2)
    return End(session, _text(f[0], 200), _u(f[1], _MAX_U64))


def _dec_solicit(session: int, body: memoryview) -> Solicit:
    f = _fields(body, 4)
    return Solicit(session, _hash(f[0]), _u(f[1], _MAX_U64), _u(f[2], _MAX_U64), _u(f[3], _MAX_U64))


def _echoes(value: Any) -> tuple[int, ...]:
    if type(value) is not list or len(value) > MAX_ECHOES:
        raise BadPacket("announce: bad echo list")
    return tuple(_u(n, _MAX_U64) for n in value)


def _hash(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != _HASH_LEN:
        raise BadPacket("bad package hash")
    return value


def _dec_data(session: int, body: memoryview) -> Data:
    block, index = _shard_fields(body)
    return Data(session, block, index, bytes(body[SHARD.size :]))


def _dec_parity(session: int, body: memoryview) -> Parity:
    block, seq = _shard_fields(body)
    return Parity(session, block, seq, bytes(body[SHARD.size :]))


def _shard_fields(body: memoryview) -> tuple[int, int]:
    if len(body) <= SHARD.size:
        raise BadPacket("shard datagram has no payload")
    block, index = SHARD.unpack_from(body)
    return int(block), int(index)


_DECODERS: dict[int, Callable[[int, memoryview], Message]] = {
    MsgType.DATA: _dec_data,
    MsgType.PARITY: _dec_parity,
    MsgType.ANNOUNCE: _dec_announce,
    MsgType.NAK: _dec_nak,
    MsgType.STATUS: _dec_status,
    MsgType.END: _dec_end,
    MsgType.SOLICIT: _dec_solicit,
}


def peek_session_untrusted(data: bytes) -> tuple[MsgType, int]:
    """Type and session id of a datagram, checking only the fixed header."""
    if len(data) < HEADER.size + TAG_LEN:
        raise BadPacket("datagram too short")
    magic, version, kind, session = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadPacket("bad magic")
    if version != VERSION:
        raise BadPacket(f"unsupported wire version {version}")
    if kind not in _DECODERS:
        raise BadPacket(f"unknown message type {kind}")
    return MsgType(kind), int(session)


_SHARD_HEADER = struct.Struct("!2sBBQII")
_SHARD_KINDS = (MsgType.DATA, MsgType.PARITY)


def decode_shard_untrusted(
    data: bytes, key: bytes | None = None
) -> tuple[int, int, int, int, bytes] | None:
    """The hot path: (type, session, block, index, payload) of a DATA or PARITY datagram.

    Returns None for any other (well-formed) type, so the caller falls back to
    :func:`decode_untrusted`. Raises only BadPacket.
    """
    if len(data) <= _SHARD_HEADER.size + TAG_LEN or len(data) > MAX_DATAGRAM:
        return None
    magic, version, kind, session, block, index = _SHARD_HEADER.unpack_from(data)
    if kind not in _SHARD_KINDS or magic != MAGIC or version != VERSION:
        return None
    if key:
        tag = _tag(key, session, memoryview(data)[:-TAG_LEN])
        if not hmac.compare_digest(tag, data[-TAG_LEN:]):
            raise TagMismatch("authentication tag mismatch")
    return kind, session, block, index, data[_SHARD_HEADER.size : -TAG_LEN]


def _authentic_untrusted(data: bytes, key: bytes | None) -> tuple[MsgType, int, memoryview]:
    """Type, session and the signed part (header and body) of a datagram whose header is
    well formed and, with ``key``, whose tag matches; raises only BadPacket."""
    kind, session = peek_session_untrusted(data)
    if len(data) > MAX_DATAGRAM:
        raise BadPacket("datagram too long")
    view = memoryview(data)
    signed, tag = view[:-TAG_LEN], view[-TAG_LEN:]
    if key and not hmac.compare_digest(compute_tag(key, signed), tag):
        raise TagMismatch("authentication tag mismatch")
    return kind, session, signed


def decode_untrusted(data: bytes, key: bytes | None = None) -> Message:
    """Parse one datagram. With ``key``, the tag must match; raises only BadPacket."""
    kind, session, signed = _authentic_untrusted(data, key)
    return _DECODERS[kind](session, signed[HEADER.size :])
