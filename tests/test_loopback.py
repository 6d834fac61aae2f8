"""The drivers on real sockets: loopback multicast (127.0.0.1, TTL 1, 239.255/16)."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from mcast import partial as partial_mod
from mcast.partial import DownloadError, PartialDownload
from mcast.receiver import ReceiverConfig
from mcast.recv_driver import ReceiveProgress, receive
from mcast.send_driver import send
from mcast.sender import SenderConfig
from mcast.snapshot import build_snapshot, generate_key
from mcast.source import SourceMismatch
from mcast.udp import Channel, Endpoint, UnsafeAddress, check_endpoint, gso_batches
from tests.harness import JsonProc, await_joined, event_is, expect_json, wait_joined

KEY = generate_key()


def channel() -> Channel:
    rnd = random.Random()
    return Channel(group=f"239.255.{rnd.randrange(100, 200)}.{rnd.randrange(1, 250)}",
                   port=rnd.randrange(40000, 60000))  # fmt: skip


def make_tree(root: Path, seed: int = 1) -> Path:
    rnd = random.Random(seed)
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(rnd.randbytes(300_000))
    (root / "doc" / "deep").mkdir(parents=True)
    (root / "doc" / "deep" / "readme.txt").write_text("install me\n")
    (root / "empty").write_bytes(b"")
    (root / "exact").write_bytes(rnd.randbytes(64 * 1024))
    for p, t in ((root / "bin" / "tool", 1_600_000_000), (root / "exact", 1_600_000_100)):
        os.utime(p, (t, t))
    return root


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    other = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files == other and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def sender_config(ch: Channel, **kw: object) -> SenderConfig:
    base: dict[str, object] = dict(group=ch.group, port=ch.port, rate_bps=200_000_000, linger=0.3)
    base.update(kw)
    return SenderConfig(**base)  # type: ignore[arg-type]


async def test_multi_file_package_reaches_two_receivers(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    snap = build_snapshot(src, "tree").signed(KEY)
    ch, key = channel(), os.urandom(32)
    results = {}
    async with trio.open_nursery() as nursery:
        for name in ("a", "b"):

            async def one(name: str = name) -> None:
                results[name] = await receive(snap, tmp_path / name, channel=ch, key=key)

            nursery.start_soon(one)
        await await_joined(ch.group, 2)  # both receivers listen before the first datagram
        sent = await send(snap, src, channel=ch, key=key, config=sender_config(ch))
    assert sent.receivers_done == 2
    for name in ("a", "b"):
        assert results[name].complete
        assert same_tree(src, tmp_path / name)
        assert not (tmp_path / name / ".mcast").exists()  # work directory cleaned up
        assert (tmp_path / name / "bin" / "tool").stat().st_mtime == 1_600_000_000
        assert results[name].bytes_received == snap.total_size


async def test_interrupted_receiver_resumes_from_verified_units(tmp_path: Path) -> None:
    src = tmp_path / "pkg.bin"
    src.write_bytes(random.Random(2).randbytes(3_000_000))
    snap = build_snapshot(src).signed(KEY)
    ch = channel()
    first = {}
    cut = trio.CancelScope()

    def cut_once_some_verified(p: ReceiveProgress) -> None:
        if p.units_verified > 0:
            cut.cancel()  # interrupted with part of the package verified

    async with trio.open_nursery() as nursery:

        async def interrupted() -> None:
            with cut:
                first["r"] = await receive(snap, tmp_path / "out", channel=ch,
                                           progress=cut_once_some_verified)  # fmt: skip
            nursery.cancel_scope.cancel()  # the sender goes too: this session is over

        nursery.start_soon(interrupted)
        await await_joined(ch.group)
        # 3 MB at 8 Mbit/s take 3 s; progress comes every 0.25 s, so the cut falls early on
        cfg = sender_config(ch, rate_bps=8_000_000, linger=0.1, receiver_timeout=0.5)
        await send(snap, src, channel=ch, config=cfg)
    assert "r" not in first  # it was cut off
    part = PartialDownload.open(snap, tmp_path / "out")
    had = len(part.verified_units())
    part.close()
    assert 0 < had < snap.block_count
    assert not (tmp_path / "out" / "pkg.bin").exists()  # nothing at the destination yet
    ch2 = channel()
    async with trio.open_nursery() as nursery:
        second = {}

        async def resume() -> None:
            second["r"] = await receive(snap, tmp_path / "out", channel=ch2)

        nursery.start_soon(resume)
        await await_joined(ch2.group)
        await send(snap, src, channel=ch2, config=sender_config(ch2))
    r = second["r"]
    assert r.complete and r.units_resumed == had
    resumed_bytes = sum(snap.block_range(u)[1] for u in range(had))
    assert r.bytes_received <= snap.total_size - resumed_bytes + snap.block_size
    assert (tmp_path / "out" / "pkg.bin").read_bytes() == src.read_bytes()


async def test_receiver_without_a_session_gives_up_and_keeps_nothing_at_the_destination(
    tmp_path: Path,
) -> None:
    src = tmp_path / "p.bin"
    src.write_bytes(b"z" * 100_000)
    snap = build_snapshot(src).signed(KEY)
    result = await receive(
        snap, tmp_path / "out", channel=channel(), config=ReceiverConfig(silence_timeout=0.3)
    )
    assert not result.complete
    assert "no session" in result.reason
    assert not (tmp_path / "out" / "p.bin").exists()


def test_not_enough_space_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "p.bin"
    src.write_bytes(b"q" * 200_000)
    snap = build_snapshot(src).signed(KEY)

    class Usage:
        free = 1000

    monkeypatch.setattr(partial_mod.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(DownloadError, match="not enough space"):
        PartialDownload.open(snap, tmp_path / "out")
    assert not (tmp_path / "out" / "p.bin").exists()
    assert not (tmp_path / "out" / ".mcast").exists()


def test_a_write_error_removes_every_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "p.bin"
    data = random.Random(3).randbytes(200_000)
    src.write_bytes(data)
    snap = build_snapshot(src).signed(KEY)
    part = PartialDownload.open(snap, tmp_path / "out")
    part.write_unit(0, data[: snap.block_size])

    def full_disk(fd: int, buf: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(partial_mod.os, "pwrite", full_disk)
    with pytest.raises(DownloadError, match="No space left"):
        part.write_unit(1, data[snap.block_size : 2 * snap.block_size])
    assert not (tmp_path / "out" / ".mcast").exists()
    assert not (tmp_path / "out" / "p.bin").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_really_full_disk_is_found_before_the_download(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        src = tmp_path / "big.bin"
        src.write_bytes(b"x" * 3_000_000)
        snap = build_snapshot(src).signed(KEY)
        with pytest.raises(DownloadError, match=r"not enough space|cannot reserve"):
            PartialDownload.open(snap, mnt / "out")
        assert not (mnt / "out" / "big.bin").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_files_never_grow_past_their_declared_size(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    snap = build_snapshot(src).signed(KEY)
    content = b"".join((src / f.path).read_bytes() for f in snap.files)
    part = PartialDownload.open(snap, tmp_path / "out")
    for u in range(snap.block_count):
        start, length = snap.block_range(u)
        part.write_unit(u, content[start : start + length])
    with pytest.raises(ValueError):
        part.write_unit(0, content[:10])  # a unit of the wrong length is refused
    placed = part.finish()
    assert {p.relative_to(tmp_path / "out").as_posix() for p in placed} == {
        f.path for f in snap.files
    }
    for f in snap.files:
        assert (tmp_path / "out" / f.path).stat().st_size == f.size


def test_a_symlink_at_the_destination_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    snap = build_snapshot(src).signed(KEY)
    (tmp_path / "out").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "out" / "bin").symlink_to(tmp_path / "outside")
    with pytest.raises(DownloadError, match="symlink"):
        PartialDownload.open(snap, tmp_path / "out")


async def test_sender_refuses_files_changed_since_the_snapshot(tmp_path: Path) -> None:
    src = tmp_path / "p.bin"
    src.write_bytes(b"a" * 100_000)
    snap = build_snapshot(src).signed(KEY)
    src.write_bytes(b"b" * 100_000)  # same size, other bytes
    ch = channel()
    with pytest.raises(SourceMismatch, match="does not match"):
        await send(snap, src, channel=ch, config=sender_config(ch))


def test_safety_rules_refuse_groups_interfaces_and_ttl_outside_the_lab() -> None:
    check_endpoint("239.255.1.2", "127.0.0.1")
    check_endpoint("239.255.1.2", "198.18.0.5")
    for group, iface, ttl in (
        ("224.0.0.251", "127.0.0.1", 1),  # mDNS, not ours
        ("239.1.2.3", "127.0.0.1", 1),  # outside 239.255/16
        ("239.255.1.2", "192.0.2.1", 1),  # not loopback nor the lab range
        ("239.255.1.2", "127.0.0.1", 2),  # TTL > 1
        ("not-an-ip", "127.0.0.1", 1),
    ):
        with pytest.raises(UnsafeAddress):
            check_endpoint(group, iface, ttl)


async def test_a_stamping_endpoint_knows_when_each_datagram_arrived() -> None:
    """Kernel receive times (--yield's delay samples): one per datagram, in time.time()
    seconds, before the reader got to them; a plain endpoint keeps none."""
    ch = channel()
    stamped = Endpoint.open(ch.group, ch.port, stamps=True)
    plain = Endpoint.open(ch.group, ch.port)
    try:
        # Linux turns arrival stamping on for the whole host from a work item the first time
        # a socket asks, and stamps what arrived before that when it is read: wait until a
        # probe comes back stamped when it was sent, not when read 20 ms later, as happens
        # once that work has run.
        with trio.fail_after(10):
            while True:
                probe_sent = time.time()
                await plain.send_many([b"probe"])
                await trio.sleep(0.02)
                await stamped.receive_batch()
                if stamped.arrivals and max(stamped.arrivals) < probe_sent + 0.015:
                    break
        sent = time.time()
        await plain.send_many([b"a" * 100, b"b" * 100, b"c" * 50])
        await trio.sleep(0.05)  # the reader is late: the stamps are not
        got: list[bytes] = []
        stamps: list[float] = []
        while len(got) < 3:
            got += [d for d, _ in await stamped.receive_batch()]
            stamps += stamped.arrivals
        read = time.time()
        assert sorted(got) == [b"a" * 100, b"b" * 100, b"c" * 50]
        assert len(stamps) == 3
        assert all(sent - 0.01 <= t <= read - 0.04 for t in stamps), (sent, stamps, read)
        await plain.receive_batch()
        assert plain.arrivals == []
    finally:
        stamped.close()
        plain.close()


def test_gso_batches_keep_order_and_equal_sizes() -> None:
    sizes = [1468] * 70 + [900] + [1468] * 3 + [100, 100]
    dgrams = [bytes(n) for n in sizes]
    batches = list(gso_batches(dgrams))
    assert [d for b, _ in batches for d in b] == dgrams
    for batch, size in batches:
        assert all(len(d) == size for d in batch[:-1]) and len(batch[-1]) <= size
        assert len(batch) <= 64 and sum(map(len, batch)) <= 65000


def _cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mcast.cli", *args], capture_output=True,
                          text=True, timeout=timeout, input=stdin)  # fmt: skip


def _snapshot_send_recv(tmp_path: Path, *send_args: str) -> dict[str, Any]:
    """The CLI end to end on loopback: snapshot a tree, recv it (listening first), send it
    with ``send_args``; checks the receiver verified the exact tree, returns the send summary."""
    src = make_tree(tmp_path / "src")
    snapshot, key = tmp_path / "s.xml", tmp_path / "signing.pem"
    made = _cli("snapshot", str(src), "-o", str(snapshot), "--key", str(key), "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout.splitlines()[-1])["files"] == 4
    sk = tmp_path / "session.key"
    sk.write_text(os.urandom(32).hex())
    ch = channel()
    common = ["--snapshot", str(snapshot), "--group", ch.group, "--port", str(ch.port),
              "--session-key-file", str(sk), "--json"]  # fmt: skip
    recv = JsonProc([sys.executable, "-m", "mcast.cli", "recv", "--trust-key", f"{key}.pub",
                     "--out", str(tmp_path / "out"), *common])  # fmt: skip
    try:
        wait_joined(ch.group)  # the receiver listens before the sender starts
        sent = _cli("send", str(src), "--linger", "0.3", "--rate", "200mbit", *send_args,
                    *common)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        done = expect_json(recv, event_is("done", "error"), "the receiver's summary")
        assert recv.wait() == 0, recv.describe()
    finally:
        recv.kill()
    assert done["event"] == "done" and done["verified"] is True
    assert same_tree(src, tmp_path / "out")
    summary: dict[str, Any] = json.loads(sent.stdout.splitlines()[-1])
    assert summary["receivers_done"] == 1
    return summary


def test_cli_snapshot_send_recv_end_to_end(tmp_path: Path) -> None:
    assert _snapshot_send_recv(tmp_path)["yield_bandwidth"] is False


def test_cli_send_yield_completes_and_reports_what_it_yielded(tmp_path: Path) -> None:
    """--yield on an idle loopback: the session completes, and its summary says how long it
    spent backed off and the worst queueing delay the receiver reported."""
    summary = _snapshot_send_recv(tmp_path, "--yield")
    assert summary["yield_bandwidth"] is True
    assert summary["yield_backed_off_s"] >= 0 and summary["yield_max_qdelay_ms"] >= 0
    assert 0 < summary["yield_min_rate_bps"] <= 200_000_000


def test_cli_exit_codes_say_what_went_wrong(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"1" * 5000)
    snapshot, key = tmp_path / "s.xml", tmp_path / "k.pem"
    assert _cli("snapshot", str(src), "-o", str(snapshot), "--key", str(key)).returncode == 0
    other = tmp_path / "other.pem"
    assert (
        _cli("snapshot", str(src), "-o", str(tmp_path / "o.xml"), "--key", str(other)).returncode
        == 0
    )
    sk = tmp_path / "session.key"
    sk.write_text(os.urandom(32).hex())
    base = ["recv", "--snapshot", str(snapshot), "--out", str(tmp_path / "o"), "--timeout", "0.3",
            "--session-key-file", str(sk)]  # fmt: skip
    assert _cli("recv", "--snapshot", str(snapshot)).returncode == 2  # missing arguments
    untrusted = _cli(*base, "--trust-key", f"{other}.pub")
    assert untrusted.returncode == 3 and "unknown key" in untrusted.stderr
    outside = _cli(*base, "--trust-key", f"{key}.pub", "--group", "224.0.0.1")
    assert outside.returncode == 2 and "239.255.0.0/16" in outside.stderr  # refused when given
    unsafe = _cli(*base, "--trust-key", f"{key}.pub", "--interface", "192.0.2.1")
    assert unsafe.returncode == 5 and "198.18.0.0/15" in unsafe.stderr  # the safety rules
    lonely = _cli(*base, "--trust-key", f"{key}.pub", "--port", "59999")
    assert lonely.returncode == 1
    missing = _cli("send", str(tmp_path / "nope"), "--snapshot", str(snapshot))
    assert missing.returncode == 4


def test_checkpoint_after_finish_or_discard_is_harmless(tmp_path: Path) -> None:
    src = tmp_path / "p.bin"
    data = random.Random(5).randbytes(100_000)
    src.write_bytes(data)
    snap = build_snapshot(src).signed(KEY)
    part = PartialDownload.open(snap, tmp_path / "out")
    for u in range(snap.block_count):
        start, length = snap.block_range(u)
        part.write_unit(u, data[start : start + length])
    part.finish()
    part.checkpoint()  # the driver's periodic checkpoint may fall due right after completion
    assert (tmp_path / "out" / "p.bin").read_bytes() == data
    assert not (tmp_path / "out" / ".mcast").exists()


def test_mcast_recv_follows_a_restarted_sender_and_keeps_what_it_verified(tmp_path: Path) -> None:
    """The sender is SIGKILLed half-way and started again (a new session id): the receiver
    says it lost the session, keeps every verified unit, joins the new session and completes."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(7).randbytes(3_000_000))
    snapshot, key = tmp_path / "s.xml", tmp_path / "signing.pem"
    assert _cli("snapshot", str(src), "-o", str(snapshot), "--key", str(key)).returncode == 0
    sk = tmp_path / "session.key"
    sk.write_text(os.urandom(32).hex())
    ch = channel()
    common = ["--snapshot", str(snapshot), "--group", ch.group, "--port", str(ch.port),
              "--session-key-file", str(sk), "--json"]  # fmt: skip
    send = [sys.executable, "-m", "mcast.cli", "send", str(src), "--trust-key", f"{key}.pub",
            "--no-discovery", "--linger", "0.3", *common]  # fmt: skip
    recv = JsonProc([sys.executable, "-m", "mcast.cli", "recv", "--trust-key", f"{key}.pub",
                     "--out", str(tmp_path / "out"), "--timeout", "2", *common])  # fmt: skip
    first = second = None
    try:
        wait_joined(ch.group)
        first = JsonProc([*send, "--rate", "4mbit"])  # ~6 s: time to kill it half-way
        expect_json(recv, lambda o: o.get("event") == "progress" and o["units"] >= 10,
                    "the receiver verifying units of the first session")  # fmt: skip
        first.kill()  # SIGKILL: no END
        lost = expect_json(recv, event_is("session_lost"), "the receiver noticing")
        second = JsonProc([*send, "--rate", "200mbit"])
        done = expect_json(recv, event_is("done", "error"), "the receiver's summary")
        assert recv.wait() == 0, recv.describe()
    finally:
        for proc in (recv, first, second):
            if proc is not None:
                proc.kill()
    assert lost["units_kept"] >= 10
    assert done["event"] == "done" and done["verified"] is True, done
    # the summary says what the restart cost: the units carried over, one session followed
    assert done["units_kept"] == lost["units_kept"] and done["sessions_followed"] == 1
    assert same_tree(src, tmp_path / "out")
