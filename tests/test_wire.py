"""Adversarial tests of mcast.wire: round trips, the decoder contract, authentication, limits.

The decoder contract (h11/trio style): ``decode_untrusted`` and ``peek_session_untrusted``
either return a message or raise ``BadPacket`` for any bytes at all; nothing else escapes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mcast import wire
from mcast.wire import (
    DATA_OVERHEAD,
    MAX_DATAGRAM,
    TAG_LEN,
    Announce,
    BadPacket,
    Data,
    End,
    MsgType,
    Nak,
    NakEntry,
    Parity,
    Solicit,
    Status,
    decode_untrusted,
    encode,
    peek_session_untrusted,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MESSAGE_TYPES = (Data, Parity, Announce, Nak, Status, End, Solicit)
KEY = b"k" * 32
OTHER_KEY = b"K" * 32

# ---------------------------------------------------------------------------------------
# strategies over the full valid field ranges

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
keys = st.one_of(st.none(), st.binary(min_size=1, max_size=64))
real_keys = st.binary(min_size=1, max_size=64)
payloads = st.binary(min_size=1, max_size=1500)

datas = st.builds(Data, u64, u32, u32, payloads)
parities = st.builds(Parity, u64, u32, u32, payloads)
announces = st.builds(
    Announce,
    session=u64,
    package_hash=st.binary(min_size=32, max_size=32),
    sender_id=u64,
    packet_size=st.integers(1, 32_500).map(lambda n: 2 * n),
    units_per_block=st.integers(1, 4096),
    parity_ratio_pct=st.integers(1, 400),
    rate_bps=u64,
    group=st.text(max_size=64),  # 64 code points are at most 256 UTF-8 bytes
    port=st.integers(0, 65535),
    next_block=u32,
    pass_done=st.booleans(),
    receivers=u32,
    progress_pct=st.integers(0, 100),
    claiming=st.booleans(),
    seq=u64,
    echoes=st.lists(u64, max_size=64).map(tuple),
    report_ms=st.one_of(st.just(0), st.integers(wire.MIN_REPORT_MS, wire.MAX_REPORT_MS)),
)
naks = st.builds(
    Nak,
    u64,
    u64,
    st.lists(st.builds(NakEntry, u32, u32, u32), min_size=1, max_size=256).map(tuple),
    u64,
)
statuses = st.builds(
    Status,
    u64,
    u64,
    u32,
    st.booleans(),
    st.booleans(),
    st.integers(0, 1000),
    u32,
    st.integers(0, 100),
    st.integers(0, 3),
    u64,
    u32,
)
solicits = st.builds(Solicit, u64, st.binary(min_size=32, max_size=32), u64, u64, u64)
# The decoder allows 200 code points; ASCII keeps them under msgpack's 256-byte str limit.
# (Non-ASCII reasons are pinned separately: see test_end_reason_limit_counts_characters.)
ascii_text = st.text(st.characters(max_codepoint=127), max_size=200)
ends = st.builds(End, u64, st.one_of(st.text(max_size=64), ascii_text), u64)
messages = st.one_of(datas, parities, announces, naks, statuses, ends, solicits)


def _decode_or_none(data: bytes, key: bytes | None = None) -> wire.Message | None:
    """The contract: a message of a known type, or BadPacket (-> None). Anything else fails."""
    try:
        msg = decode_untrusted(data, key)
    except BadPacket:
        return None
    assert isinstance(msg, MESSAGE_TYPES)
    return msg


def _tag_key(key: bytes, session: int) -> bytes:
    """The session's tag key, by RFC 5869 written out here (HKDF-SHA-256, one block), so the
    tests pin the derivation independently of wire.session_key."""
    prk = hmac.new(b"mcast wire v2", key, hashlib.sha256).digest()
    info = b"mcast session tag key" + session.to_bytes(8, "big")
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _raw(
    kind: int,
    body: bytes,
    session: int = 7,
    key: bytes | None = None,
    version: int = 2,
    magic: bytes = b"MC",
) -> bytes:
    """A datagram built by hand, independent of wire's encoders (tag computed here too)."""
    head = magic + struct.pack("!BBQ", version, kind, session) + body
    tag = hmac.new(_tag_key(key, session), head, hashlib.sha256).digest()[:16] if key else bytes(16)
    return head + tag


