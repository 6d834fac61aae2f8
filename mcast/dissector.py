"""Scapy layers for the wire-version-1 datagrams of :mod:`mcast.wire`, for test and capture.

This module owns the scapy view of the protocol: :class:`MCastHeader` (magic, version, type,
session id, and the 16-byte authentication tag as a trailer), :class:`MCastShard` for DATA and
PARITY bodies, :class:`MCastControl` for msgpack control bodies (kept raw, shown decoded), the
UDP port bindings (47000 by default, :func:`bind_port` for others) and :func:`seal`, which
sets the tag of a built packet the way :func:`mcast.wire.compute_tag` does.

Scapy is a test extra: only the tests and users who have scapy import this module. Nothing in
the engine does. Parsing here is for humans and fuzzers; the engine trusts only
:func:`mcast.wire.decode_untrusted`.
"""

from __future__ import annotations

from typing import Any

import msgpack
from scapy.fields import (
    ByteEnumField,
    ByteField,
    IntField,
    StrField,
    StrFixedLenField,
    TrailerField,
    XLongField,
    XStrFixedLenField,
)
from scapy.layers.inet import UDP
from scapy.packet import Packet, bind_layers

from mcast import wire
from mcast.udp import DISCOVERY_PORT

DEFAULT_PORT = 47000

MSG_TYPES: dict[int, str] = {int(t): t.name for t in wire.MsgType}


class MCastHeader(Packet):
    """The fixed 12-byte header; the tag that closes every datagram is kept here too."""

    name = "MCast"
    fields_desc = [  # noqa: RUF012 (scapy reads a class-level list)
        StrFixedLenField("magic", wire.MAGIC, 2),
        ByteField("version", wire.VERSION),
        ByteEnumField("type", int(wire.MsgType.DATA), MSG_TYPES),
        XLongField("session", 0),
        TrailerField(XStrFixedLenField("tag", bytes(wire.TAG_LEN), wire.TAG_LEN)),
    ]

    def mysummary(self) -> str:
        return str(self.sprintf("MCast %type% session=%session%"))


class MCastShard(Packet):
    """DATA (source shard ``index``) or PARITY (parity sequence ``index``) of FEC ``block``."""

    name = "MCast shard"
    fields_desc = [  # noqa: RUF012 (scapy reads a class-level list)
        IntField("block", 0),
        IntField("index", 0),
        StrField("load", b""),  # "payload" is taken by scapy itself
    ]

    def mysummary(self) -> str:
        return f"block={self.block} index={self.index} len={len(self.load)}"


class MCastControl(Packet):
    """A control body (ANNOUNCE, NAK, STATUS, END, SOLICIT): one msgpack array, kept raw."""

    name = "MCast control"
    fields_desc = [StrField("body", b"")]  # noqa: RUF012

    def decoded(self) -> Any:
        """The body unpacked with the receiver's limits, or None if it does not unpack."""
        return decode_body(bytes(self.body))

    def mysummary(self) -> str:
        return f"body={self.decoded()!r}"


def decode_body(body: bytes) -> Any:
    """Unpack a control body for display; None when it is not (small) msgpack."""
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_bin_len=256,
            max_str_len=256,
            max_array_len=256,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception:  # display only: any hostile body just shows as undecodable
        return None


def seal(pkt: Packet, key: bytes | None) -> Packet:
    """Return ``pkt`` (an MCastHeader stack) with the tag computed over header and body."""
    built = bytes(pkt[MCastHeader])
    sealed = pkt.copy()
    sealed[MCastHeader].tag = wire.compute_tag(key, built[: -wire.TAG_LEN])
    return sealed


def bind_port(port: int) -> None:
    """Dissect UDP datagrams to or from ``port`` as this protocol."""
    bind_layers(UDP, MCastHeader, dport=port)
    bind_layers(UDP, MCastHeader, sport=port)


for _kind in (wire.MsgType.DATA, wire.MsgType.PARITY):
    bind_layers(MCastHeader, MCastShard, type=int(_kind))
for _kind in wire.MsgType:
    if _kind not in (wire.MsgType.DATA, wire.MsgType.PARITY):
        bind_layers(MCastHeader, MCastControl, type=int(_kind))
bind_port(DEFAULT_PORT)
bind_port(DISCOVERY_PORT)
