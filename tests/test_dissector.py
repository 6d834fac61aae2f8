"""The scapy layers of mcast.dissector against mcast.wire, and scapy-crafted forgeries.

Two independent implementations of the format (struct in wire.py, scapy fields here) must
agree byte for byte; packets crafted with scapy that are not authentic v1 datagrams must
end in BadPacket.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("scapy")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw, fuzz

from mcast import wire
from mcast.dissector import (
    DEFAULT_PORT,
    MCastControl,
    MCastHeader,
    MCastShard,
    bind_port,
    decode_body,
    seal,
)
from mcast.wire import BadPacket, MsgType, decode_untrusted, encode

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
KEY = b"session key " * 3
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
keys = st.one_of(st.none(), st.binary(min_size=1, max_size=64))

EXAMPLES: list[wire.Message] = [
    wire.Data(1, 2, 3, b"payload bytes"),
    wire.Parity(2**64 - 1, 2**32 - 1, 2**32 - 1, b"\x00\x01"),
    wire.Announce(
        5, bytes(range(32)), 9, 1400, 16, 25, 10**8, "239.255.1.2", 47000, 3, False, 4, 50
    ),
    wire.Nak(6, 11, (wire.NakEntry(1, 2, 3), wire.NakEntry(7, 0, 9)), 21),
    wire.Status(7, 12, 99, True, False),
    wire.End(8, "done", 22),
    wire.Solicit(0, bytes(range(32)), 13, 23, 2**64 - 1),
]
CONTROL_FIELDS: dict[type, list[object]] = {
    wire.Announce: [
        bytes(range(32)),
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
        False,
        0,
        0,
        0,
        0,
        [],
        0,
    ],
    wire.Nak: [11, [[1, 2, 3], [7, 0, 9]], 21],
    wire.Status: [12, 99, True, False, 0, 0, 0, 0, 0, 0],
    wire.End: ["done", 22],
    wire.Solicit: [bytes(range(32)), 13, 23, 2**64 - 1],
}


def _over_udp(datagram: bytes, sport: int = 40000, dport: int = DEFAULT_PORT) -> Ether:
    frame = Ether() / IP(src="198.18.0.2", dst="239.255.0.1") / UDP(sport=sport, dport=dport)
    return Ether(bytes(frame / Raw(datagram)))


# ---------------------------------------------------------------------------------------
# scapy builds what wire encodes


@PROPS
@given(
    kind=st.sampled_from([MsgType.DATA, MsgType.PARITY]),
    session=u64,
    block=u32,
    index=u32,
    payload=st.binary(min_size=1, max_size=1432),
    key=keys,
)
def test_scapy_built_shard_equals_wire_bytes(kind, session, block, index, payload, key):
    pkt = MCastHeader(type=int(kind), session=session) / MCastShard(
        block=block, index=index, load=payload
    )
    expected = wire.encode_shard(kind, session, block, index, payload, key)
    assert bytes(seal(pkt, key)) == expected
    explicit_tag = MCastHeader(type=int(kind), session=session, tag=expected[-16:]) / MCastShard(
        block=block, index=index, load=payload
    )
    assert bytes(explicit_tag) == expected


@PROPS
@given(
    kind=st.sampled_from([MsgType.DATA, MsgType.PARITY]),
    session=u64,
    block=u32,
    index=u32,
    payload=st.binary(min_size=1, max_size=1432),
    key=keys,
)
def test_wire_shard_dissects_to_its_fields_and_rebuilds_identically(
    kind, session, block, index, payload, key
):
    datagram = wire.encode_shard(kind, session, block, index, payload, key)
    pkt = MCastHeader(datagram)
    assert (pkt.magic, pkt.version, pkt.type, pkt.session) == (b"MC", 2, kind, session)
    assert pkt.tag == datagram[-16:]
    shard = pkt[MCastShard]
    assert (shard.block, shard.index, shard.load) == (block, index, payload)
    assert bytes(pkt) == datagram


def test_unkeyed_seal_is_a_zero_tag():
    pkt = MCastHeader(type=1, session=9) / MCastShard(block=1, index=2, load=b"x")
    assert bytes(seal(pkt, None))[-16:] == bytes(16) == bytes(pkt)[-16:]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_type_dissects_with_the_right_fields(msg: wire.Message):
    datagram = encode(msg, KEY)
    pkt = MCastHeader(datagram)
    assert pkt.type == datagram[3] and pkt.session == msg.session
    assert pkt.sprintf("%MCastHeader.type%") == MsgType(datagram[3]).name
    assert pkt.tag == datagram[-16:]
    if isinstance(msg, wire.Data | wire.Parity):
        index = msg.index if isinstance(msg, wire.Data) else msg.seq
        assert (pkt[MCastShard].block, pkt[MCastShard].index) == (msg.block, index)
        assert pkt[MCastShard].load == msg.payload
        assert MCastControl not in pkt
    else:
        assert MCastShard not in pkt
        assert pkt[MCastControl].decoded() == CONTROL_FIELDS[type(msg)]
        assert repr(CONTROL_FIELDS[type(msg)][0]) in pkt[MCastControl].mysummary()
    assert bytes(pkt) == datagram


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_scapy_built_control_equals_wire_bytes(msg: wire.Message):
    datagram = encode(msg, KEY)
    pkt = MCastHeader(type=datagram[3], session=msg.session) / MCastControl(body=datagram[12:-16])
    if isinstance(msg, wire.Data | wire.Parity):
        return  # shards are covered by the properties above
    assert bytes(seal(pkt, KEY)) == datagram
    assert decode_untrusted(bytes(seal(pkt, KEY)), KEY) == msg


# ---------------------------------------------------------------------------------------
# port bindings


@pytest.mark.parametrize(("sport", "dport"), [(40000, DEFAULT_PORT), (DEFAULT_PORT, 40000)])
def test_default_port_dissects_either_direction(sport: int, dport: int):
    datagram = encode(EXAMPLES[0], KEY)
    frame = _over_udp(datagram, sport, dport)
    assert MCastHeader in frame and frame[MCastShard].load == b"payload bytes"
    assert bytes(frame[MCastHeader]) == datagram


def test_the_discovery_port_dissects_too():
    solicit = encode(EXAMPLES[-1], KEY)
    frame = _over_udp(solicit, 40000, 47077)
    assert frame[MCastHeader].sprintf("%MCastHeader.type%") == "SOLICIT"
    assert frame[MCastControl].decoded() == CONTROL_FIELDS[wire.Solicit]


def test_ethernet_padding_stays_out_of_the_tag():
    datagram = encode(wire.Data(1, 2, 3, b"x"), KEY)  # 37 bytes: Ethernet pads the frame
    frame = Ether(
        bytes(Ether() / IP() / UDP(sport=1, dport=DEFAULT_PORT) / Raw(datagram)) + b"\xee" * 20
    )
    assert frame[MCastHeader].tag == datagram[-16:]
    assert frame[MCastShard].load == b"x"


def test_bind_port_adds_another_port():
    datagram = encode(EXAMPLES[5])
    assert MCastHeader not in _over_udp(datagram, 40001, 47999)
    bind_port(47999)
    frame = _over_udp(datagram, 40001, 47999)
    assert frame[MCastControl].decoded() == ["done", 22]


def test_summary_names_the_type():
    assert "ANNOUNCE" in MCastHeader(encode(EXAMPLES[2])).mysummary()
    assert "len=13" in MCastHeader(encode(EXAMPLES[0])).summary()


def test_undecodable_control_body_shows_as_none():
    assert decode_body(b"\xc1") is None
    assert decode_body(b"\xdd\xff\xff\xff\xff") is None
    assert MCastControl(body=b"\x91\xc1").decoded() is None
    assert decode_body(b"\x92\x01\xa1a") == [1, "a"]


# ---------------------------------------------------------------------------------------
# crafted forgeries end in BadPacket


def _shard(**header: object) -> MCastHeader:
    fields: dict[str, object] = {"type": 1, "session": 5, **header}
    return MCastHeader(**fields) / MCastShard(block=1, index=2, load=b"evil")


def test_forged_data_with_wrong_tag_is_refused():
    for tag in (bytes(16), os.urandom(16), wire.compute_tag(b"another key", b"x")):
        with pytest.raises(BadPacket, match="tag"):
            decode_untrusted(bytes(_shard(tag=tag)), KEY)
    with pytest.raises(BadPacket, match="tag"):
        decode_untrusted(bytes(seal(_shard(), b"attacker's key")), KEY)
    assert isinstance(decode_untrusted(bytes(seal(_shard(), KEY)), KEY), wire.Data)


@pytest.mark.parametrize("version", [0, 1, 255])
def test_forged_data_with_wrong_version_is_refused(version: int):
    for key in (None, KEY):
        with pytest.raises(BadPacket, match="version"):
            decode_untrusted(bytes(seal(_shard(version=version), key)), key)


@pytest.mark.parametrize("header", [{"magic": b"MD"}, {"type": 0}, {"type": 7}, {"type": 255}])
def test_forged_header_fields_are_refused(header: dict[str, object]):
    for key in (None, KEY):
        with pytest.raises(BadPacket):
            decode_untrusted(bytes(seal(_shard(**header), key)), key)


@pytest.mark.parametrize("body", [b"", b"\x00", b"\x00\x00\x00\x01", b"\x00" * 8])
def test_forged_data_with_truncated_body_is_refused(body: bytes):
    """Block and index cut short, or no payload: refused even when correctly sealed."""
    for key in (None, KEY):
        pkt = MCastHeader(type=1, session=5) / Raw(body)
        with pytest.raises(BadPacket):
            decode_untrusted(bytes(seal(pkt, key)), key)


def test_forged_datagram_cut_short_is_refused():
    datagram = bytes(seal(_shard(), KEY))
    for n in range(len(datagram)):
        with pytest.raises(BadPacket):
            decode_untrusted(datagram[:n], KEY)


@PROPS
@given(seed=st.integers(0, 2**32 - 1), control=st.booleans())
def test_scapy_fuzzed_datagrams_are_badpacket_or_message(seed: int, control: bool):
    import random

    random.seed(seed)  # scapy's fuzz() draws from the random module
    inner = MCastControl() if control else MCastShard()
    pkt = fuzz(MCastHeader(magic=b"MC", version=wire.VERSION) / inner)
    datagram = bytes(pkt)
    try:
        msg = decode_untrusted(datagram)
    except BadPacket:
        msg = None
    assert msg is None or isinstance(
        msg, wire.Data | wire.Parity | wire.Announce | wire.Nak | wire.Status | wire.End
    )
    with pytest.raises(BadPacket):  # random tags never authenticate
        decode_untrusted(datagram, KEY)