def _control(kind: MsgType, fields: Any, key: bytes | None = None) -> bytes:
    return _raw(kind, msgpack.packb(fields, use_bin_type=True), key=key)


def _examples() -> list[wire.Message]:
    return [
        Data(1, 2, 3, b"payload bytes"),
        Parity(2**64 - 1, 2**32 - 1, 2**32 - 1, b"\x00"),
        Announce(
            5, bytes(range(32)), 9, 1400, 16, 25, 10**8, "239.255.1.2", 47000, 3, False, 4, 50
        ),
        Nak(6, 11, (NakEntry(1, 2, 3), NakEntry(2**32 - 1, 0, 7))),
        Status(7, 12, 99, True, False),
        End(8, "done"),
        Solicit(0, bytes(range(32)), 13),
    ]


EXAMPLES = _examples()

# ---------------------------------------------------------------------------------------
# round trips


@ROUND
@given(msg=messages, key=keys)
def test_every_message_round_trips_with_and_without_key(msg: wire.Message, key: bytes | None):
    data = encode(msg, key)
    assert decode_untrusted(data, key) == msg
    assert peek_session_untrusted(data) == (MsgType(data[3]), msg.session)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_each_type_round_trips_at_field_extremes(msg: wire.Message):
    for key in (None, KEY):
        assert decode_untrusted(encode(msg, key), key) == msg


def test_type_codes_are_the_documented_ones():
    kinds = [decode_untrusted(encode(m)) for m in EXAMPLES]
    assert [encode(m)[3] for m in EXAMPLES] == [1, 2, 3, 4, 5, 6, 7]
    assert [type(k) for k in kinds] == list(MESSAGE_TYPES)


def test_largest_valid_values_round_trip():
    big = Announce(
        2**64 - 1,
        b"\xff" * 32,
        2**64 - 1,
        65_000,
        4096,
        400,
        2**64 - 1,
        "g" * 64,
        65535,
        2**32 - 1,
        True,
        2**32 - 1,
        100,
    )
    nak = Nak(
        2**64 - 1, 2**64 - 1, tuple(NakEntry(2**32 - 1, 2**32 - 1, 2**32 - 1) for _ in range(256))
    )
    status = Status(2**64 - 1, 2**64 - 1, 2**32 - 1, True, True, qdelay_us=2**32 - 1)
    for msg in (big, nak, status, End(0, "r" * 200)):
        assert decode_untrusted(encode(msg, KEY), KEY) == msg


def test_announce_may_not_ask_for_statuses_too_often():
    base = Announce(5, bytes(32), 9, 1400, 16, 25, 10**8, "239.255.1.2", 47000, 3, False, 4, 50)
    for ms in (0, wire.MIN_REPORT_MS, wire.MAX_REPORT_MS):
        msg = dataclasses.replace(base, report_ms=ms)
        assert decode_untrusted(encode(msg, KEY), KEY) == msg
    for ms in (1, wire.MIN_REPORT_MS - 1, wire.MAX_REPORT_MS + 1):  # a status flood, or nonsense
        with pytest.raises(BadPacket):
            decode_untrusted(encode(dataclasses.replace(base, report_ms=ms), KEY), KEY)


def test_status_queueing_delay_is_bounded_and_defaults_to_zero():
    assert Status(1, 2, 3, False).qdelay_us == 0
    with pytest.raises(BadPacket):  # beyond u32 microseconds (71 minutes) is no delay
        decode_untrusted(encode(Status(1, 2, 3, False, qdelay_us=2**32), KEY), KEY)


def test_end_reason_limit_counts_characters():
    msg = End(1, "é" * 200)  # 200 characters, 400 UTF-8 bytes: within the decoder's stated limit
    assert decode_untrusted(encode(msg)) == msg


