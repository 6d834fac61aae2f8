"""The lab's rogue replayer (bench.rogue): it forges only inside the lab, its recordings
read back as they were heard, and its namespace goes with the lab, also when a test fails."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from bench import labnet
from bench.labnet import Lab
from bench.rogue import RECORD_MAGIC, Heard, Refused, classify, packet, read_recording, write_record
from bench.rogue import main as rogue_main
from mcast import wire

ANNOUNCE = wire.encode(wire.End(0xAB, "earlier session"), b"k" * 32)
SHARD = wire.encode_shard(wire.MsgType.DATA, 0xAB, 0, 3, b"x" * 100, None)


def test_a_forged_packet_carries_the_recorded_source_to_the_group_with_ttl_1():
    raw = packet(("198.18.0.1", 40001), ("239.255.77.1", 47000), SHARD)
    ver_ihl, _, total, _, _, ttl, proto, _, src, dst = struct.unpack_from("!BBHHHBBH4s4s", raw)
    assert (ver_ihl, total, ttl, proto) == (0x45, len(raw), 1, socket.IPPROTO_UDP)
    assert socket.inet_ntoa(src) == "198.18.0.1" and socket.inet_ntoa(dst) == "239.255.77.1"
    sport, dport, length, _ = struct.unpack_from("!HHHH", raw, 20)
    assert (sport, dport, length) == (40001, 47000, 8 + len(SHARD))
    assert raw[28:] == SHARD


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (("192.0.2.7", 1), ("239.255.77.1", 47000)),  # a source outside the lab
        (("198.18.0.1", 1), ("192.0.2.9", 47000)),  # a unicast destination
        (("198.18.0.1", 1), ("224.0.0.1", 47000)),  # a group outside 239.255/16
    ],
)
def test_it_refuses_to_forge_outside_the_lab(src: tuple[str, int], dst: tuple[str, int]):
    with pytest.raises(Refused):
        packet(src, dst, SHARD)


def test_it_refuses_an_interface_outside_the_lab(capsys: pytest.CaptureFixture[str]):
    assert rogue_main(["--interface", "192.0.2.5", "--listen", "239.255.77.1:47000"]) == 2
    assert "outside the lab range" in capsys.readouterr().err


def test_a_recording_reads_back_as_heard(tmp_path: Path):
    heard = [
        classify(ANNOUNCE, ("198.18.0.1", 40001), ("239.255.77.77", 47077)),
        classify(SHARD, ("198.18.0.1", 40001), ("239.255.77.1", 47000)),
    ]
    assert all(isinstance(h, Heard) for h in heard)
    assert classify(b"not ours", ("198.18.0.3", 1), ("239.255.77.1", 47000)) is None
    path = tmp_path / "rec.bin"
    with open(path, "wb") as out:
        out.write(RECORD_MAGIC)
        for h in heard:
            assert h is not None
            write_record(out, h)
    assert list(read_recording(path)) == heard
    assert [h.kind for h in read_recording(path)] == [wire.MsgType.END, wire.MsgType.DATA]


LAB_OK, LAB_WHY = labnet.lab_available()


@pytest.mark.lab
@pytest.mark.skipif(not LAB_OK, reason=f"lab unavailable: {LAB_WHY}")
def test_the_rogue_namespace_is_removed_when_the_run_fails():
    lab = Lab(receivers=1, extra_hosts=("rogue",))
    with pytest.raises(RuntimeError, match="a failing scenario"), lab:
        assert lab.receiver_hosts == ["h1"] and lab.addr("rogue") == "198.18.0.3"
        assert any(ns.endswith("-rogue") for ns in lab.leftovers())
        raise RuntimeError("a failing scenario")
    assert lab.leftovers() == []
