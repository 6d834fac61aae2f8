"""``mcast dissect``: a capture of a keyed session with an attack in it, each datagram with
the verdict a receiver would reach (forged, unauthenticated, replayed, from an ended session),
as an admin reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from mcast import wire
from mcast.wire import Announce, Data, End, Nak, NakEntry, Parity, Status, encode

KEY = bytes(range(32))
HASH = b"\x07" * 32
OLD, NEW = 0x1111, 0x2222
CLI = [sys.executable, "-m", "mcast.cli", "dissect"]


def _announce(session: int, seq: int) -> Announce:
    return Announce(session, HASH, 5, 1432, 16, 100, 10**8, "198.18.0.1", 47000, 0, False,
                    1, 0, seq=seq)  # fmt: skip


def capture(tmp_path: Path) -> tuple[Path, list[str]]:
    """The datagrams of the capture, and the verdict each must get with the key."""
    status = encode(Status(NEW, 9, 3, False, seq=40), KEY)
    shard = encode(Data(NEW, 0, 1, b"x" * 100), KEY)
    forged = bytearray(encode(Data(NEW, 0, 2, b"y" * 100), KEY))
    forged[30] ^= 1  # changed on the way
    rows = [
        (encode(_announce(OLD, 1), KEY), "ok"),
        (encode(End(OLD, "done", 2), KEY), "ok"),
        (encode(_announce(OLD, 1), KEY), "ended session"),  # a recording of the old session
        (encode(_announce(NEW, 10), KEY), "ok"),
        (shard, "ok"),
        (shard, "duplicate"),  # replayed data
        (status, "ok"),
        (status, "stale"),  # replayed STATUS: it would hold the sender's rate down
        (encode(Status(NEW, 9, 3, False, seq=39), KEY), "stale"),  # older than the last
        (encode(Nak(NEW, 9, (NakEntry(0, 1, 0),), 41), KEY), "ok"),
        (encode(Parity(NEW, 0, 3, b"p" * 100), b"another key of 32 bytes........."), "bad tag"),
        (bytes(forged), "bad tag"),
        (encode(Data(NEW, 0, 4, b"z" * 100), None), "no tag"),
        (b"MC\x01\x01" + bytes(40), "malformed"),  # wire version 1
    ]
    frames = [
        Ether() / IP(src="198.18.0.1", dst="239.255.1.9") / UDP(sport=40000, dport=47000)
        / Raw(data) for data, _ in rows
    ]  # fmt: skip
    frames.append(Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=1, dport=2)
                  / Raw(b"not ours"))  # fmt: skip
    path = tmp_path / "attack.pcap"
    wrpcap(str(path), frames)
    return path, [v for _, v in rows]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env,
                          check=False)  # fmt: skip


def test_each_datagram_gets_the_verdict_a_receiver_would_reach(tmp_path: Path) -> None:
    pcap, expected = capture(tmp_path)
    (tmp_path / "k").write_text(KEY.hex())
    proc = run(str(pcap), "--session-key-file", str(tmp_path / "k"), "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    datagrams = [e for e in lines if e["event"] == "datagram"]
    assert [d["verdict"] for d in datagrams] == expected
    assert datagrams[0]["type"] == "ANNOUNCE" and datagrams[0]["key"] == "session key"
    assert datagrams[0]["session"] == f"{OLD:016x}"
    (summary,) = [e for e in lines if e["event"] == "summary"]
    assert summary["datagrams"] == len(expected)  # the UDP datagram that is not ours is left out
    assert summary["verdicts"]["stale"] == 2 and summary["verdicts"]["bad tag"] == 2


def test_without_a_key_tags_are_unchecked_but_replays_still_show(tmp_path: Path) -> None:
    pcap, _ = capture(tmp_path)
    proc = run(str(pcap))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "[unchecked]" in lines[0] and "ANNOUNCE" in lines[0] and f"{OLD:016x}" in lines[0]
    assert "[duplicate]" in lines[5] and "[stale]" in lines[7]
    assert sum("[unchecked]" in line for line in lines) == 9  # forged ones too: no key


def test_other_sessions_are_marked_when_one_is_asked_for(tmp_path: Path) -> None:
    pcap, _ = capture(tmp_path)
    (tmp_path / "k").write_text(KEY.hex())
    proc = run(str(pcap), "--session-key-file", str(tmp_path / "k"), "--session",
               f"{NEW:x}", "--summary", "--json")  # fmt: skip
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["verdicts"]["other session"] == 3, summary


def test_a_file_that_is_not_a_capture_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.pcap").write_text("hello")
    proc = run(str(tmp_path / "x.pcap"))
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip().startswith("mcast: error: cannot read capture")
    assert "Traceback" not in proc.stderr
    assert wire.VERSION == 2  # the malformed row above is the previous version
