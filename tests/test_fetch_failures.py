"""Every multicast failure is a failed try that ends in HTTP: never an exception out of fetch().

A socket that cannot be opened, an address the safety rules refuse, or an announce (forged or
broken) that names a data group outside the allowed scope must leave the agent with the
package from its codebases, and a note saying why multicast was not used.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from mcast.discovery import SessionTable, announce_problem, data_channel
from mcast.fetch import FetchProgress, FetchResult, Route, fetch
from mcast.snapshot import public_key_pem
from mcast.udp import Endpoint
from mcast.wire import Announce, BadPacket, Solicit, decode_untrusted, encode
from tests.test_fetch import KEY, codebase_root, content_of, make_package, publish, settings

__all__ = ["codebase_root"]  # the fixture, imported for pytest to find


def good_announce(session: int = 7, **kw: object) -> Announce:
    fields: dict[str, object] = {
        "session": session, "package_hash": b"\x01" * 32, "sender_id": 1, "packet_size": 1432,
        "units_per_block": 16, "parity_ratio_pct": 100, "rate_bps": 10**8,
        "group": "239.255.1.1", "port": 47000, "next_block": 0, "pass_done": False,
        "receivers": 0, "progress_pct": 0,
    }  # fmt: skip
    fields.update(kw)
    return Announce(**fields)  # type: ignore[arg-type]


def test_an_announce_for_a_group_outside_the_scope_is_not_followed() -> None:
    for bad in ({"group": "224.0.0.1"}, {"group": "127.0.0.1"}, {"group": "192.0.2.7"},
                {"group": "not an address"}, {"group": "239.254.1.1"}, {"port": 0},
                {"port": 70000}):  # fmt: skip
        a = good_announce(**bad)
        assert announce_problem(a) is not None, bad
        t = SessionTable()
        assert t.heard(a, 0.0) is False
        assert t.live(0.1) == [] and t.rejected == 1
    assert announce_problem(good_announce()) is None
    t = SessionTable()
    assert t.heard(good_announce(), 0.0) is True and len(t.live(0.1)) == 1


async def test_a_socket_that_cannot_be_opened_ends_in_http(tmp_path: Path, codebase_root) -> None:
    """198.18.255.254 passes the safety rules but is no address of this host: the kernel
    refuses to join a group on it."""
    src = tmp_path / "src"
    snap = make_package(src, 300_000, 21)
    url = publish(codebase_root, src, snap)
    with trio.fail_after(30):
        r = await fetch(snap, tmp_path / "out", [url], settings(interface="198.18.255.254"))
    assert r.complete and r.route is Route.HTTP and r.bytes_http == snap.total_size
    assert any("multicast failed" in n for n in r.notes), r.notes
    assert content_of(tmp_path / "out", snap) == content_of(src, snap)


async def test_an_unsafe_discovery_group_ends_in_http(tmp_path: Path, codebase_root) -> None:
    src = tmp_path / "src"
    snap = make_package(src, 300_000, 22)
    url = publish(codebase_root, src, snap)
    with trio.fail_after(30):
        r = await fetch(snap, tmp_path / "out", [url], settings(discovery_group="224.0.0.251"))
    assert r.complete and r.route is Route.HTTP
    assert any("multicast failed" in n and "224.0.0.251" in n for n in r.notes), r.notes


async def test_forged_announces_with_a_bad_group_cost_nothing(
    tmp_path: Path, codebase_root
) -> None:
    """A host answers every SOLICIT for the package with an announce (keyed: it holds the
    package key) naming a group outside the scope. The agent ignores it and starts its own
    session: the package arrives, and not through the forger's group."""
    src = tmp_path / "src"
    snap = make_package(src, 300_000, 23)
    url = publish(codebase_root, src, snap)
    s = settings(multicast_tries=2, time_budget_s=20)
    forged = 0
    ep = Endpoint.open(s.discovery_group, s.discovery_port, s.interface)

    async def forger() -> None:
        nonlocal forged
        while True:
            for data, _ in await ep.receive_batch():
                try:
                    msg = decode_untrusted(data, s.session_key)
                except BadPacket:
                    continue
                if isinstance(msg, Solicit) and msg.package_hash == snap.package_hash:
                    _, port = data_channel(snap.package_hash)
                    lie = good_announce(random.getrandbits(62), package_hash=snap.package_hash,
                                        group="224.0.0.1", port=port)  # fmt: skip
                    await ep.send_many([encode(lie, s.session_key)] * 3)
                    forged += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forger)
            with trio.fail_after(40):
                r = await fetch(snap, tmp_path / "out", [url], s)
            nursery.cancel_scope.cancel()
    finally:
        ep.close()
    assert forged >= 1  # the forger was heard from and answered
    assert r.complete and r.route is Route.MASTER, r.notes
    assert content_of(tmp_path / "out", snap) == content_of(src, snap)