# ---------------------------------------------------------------------------------------
# exact layout and sizes


def test_data_layout_is_header_shard_payload_tag():
    payload = b"\xab" * 10
    data = encode(Data(0x0102030405060708, 0x0A0B0C0D, 0x11121314, payload), KEY)
    expected_head = (
        b"MC\x02\x01"
        + bytes.fromhex("0102030405060708")
        + bytes.fromhex("0a0b0c0d11121314")
        + payload
    )
    assert data[:-16] == expected_head
    tag_key = _tag_key(KEY, 0x0102030405060708)
    assert data[-16:] == hmac.new(tag_key, expected_head, hashlib.sha256).digest()[:16]


def test_unkeyed_tag_is_sixteen_zero_bytes():
    assert encode(Data(1, 1, 1, b"x"))[-16:] == bytes(16)
    assert encode(End(1, "x"))[-16:] == bytes(16)


@pytest.mark.parametrize("n", [1, 2, 100, 1400, 1432, 8000])
@pytest.mark.parametrize("kind", [Data, Parity])
def test_shard_datagram_is_header_plus_shard_plus_payload_plus_tag(kind: type, n: int):
    for key in (None, KEY):
        assert len(encode(kind(1, 2, 3, b"p" * n), key)) == 12 + 8 + n + 16 == n + DATA_OVERHEAD


def test_data_overhead_lets_1432_byte_payloads_fit_a_1500_mtu():
    assert DATA_OVERHEAD == 36 and TAG_LEN == 16
    ipv4, udp = 20, 8
    assert len(encode(Data(1, 1, 1, b"x" * 1432), KEY)) + ipv4 + udp <= 1500


def test_largest_udp_datagram_decodes_and_one_byte_more_is_refused():
    biggest = MAX_DATAGRAM - DATA_OVERHEAD
    assert decode_untrusted(encode(Data(1, 1, 1, b"x" * biggest))).payload == b"x" * biggest
    with pytest.raises(BadPacket, match="too long"):
        decode_untrusted(encode(Data(1, 1, 1, b"x" * (biggest + 1))))


@pytest.mark.parametrize("kind", [MsgType.DATA, MsgType.PARITY])
def test_shard_without_payload_is_refused(kind: MsgType):
    for body in (b"", b"\0" * 4, b"\0" * 8):
        with pytest.raises(BadPacket):
            decode_untrusted(_raw(kind, body))


# ---------------------------------------------------------------------------------------
# decoder contract: BadPacket or a message, nothing else


@FUZZ
@given(data=st.binary(max_size=200), key=keys)
def test_decode_of_arbitrary_bytes_returns_message_or_raises_badpacket(data: bytes, key):
    _decode_or_none(data, key)


@FUZZ
@given(
    kind=st.integers(0, 255),
    body=st.binary(max_size=300),
    key=keys,
    version=st.sampled_from([0, 1, 2, 255]),
)
def test_decode_of_arbitrary_body_behind_valid_header_is_message_or_badpacket(
    kind: int, body: bytes, key, version: int
):
    msg = _decode_or_none(_raw(kind, body, key=key, version=version), key)
    if version != 2 or kind not in range(1, 8):
        assert msg is None


msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=300),
        st.binary(max_size=300),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=20), st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=40,
)


@FUZZ
@given(kind=st.sampled_from([3, 4, 5, 6]), value=msgpack_values, key=keys)
def test_decode_of_arbitrary_msgpack_control_body_is_message_or_badpacket(kind, value, key):
    _decode_or_none(_control(MsgType(kind), value, key), key)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bytes, bytes | None]:
    key = draw(keys)
    original = encode(draw(messages), key)
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "append", "set"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=40))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
    return original, bytes(data), key


@FUZZ
@given(case=mutated())
def test_decode_of_mutated_datagram_is_message_or_badpacket(case):
    original, data, key = case
    msg = _decode_or_none(data, key)
    if key and data != original:
        assert msg is None, "a keyed receiver accepted a changed datagram"


