"""The site's discovery key on loopback, as a user runs the commands: sessions announce under
it, so an agent with the same key (whatever its package's key) sees them and one without it
does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcast.snapshot import public_key_pem
from tests.test_fetch import KEY, codebase_root, content_of, make_package, publish, settings

__all__ = ["codebase_root"]  # the fixture, imported for pytest to find
ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
CLI = [sys.executable, "-m", "mcast.cli"]


@pytest.mark.parametrize("same_site", [True, False], ids=["same-site", "other-site"])
def test_a_fetch_sees_a_session_only_under_its_sites_discovery_key(
    tmp_path: Path, codebase_root, same_site: bool
) -> None:
    src = tmp_path / "src"
    snap = make_package(src, 600_000, 41)
    url = publish(codebase_root, src, snap)
    (tmp_path / "s.xml").write_bytes(snap.to_xml())
    (tmp_path / "k.pub").write_bytes(public_key_pem(KEY.public_key()))
    for name in ("package.key", "site.key", "other-site.key"):
        (tmp_path / name).write_text(os.urandom(32).hex())
    s = settings()
    disc = ["--group", s.discovery_group, "--port", str(s.discovery_port)]
    sender = subprocess.Popen(
        [*CLI, "send", str(src), "--snapshot", str(tmp_path / "s.xml"), "--trust-key",
         str(tmp_path / "k.pub"), "--session-key-file", str(tmp_path / "package.key"),
         "--discovery-key-file", str(tmp_path / "site.key"), "--rate", "20mbit",
         "--group", "239.255.201.7", "--port", str(s.discovery_port + 1),
         "--discovery", f"{s.discovery_group}:{s.discovery_port}", "--json"],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert sender.stdout is not None
        for line in sender.stdout:  # its first progress line: the session has announced
            if json.loads(line)["event"] == "progress":
                break
        site = "site.key" if same_site else "other-site.key"
        proc = subprocess.run(
            [*CLI, "fetch", "--snapshot", str(tmp_path / "s.xml"), "--trust-key",
             str(tmp_path / "k.pub"), "--out", str(tmp_path / "out"), "--codebase", url,
             "--session-key-file", str(tmp_path / "package.key"), "--discovery-key-file",
             str(tmp_path / site), "--hold", "0", *disc, "--json"],
            capture_output=True, text=True, timeout=120, env=ENV,
        )  # fmt: skip
    finally:
        sender.kill()
        sender.wait()
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert done["complete"] and content_of(tmp_path / "out", snap) == content_of(src, snap)
    if same_site:
        assert done["route"] == "joined" and done["bytes_http"] == 0, done
    else:  # it never heard the session: it mastered its own, over HTTP
        assert done["route"] == "master" and done["bytes_http"] == snap.total_size, done


async def test_a_replayed_announce_of_an_ended_session_is_neither_joined_nor_counted() -> None:
    """A host that recorded a session's announce on the discovery group replays it after the
    session ended: its tag is authentic, but it echoes none of our nonces, so the agent asks
    that session to confirm, hears nothing back, and neither joins it nor counts it towards
    the subnet's limit (before, it joined a dead session and waited out its silence)."""
    import dataclasses

    import trio

    from mcast.discovery import Action
    from mcast.discovery_driver import Discovery
    from mcast.udp import Endpoint
    from mcast.wire import Announce, encode
    from tests.harness import await_for

    key = os.urandom(32)
    s = dataclasses.replace(settings(), session_key=key)
    wanted, other = b"\x11" * 32, b"\x22" * 32
    recorded = encode(Announce(0xDEAD, wanted, 7, 1432, 16, 100, 10**8, "239.255.1.9", 47000, 3,
                               False, 2, 10, seq=5), key)  # fmt: skip
    async with Discovery.open(s) as disc:
        replayer = Endpoint.open(s.discovery_group, s.discovery_port, s.interface)
        try:
            async with trio.open_nursery() as nursery:

                async def replay() -> None:
                    while True:
                        await replayer.send_many([recorded])
                        await trio.sleep(0.02)

                nursery.start_soon(replay)
                await await_for(lambda: 0xDEAD in disc._asked, "the agent to ask it to confirm")
                assert (await disc.decide(wanted, 1))[0] is Action.START
                assert (await disc.decide(other, 1))[0] is Action.START  # limit not filled
                assert disc.table.live(trio.current_time()) == []
                nursery.cancel_scope.cancel()
        finally:
            replayer.close()