async def test_when_the_master_dies_a_receiver_takes_over_and_nobody_starts_over(
    tmp_path: Path, codebase_root
) -> None:
    """Four agents, one master streaming from HTTP. The master's process dies (its task is
    cancelled: no END) when it has sent 40%. One receiver takes the session over, the others
    join it, every unit already verified is kept, and about one copy crosses the WAN."""
    src = tmp_path / "src"
    snap = make_package(src, 4_000_000, 24)
    url = publish(codebase_root, src, snap)
    s = settings(rate_bps=40_000_000, hold_s=0.5)
    scopes = {i: trio.CancelScope() for i in range(4)}
    results: dict[int, FetchResult] = {}
    killed: list[int] = []
    verified_at_kill: dict[int, int] = {}
    seen: dict[int, int] = {}

    master: list[int] = []

    def watch(i: int) -> Callable[[FetchProgress], None]:
        def on_progress(p: FetchProgress) -> None:
            seen[i] = p.bytes_verified
            if p.bytes_http and not master:
                master.append(i)  # only the master downloads over HTTP while a session runs
            # the master has sent 40%: a receiver of its session has verified that much
            if not killed and master and i != master[0] and p.phase == "multicast" \
                    and p.bytes_verified >= 0.4 * snap.total_size:
                killed.append(master[0])
                verified_at_kill.update(seen)
                scopes[master[0]].cancel()
        return on_progress

    async def agent(i: int) -> None:
        with scopes[i]:
            results[i] = await fetch(snap, tmp_path / f"a{i}", [url], s, progress=watch(i))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(agent, i)
    assert len(killed) == 1
    dead = killed[0]
    survivors = {i: r for i, r in results.items() if i != dead}
    assert len(survivors) == 3 and all(r.complete for r in survivors.values())
    routes = sorted(r.route.value for r in survivors.values())
    assert routes == ["joined", "joined", "master"], [r.notes for r in survivors.values()]
    heir = next(i for i, r in survivors.items() if r.route is Route.MASTER)
    notes = {i: r.notes for i, r in survivors.items()}
    assert any("took over" in n for n in survivors[heir].notes), notes
    for i, r in survivors.items():
        assert content_of(tmp_path / f"a{i}", snap) == content_of(src, snap)
        if i != heir:
            assert r.bytes_http == 0  # they waited for the heir
    # nobody started over: the heir fetched at most what it lacked when the master died
    heir_http = survivors[heir].bytes_http
    assert heir_http <= snap.total_size - verified_at_kill.get(heir, 0) + 2**16


def test_mcast_fetch_with_an_interface_that_does_not_exist_completes_over_http(
    tmp_path: Path, codebase_root
) -> None:
    """As a user runs it: the command exits 0 with the package, and says why no multicast."""
    src = tmp_path / "src"
    snap = make_package(src, 200_000, 25)
    url = publish(codebase_root, src, snap)
    (tmp_path / "s.xml").write_bytes(snap.to_xml())
    (tmp_path / "k.pub").write_bytes(public_key_pem(KEY.public_key()))
    (tmp_path / "session.key").write_text("ab" * 32)
    s = settings()
    proc = subprocess.run(
        [sys.executable, "-m", "mcast.cli", "fetch", "--snapshot", str(tmp_path / "s.xml"),
         "--trust-key", str(tmp_path / "k.pub"), "--out", str(tmp_path / "out"),
         "--codebase", url, "--interface", "198.18.255.254", "--group", s.discovery_group,
         "--port", str(s.discovery_port), "--session-key-file", str(tmp_path / "session.key"),
         "--json"],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert done["event"] == "done" and done["complete"] and done["route"] == "http"
    assert any("multicast failed" in n for n in done["notes"]), done
    assert content_of(tmp_path / "out", snap) == content_of(src, snap)
