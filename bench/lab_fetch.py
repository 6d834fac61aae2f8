"""Lab scenarios for ``mcast fetch``: agents on a namespace LAN discover sessions, share them
under the subnet's session limit, and fall back to HTTP for what multicast could not deliver.

    python -m bench.lab --mode fetch --receivers 8 --packages 2 --max-sessions 1 --size 32M
    python -m bench.lab --mode fetch --receivers 8 --packages 1 --kill-sender-at 0.5

h0 serves every package over HTTP (the codebase, ``/pkg/<hash>/content``) and watches the
discovery group with ``mcast sessions --json``; receiver i fetches package i mod P. The
agents load first and ask on a "go", so start-up times decide nothing: h1 first, and once
its session is announced all the others at one moment. With
``--kill-sender-at F``, h0 also runs an ``mcast send`` session of package 0 that is killed
(SIGKILL, no END) once every agent has verified F of the package, so they finish by HTTP.

The report adds to the lab's: per receiver the route, bytes by multicast and by HTTP, and
from the observer's log ``max_live_sessions`` (sessions, not claims, alive at once, ended by
END or by the agents' TTL) and ``sessions`` (distinct session ids heard announcing data).
``sender_tx_bytes`` is what h0 (the codebase server) sent, from its eth0 counters; a receiver
is ``verified`` only if its JSON says complete and its files re-hash equal on disk.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.labnet import Lab, Proc, wait_all
from bench.labpkg import BIG_NAME, Package, check_tree, make_package, receiver_verified
from mcast.discovery import SESSION_TTL
from mcast.snapshot import parse_snapshot_xml
from mcast.units import format_rate

PY = sys.executable

CODEBASE_PORT = 8080
KILLED_GROUP = "239.255.66.1"


# ``mcast fetch`` that loads everything, says ready, and asks on a "go" line on stdin.
_READY_THEN_RUN = """
import json, sys
import mcast.cli, mcast.fetch
print(json.dumps({"event": "ready"}), flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(130)
sys.exit(mcast.cli.main(sys.argv[1:]))
"""


def max_live_sessions(seen: list[tuple[float, int, bool | None]]) -> int:
    """Most sessions (not mere claims) alive at once, as the agents judge it: from the first
    announce to the END, or to the last announce plus the TTL when no END was heard.

    ``seen`` holds (time, session, claiming) for announces and (time, session, None) for END.
    """
    spans: dict[int, list[float]] = {}
    ended: dict[int, float] = {}
    for t, sid, claiming in seen:
        if claiming is None:
            ended.setdefault(sid, t)
        elif not claiming:
            spans.setdefault(sid, [t, t])[1] = t
    ends = {sid: ended.get(sid, last + SESSION_TTL) for sid, (_, last) in spans.items()}
    events = sorted([(a, 1) for a, _ in spans.values()] + [(e, -1) for e in ends.values()])
    live = peak = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    return peak


def _observed(proc: Proc) -> list[tuple[float, int, bool | None]]:
    seen: list[tuple[float, int, bool | None]] = []
    for _, obj in proc.json_lines(0):
        if obj.get("event") == "announce":
            seen.append((obj["t"], int(obj["session"], 16), bool(obj["claiming"])))
        elif obj.get("event") == "end":
            seen.append((obj["t"], int(obj["session"], 16), None))
    return seen


def _wait_sessions_over(observer: Proc, deadline: float) -> None:
    """Until the observer heard every session it saw end: an END, or silence for the TTL
    (a killed sender sends no END)."""
    while time.monotonic() < deadline and not observer.finished:
        last: dict[int, float] = {}
        for t, sid, claiming in _observed(observer):
            if claiming is None:
                last[sid] = -math.inf  # ended
            elif sid not in last or last[sid] != -math.inf:
                last[sid] = t
        if all(time.monotonic() - t > SESSION_TTL for t in last.values()):
            return
        time.sleep(0.05)


def _kill_when_received(sender: Proc, agents: dict[str, Proc], need: float, timeout: float) -> None:
    """SIGKILL the sender (no END) once every agent reported ``need`` verified bytes (or
    ended: the report says how), so that each one's session fails with about that much."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = False
        for proc in agents.values():
            lines = [o for _, o in proc.json_lines(0)]
            ended = proc.finished or any(o.get("event") in ("done", "error") for o in lines)
            progress = [o for o in lines if o.get("event") == "progress"]
            if not ended and (progress[-1].get("bytes", 0) if progress else 0) < need:
                waiting = True
        if not waiting:
            break
        time.sleep(0.02)
    sender.kill()


def run_fetch(
    lab: Lab,
    work: Path,
    first: Package,
    rate_bps: int,
    *,
    packages: int,
    max_sessions: int,
    kill_sender_at: float | None,
    timeout: float,
    keep_going: bool,
    source_rate_bps: int | None = None,
) -> dict[str, Any]:
    cli = [PY, "-m", "mcast.cli"]
    key, www = work / "lab.key", work / "www"
    pub = Path(f"{key}.pub")
    # as the server does it: every package has its own data key, the site one discovery key
    site_key = work / "site.key"
    site_key.write_text(os.urandom(32).hex())
    rate = format_rate(rate_bps)
    pkgs, snaps, urls, hashes, keys = [], [], [], [], []
    size = first.files[BIG_NAME][0]  # the payload; make_package adds the small files
    for p in range(packages):  # package 0 is the one bench.lab already made
        pkg = first if p == 0 else make_package(work / f"pkg{p}", size)
        snap_path = work / f"snapshot{p}.xml"
        lab.exec("h0", [*cli, "snapshot", str(pkg.root), "-o", str(snap_path), "--key", str(key),
                        "--name", f"package{p}"], timeout=max(120, size / 20e6))  # fmt: skip
        snap = parse_snapshot_xml(snap_path.read_bytes())
        where = www / "pkg" / snap.package_hash_hex
        where.mkdir(parents=True)
        with open(where / "content", "wb") as out:  # the codebase's concatenated package
            for f in snap.files:
                out.write((pkg.root / f.path).read_bytes())
        pkgs.append(pkg)
        snaps.append(snap_path)
        keys.append(work / f"package{p}.key")
        keys[-1].write_text(os.urandom(32).hex())
        hashes.append(snap.package_hash_hex)
        urls.append(f"http://{lab.addr('h0')}:{CODEBASE_PORT}/pkg/{snap.package_hash_hex}/")
    if source_rate_bps:  # the codebase behind a slow link: a master streams what it gets
        lab.limit_uplink("h0", source_rate_bps)
    server = lab.popen("h0", [PY, "-m", "bench.http_serve", "--root", str(www),
                              "--bind", lab.addr("h0"), "--port", str(CODEBASE_PORT)])  # fmt: skip
    observer = lab.popen("h0", [*cli, "sessions", "--json", "--interface", lab.addr("h0"),
                                "--discovery-key-file", str(site_key)])  # fmt: skip
    sender: Proc | None = None
    try:
        if server.wait_json(lambda o: o.get("event") == "ready", 20) is None:
            raise RuntimeError(f"codebase server did not start: {server.describe()}")
        # the observer listens before any session can start, so it hears them all
        if observer.wait_json(lambda o: o.get("event") == "listening", 60) is None:
            raise RuntimeError(f"session observer did not start: {observer.describe()}")
        before = lab.link_stats("h0")
        # Every agent loads first and says ready; they ask at one moment, on "go" (as the
        # HTTP clients and the sender of bench.lab do), so that start-up times, which vary
        # by seconds on a loaded machine, decide nothing.
        agents: dict[str, Proc] = {}
        for i, host in enumerate(lab.receiver_hosts):
            p = i % packages
            out = work / host
            args = ["fetch", "--snapshot", str(snaps[p]), "--trust-key", str(pub),
                    "--out", str(out), "--codebase", urls[p], "--interface", lab.addr(host),
                    "--max-sessions", str(max_sessions), "--session-key-file", str(keys[p]),
                    "--discovery-key-file", str(site_key), "--rate", rate, "--linger", "1",
                    "--json"]  # fmt: skip
            if kill_sender_at is not None:
                args += ["--tries", "1"]  # after the killed session: straight to HTTP
            agents[host] = lab.popen(host, [PY, "-c", _READY_THEN_RUN, *args], stdin=True)
        for host, proc in agents.items():
            if proc.wait_json(lambda o: o.get("event") == "ready", 60) is None:
                raise RuntimeError(f"agent on {host} did not start: {proc.describe()}")
        if kill_sender_at is not None:
            send = [*cli, "send", str(pkgs[0].root), "--snapshot", str(snaps[0]),
                    "--trust-key", str(pub), "--interface", lab.addr("h0"),
                    "--group", KILLED_GROUP, "--rate", rate,
                    "--session-key-file", str(keys[0]), "--discovery-key-file", str(site_key),
                    "--json"]  # fmt: skip
            sender = lab.popen("h0", send)
            # its session is on the discovery group before the agents ask, so they join it
            killed_hash = hashes[0]
            if observer.wait_json(lambda o: o.get("event") == "announce" and not o["claiming"]
                                  and o["hash"] == killed_hash, 60) is None:  # fmt: skip
                raise RuntimeError(f"the sender to kill never announced: {sender.describe()}")
        t0 = time.monotonic()
        rest = list(agents)
        if kill_sender_at is None:
            # The first agent opens the subnet's first session alone; once it is announced,
            # the others ask at one moment: they join it, or wait for a slot and then race
            # for it among themselves (claims settle who masters).
            first = rest.pop(0)
            agents[first].send("go\n")
            if observer.wait_json(lambda o: o.get("event") == "announce" and not o["claiming"],
                                  60) is None:  # fmt: skip
                raise RuntimeError(f"the first agent never announced: {agents[first].describe()}")
        for host in rest:
            agents[host].send("go\n")
        if sender is not None and kill_sender_at is not None:
            _kill_when_received(sender, agents, kill_sender_at * pkgs[0].total, timeout)
        finals = wait_all(agents, lambda o: o.get("event") in ("done", "error"),
                           time.monotonic() + timeout, keep_going)  # fmt: skip
        t_end = max((f[0] for f in finals.values() if f), default=None)
        after = lab.link_stats("h0")  # h0 serves HTTP (and the killed session): what it sent
        _wait_sessions_over(observer, time.monotonic() + 60)
    finally:
        for proc in (observer, server, sender):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.kill()
    per = []
    for i, (host, proc) in enumerate(agents.items()):
        final = finals.get(host)
        obj = final[1] if final else {}
        ok = bool(final) and obj.get("event") == "done"
        files_ok = ok and check_tree(work / host, pkgs[i % packages])
        entry = {
            "host": host, "package": i % packages, "completed": ok,
            "files_ok": files_ok,
            "verified": receiver_verified(obj if final else None, files_ok),
            "done_after_s": round(final[0] - t0, 3) if final else None,
            **{k: obj.get(k) for k in ("route", "bytes_multicast", "bytes_http",
                                       "sessions_tried", "notes", "peak_rss_mb", "wall_s")},
        }  # fmt: skip
        if not ok:
            entry["error"] = obj.get("error") or proc.describe()
        per.append(entry)
    seen = _observed(observer)
    total = pkgs[0].total
    http = [e["bytes_http"] or 0 for e in per]
    return {
        "per_receiver": per,
        "t0": t0,
        "t_end": t_end,
        "packages": packages,
        "max_sessions_per_subnet": max_sessions,
        "max_live_sessions": max_live_sessions(seen),
        "sessions": len({sid for _, sid, c in seen if c is False}),
        "http_bytes_total": sum(http),
        "http_fraction_max": round(max(http, default=0) / total, 4) if total else None,
        "multicast_bytes_total": sum(e["bytes_multicast"] or 0 for e in per),
        "kill_sender_at": kill_sender_at,
        "sender_tx_bytes": after["tx_bytes"] - before["tx_bytes"],
        "sender_tx_packets": after["tx_packets"] - before["tx_packets"],
        "source_rate_bps": source_rate_bps,
    }