@FUZZ
@given(case=mutated())
def test_peek_of_mutated_datagram_is_header_or_badpacket(case):
    _, data, _ = case
    try:
        kind, session = peek_session_untrusted(data)
    except BadPacket:
        return
    assert isinstance(kind, MsgType) and 0 <= session < 2**64
    assert data[:2] == b"MC" and data[2] == 2 and kind == data[3]


@FUZZ
@given(data=st.binary(max_size=64))
def test_peek_of_arbitrary_bytes_is_header_or_badpacket(data: bytes):
    try:
        kind, session = peek_session_untrusted(data)
    except BadPacket:
        return
    assert kind in set(MsgType) and session == int.from_bytes(data[4:12], "big")


def test_peek_refuses_short_bad_magic_bad_version_unknown_type():
    good = encode(End(3, "x"))
    assert peek_session_untrusted(good) == (MsgType.END, 3)
    for bad in (
        good[:27],
        b"XC" + good[2:],
        good[:2] + b"\x01" + good[3:],
        good[:3] + b"\x00" + good[4:],
        good[:3] + b"\x08" + good[4:],
    ):
        with pytest.raises(BadPacket):
            peek_session_untrusted(bad)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_truncation_is_refused_with_key_and_never_crashes_without(msg: wire.Message):
    keyed, plain = encode(msg, KEY), encode(msg)
    for n in range(len(keyed)):
        with pytest.raises(BadPacket):
            decode_untrusted(keyed[:n], KEY)
    for n in range(len(plain)):
        _decode_or_none(plain[:n])
    for n in range(28):  # shorter than header + tag: nothing to parse at all
        with pytest.raises(BadPacket):
            decode_untrusted(plain[:n])


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_byte_at_a_time_prefixes_and_trailing_junk(msg: wire.Message):
    keyed = encode(msg, KEY)
    for junk in (b"\0", b"\xff" * 16, b"junk" * 50):
        with pytest.raises(BadPacket):
            decode_untrusted(keyed + junk, KEY)
        _decode_or_none(encode(msg) + junk)


@pytest.mark.parametrize("kind", [MsgType.ANNOUNCE, MsgType.NAK, MsgType.STATUS, MsgType.END])
def test_control_body_with_trailing_msgpack_is_refused(kind: MsgType):
    msg = next(m for m in EXAMPLES if encode(m)[3] == kind)
    plain = encode(msg)
    body = plain[12:-16]
    for extra in (b"\xc0", msgpack.packb(1), body):
        with pytest.raises(BadPacket):
            decode_untrusted(_raw(kind, body + extra, session=msg.session))


# ---------------------------------------------------------------------------------------
# authentication


@FUZZ
@given(msg=messages, key=real_keys, data=st.data())
def test_any_single_bit_flip_is_refused_by_a_keyed_receiver(msg, key: bytes, data):
    datagram = bytearray(encode(msg, key))
    bit = data.draw(st.integers(0, len(datagram) * 8 - 1))
    datagram[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(BadPacket):
        decode_untrusted(bytes(datagram), key)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_bit_of_header_body_and_tag_is_authenticated(msg: wire.Message):
    datagram = encode(msg, KEY)
    for bit in range(len(datagram) * 8):
        flipped = bytearray(datagram)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BadPacket):
            decode_untrusted(bytes(flipped), KEY)


@ROUND
@given(msg=messages, key=real_keys, other=real_keys)
def test_datagram_sealed_with_another_key_is_refused(msg, key: bytes, other: bytes):
    assume(key != other)
    with pytest.raises(BadPacket, match="tag"):
        decode_untrusted(encode(msg, other), key)


@ROUND
@given(msg=messages, key=real_keys)
def test_unkeyed_datagram_is_refused_by_keyed_receiver(msg, key: bytes):
    with pytest.raises(BadPacket, match="tag"):
        decode_untrusted(encode(msg), key)


@ROUND
@given(msg=messages, key=real_keys, tag=st.binary(min_size=16, max_size=16))
def test_receiver_without_key_ignores_tags(msg, key: bytes, tag: bytes):
    assert decode_untrusted(encode(msg, key)) == msg
    assert decode_untrusted(encode(msg)[:-16] + tag) == msg


def test_type_confusion_is_refused_by_keyed_receiver():
    """DATA re-labelled PARITY (same body layout) must not pass: the type is authenticated."""
    data = bytearray(encode(Data(1, 2, 3, b"xyz"), KEY))
    data[3] = MsgType.PARITY
    with pytest.raises(BadPacket):
        decode_untrusted(bytes(data), KEY)
    data = bytearray(encode(Data(1, 2, 3, b"xyz"), KEY))
    data[11] ^= 1  # another session
    with pytest.raises(BadPacket):
        decode_untrusted(bytes(data), KEY)


# ---------------------------------------------------------------------------------------
# control-body limits and types

H32 = bytes(32)
GOOD_ANNOUNCE = [
    H32,
    9,
    1400,
    16,
    25,
    10**8,
    "239.255.1.2",
    47000,
    3,
    False,
    4,
    50,
    False,
    True,
    3,
    77,
    3000,
    5,
    [1, 2**64 - 1],
    50,
]


def _announce_with(i: int, value: Any) -> list[Any]:
    fields = list(GOOD_ANNOUNCE)
    fields[i] = value
    return fields


BAD_BODIES: dict[str, tuple[MsgType, Any]] = {
    # shape
    "announce-as-map": (
        MsgType.ANNOUNCE,
        dict(zip("abcdefghijklmnopqrst", GOOD_ANNOUNCE, strict=True)),
    ),
    "announce-too-few": (MsgType.ANNOUNCE, GOOD_ANNOUNCE[:-1]),
    "announce-too-many": (MsgType.ANNOUNCE, [*GOOD_ANNOUNCE, 0]),
    "announce-257-array": (MsgType.ANNOUNCE, [0] * 257),
    "announce-scalar": (MsgType.ANNOUNCE, 5),
    "nak-as-map": (MsgType.NAK, {"r": 1, "e": [[1, 2, 3]]}),
    "nak-entries-map": (MsgType.NAK, [1, {"1": [1, 2, 3]}]),
    "nak-entry-map": (MsgType.NAK, [1, [{"b": 1}]]),
    "nak-no-entries": (MsgType.NAK, [1, []]),
    "nak-257-entries": (MsgType.NAK, [1, [[1, 2, 3]] * 257]),
    "nak-entry-short": (MsgType.NAK, [1, [[1, 2]]]),
    "nak-entry-long": (MsgType.NAK, [1, [[1, 2, 3, 4]]]),
    "status-too-few": (MsgType.STATUS, [1, 2, True]),
    "status-too-many": (MsgType.STATUS, [1, 2, True, False, 0]),
    "end-empty": (MsgType.END, []),
    "end-two": (MsgType.END, ["a", "b"]),
    # strings and bins
    "end-reason-201": (MsgType.END, ["r" * 201]),
    "end-reason-300-bytes": (MsgType.END, ["r" * 300]),
    "end-reason-bytes": (MsgType.END, [b"reason"]),
    "announce-group-65": (MsgType.ANNOUNCE, _announce_with(6, "g" * 65)),
    "announce-group-bytes": (MsgType.ANNOUNCE, _announce_with(6, b"239.255.1.2")),
    "announce-hash-31": (MsgType.ANNOUNCE, _announce_with(0, bytes(31))),
    "announce-hash-33": (MsgType.ANNOUNCE, _announce_with(0, bytes(33))),
    "announce-hash-257-bin": (MsgType.ANNOUNCE, _announce_with(0, bytes(257))),
    "announce-hash-str": (MsgType.ANNOUNCE, _announce_with(0, "h" * 32)),
    # bool vs int
    "status-receiver-bool": (MsgType.STATUS, [True, 2, True, False]),
    "status-done-int": (MsgType.STATUS, [1, 2, 1, False]),
    "status-failed-none": (MsgType.STATUS, [1, 2, True, None]),
    "announce-port-bool": (MsgType.ANNOUNCE, _announce_with(7, True)),
    "announce-pass-done-int": (MsgType.ANNOUNCE, _announce_with(9, 1)),
    "nak-block-bool": (MsgType.NAK, [1, [[True, 2, 3]]]),
    # negative, over range, floats
    "status-units-negative": (MsgType.STATUS, [1, -1, True, False]),
    "status-receiver-negative": (MsgType.STATUS, [-1, 2, True, False]),
    "status-units-over-u32": (MsgType.STATUS, [1, 2**32, True, False]),
    "status-units-float": (MsgType.STATUS, [1, 2.0, True, False]),
    "nak-block-over-u32": (MsgType.NAK, [1, [[2**32, 2, 3]]]),
    "nak-need-negative": (MsgType.NAK, [1, [[1, -2, 3]]]),
    "nak-horizon-over-u32": (MsgType.NAK, [1, [[1, 2, 2**64 - 1]]]),
    "nak-receiver-int64-min": (MsgType.NAK, [-(2**63), [[1, 2, 3]]]),
    "announce-next-block-over-u32": (MsgType.ANNOUNCE, _announce_with(8, 2**32)),
    "announce-receivers-over-u32": (MsgType.ANNOUNCE, _announce_with(10, 2**32)),
    "announce-rate-negative": (MsgType.ANNOUNCE, _announce_with(5, -1)),
    "announce-sender-float": (MsgType.ANNOUNCE, _announce_with(1, 1.5)),
    "announce-port-65536": (MsgType.ANNOUNCE, _announce_with(7, 65536)),
    "announce-progress-101": (MsgType.ANNOUNCE, _announce_with(11, 101)),
    # FEC geometry
    "announce-packet-size-odd": (MsgType.ANNOUNCE, _announce_with(2, 1401)),
    "announce-packet-size-1": (MsgType.ANNOUNCE, _announce_with(2, 1)),
    "announce-packet-size-0": (MsgType.ANNOUNCE, _announce_with(2, 0)),
    "announce-packet-size-65002": (MsgType.ANNOUNCE, _announce_with(2, 65_002)),
    "announce-units-0": (MsgType.ANNOUNCE, _announce_with(3, 0)),
    "announce-units-4097": (MsgType.ANNOUNCE, _announce_with(3, 4097)),
    "announce-ratio-0": (MsgType.ANNOUNCE, _announce_with(4, 0)),
    "announce-ratio-401": (MsgType.ANNOUNCE, _announce_with(4, 401)),
    "announce-report-ms-1": (MsgType.ANNOUNCE, _announce_with(19, 1)),
    "announce-report-ms-bool": (MsgType.ANNOUNCE, _announce_with(19, True)),
    "status-qdelay-negative": (MsgType.STATUS, [1, 2, True, False, 0, 0, 0, 0, 1, -1]),
    # election and rendezvous fields
    "announce-complete-int": (MsgType.ANNOUNCE, _announce_with(13, 1)),
    "announce-rank-4": (MsgType.ANNOUNCE, _announce_with(14, 4)),
    "announce-rank-negative": (MsgType.ANNOUNCE, _announce_with(14, -1)),
    "announce-verified-over-u32": (MsgType.ANNOUNCE, _announce_with(15, 2**32)),
    "announce-hold-over-a-minute": (MsgType.ANNOUNCE, _announce_with(16, 60_001)),
    "announce-old-13-fields": (MsgType.ANNOUNCE, GOOD_ANNOUNCE[:13]),
    "status-rank-4": (MsgType.STATUS, [1, 2, True, False, 0, 0, 0, 4, 1]),
    "announce-v1-17-fields": (MsgType.ANNOUNCE, GOOD_ANNOUNCE[:17]),
    "announce-65-echoes": (MsgType.ANNOUNCE, [*GOOD_ANNOUNCE[:18], [1] * 65]),
    "announce-echo-negative": (MsgType.ANNOUNCE, [*GOOD_ANNOUNCE[:18], [-1]]),
    "announce-echoes-not-list": (MsgType.ANNOUNCE, [*GOOD_ANNOUNCE[:18], 7]),
    "announce-seq-negative": (MsgType.ANNOUNCE, [*GOOD_ANNOUNCE[:17], -1, []]),
    "status-seq-float": (MsgType.STATUS, [1, 2, True, False, 0, 0, 0, 1, 1.5]),
    "end-v1-reason-only": (MsgType.END, ["r"]),
    "nak-seq-float": (MsgType.NAK, [1, [[1, 2, 3]], 1.0]),
    "solicit-v1-two-fields": (MsgType.SOLICIT, [H32, 1]),
    "solicit-nonce-negative": (MsgType.SOLICIT, [H32, 1, 2, -3]),
}


@pytest.mark.parametrize("key", [None, KEY], ids=["unkeyed", "keyed"])
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_control_body_outside_limits_is_refused(case: str, key: bytes | None):
    kind, fields = BAD_BODIES[case]
    with pytest.raises(BadPacket):
        decode_untrusted(_control(kind, fields, key), key)


def test_the_bad_body_table_is_built_on_a_valid_announce():
    """Guards the table above: its base announce is accepted, so each row tests one change."""
    msg = decode_untrusted(_control(MsgType.ANNOUNCE, GOOD_ANNOUNCE))
    assert isinstance(msg, Announce) and msg.packet_size == 1400
    assert isinstance(decode_untrusted(_control(MsgType.NAK, [1, [[1, 2, 3]] * 256, 9])), Nak)
    assert isinstance(decode_untrusted(_control(MsgType.END, ["r" * 200, 9])), End)
    assert isinstance(decode_untrusted(_control(MsgType.SOLICIT, [H32, 1, 2, 2**64 - 1])), Solicit)


RAW_BAD_BODIES = {
    "empty": b"",
    "truncated-array": b"\x9c\xc4\x20",
    "invalid-utf8-str": msgpack.packb(["\x00"])[:-1] + b"\xff",
    "ext-type": msgpack.packb([msgpack.ExtType(1, b"abc")]),
    "timestamp-ext": b"\x91\xd6\xff\x00\x00\x00\x01",
    "reserved-byte": b"\x91\xc1",
    "array32-claims-4G": b"\xdd\xff\xff\xff\xff",
    "str32-claims-4G": b"\x91\xdb\xff\xff\xff\xff",
    "bin32-claims-4G": b"\x91\xc6\xff\xff\xff\xff",
    "map-key-int": b"\x81\x01\x02",
    "deep-nesting": b"\x91" * 5000 + b"\xc0",
}


@pytest.mark.parametrize("kind", [MsgType.ANNOUNCE, MsgType.NAK, MsgType.STATUS, MsgType.END])
@pytest.mark.parametrize("case", sorted(RAW_BAD_BODIES))
def test_malformed_msgpack_body_is_refused(case: str, kind: MsgType):
    with pytest.raises(BadPacket):
        decode_untrusted(_raw(kind, RAW_BAD_BODIES[case], key=KEY), KEY)


def test_a_datagram_is_resealed_only_when_its_tag_is_good() -> None:
    """The discovery group's datagrams are checked under the site key and handed to a core
    that knows only the session key: a wrong tag or a broken header stays refused."""
    site, session = b"S" * 32, b"P" * 32
    heard = encode(End(7, "bye"), site)
    assert decode_untrusted(wire.reseal_untrusted(heard, site, session), session) == End(7, "bye")
    with pytest.raises(BadPacket):
        wire.reseal_untrusted(encode(End(7, "bye"), b"X" * 32), site, session)
    with pytest.raises(BadPacket):
        wire.reseal_untrusted(b"junk", site, session)
    assert decode_untrusted(wire.reseal(heard, session), session) == End(7, "bye")
