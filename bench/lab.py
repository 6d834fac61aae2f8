"""The namespace lab benchmark: one distribution across a lab LAN, measured, then torn down.

Builds the lab of :mod:`bench.labnet` (h0 sends, h1..hN receive; tbf rate; nftables loss),
generates a random package (one big file plus two small ones) in a temp dir, moves it to every
receiver in one of two modes and prints ONE JSON object:

* ``http``: the unicast baseline. h0 runs :mod:`bench.http_serve`; every receiver runs
  :mod:`bench.http_get` at the same moment; each download's sha256 is checked against the
  source.
* ``multicast``: the engine. ``mcast.cli snapshot`` signs the package, every receiver runs
  ``mcast.cli recv`` (started first; the lab waits until each has joined the group, seen in
  ``ip maddr``), then h0 runs ``mcast.cli send``; ``wall_s`` is from the sender's start to
  the last receiver's ``done`` line. ``--restart-sender-at F``: the sender is SIGKILLed once
  every receiver reports F of the package verified (their JSON progress lines) and a new one
  starts 1 s later; each receiver's entry says what it kept (``units_kept``) and how many
  sessions it followed (``sessions_followed``), and ``restart`` when and where the kill fell.
  ``--rogue-replay RATE``: a rogue host (:mod:`bench.rogue`, in its own namespace) records
  the session and replays it with forged sources at RATE datagrams/s while the receivers run;
  ``rogue`` reports what it heard and sent (``--rogue-record`` / ``--rogue-replay-file`` keep
  a recording and replay one of an earlier run; with ``--package-dir DIR`` both runs send
  the same package version, snapshot and session key, so the earlier session's ANNOUNCE is
  one the receivers can authenticate).

Every figure is observed: a receiver is ``verified`` only if its last JSON line is ``done``
with ``complete: true`` (HTTP: the whole body) and the lab itself re-hashes its files equal
on disk (``files_ok``); sender bytes are h0's eth0 counters.

    python -m bench.lab --receivers 8 --size 64M --rate 100mbit --loss 2 --mode http

Exit status 0 when every receiver completed and verified, 1 otherwise, 2 on bad arguments.
Without ``--keep-going`` the run stops at the first failed receiver; with it the lab waits
for all of them and reports each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.lab_fetch import run_fetch
from bench.labnet import (
    Lab,
    LabError,
    Proc,
    cleanup_stale,
    pid_alive,
    run,
    wait_all,
)
from bench.labpkg import (
    BIG_NAME,
    Package,
    check_tree,
    kept_package,
    make_package,
    receiver_verified,
    sha256_file,
)
from bench.pyc import compile_engine
from mcast.udp import DISCOVERY_GROUP, DISCOVERY_PORT
from mcast.units import format_rate, parse_rate, parse_size

PY = sys.executable
HTTP_PORT = 8080
MCAST_GROUP = "239.255.77.1"
MCAST_PORT = 47000
WORKDIR_PREFIX = "mcast-lab-"
RESTART_DELAY_S = 1.0  # --restart-sender-at: the sender host is back this long after the kill
RESTART_RECV_TIMEOUT = "2"  # ... and its receivers judge it dead after this much silence


# ---------------------------------------------------------------- helpers

def cleanup_stale_workdirs(parent: str | None = None) -> list[str]:
    """Remove temp dirs of crashed runs (``mcast-lab-<pid>-*`` whose pid is dead)."""
    removed = []
    base = Path(parent or tempfile.gettempdir())
    for path in base.glob(f"{WORKDIR_PREFIX}*-*"):
        pid = path.name[len(WORKDIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and path.is_dir() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


DEFAULT_MCAST_CMD = (PY, "-m", "mcast.cli")
# On a real LAN every receiver has its own CPU; here nine hosts share two cores. Receivers run
# at a lower CPU priority so that they do not take the sender's time slices, as they could
# not on separate machines (set MCAST_LAB_RECEIVER_NICE=0 to compare).
RECEIVER_NICE = ("nice", "-n", os.environ.get("MCAST_LAB_RECEIVER_NICE", "10"))


def mcast_cli_has_send() -> tuple[bool, str]:
    """(True, "") when ``mcast.cli`` exists and offers ``send``; else (False, reason)."""
    import importlib.util

    try:
        if importlib.util.find_spec("mcast.cli") is None:
            return False, "mcast.cli does not exist yet"
    except ImportError as exc:
        return False, f"mcast.cli not importable: {exc}"
    proc = run([PY, "-m", "mcast.cli", "send", "--help"], check=False)
    if proc.returncode != 0 or "--snapshot" not in proc.stdout:
        return False, "mcast.cli has no 'send' subcommand (with --snapshot) yet"
    return True, ""


def _receiver_entry(lab: Lab, host: str, proc: Proc, final: tuple[float, dict[str, Any]] | None,
                    t0: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"host": host, "addr": lab.addr(host)}
    obj = final[1] if final else {}
    entry["completed"] = bool(final) and obj.get("event") == "done"
    entry["done_after_s"] = round(final[0] - t0, 4) if final else None
    for key in ("bytes", "wall_s", "peak_rss_mb", "complete", "sha256", "status", "timeline",
                "naks_sent", "repairs", "bad_packets", "verify_failures", "reason",
                "authenticated", "units_kept", "sessions_followed", "units_total"):
        if key in obj:
            entry[key] = obj[key]
    if not entry["completed"]:
        entry["error"] = obj.get("error") or proc.describe()
    with contextlib.suppress(LabError, OSError):
        entry["nft_dropped"] = lab.nft_dropped(host)
        entry["rx_bytes"] = lab.link_stats(host)["rx_bytes"]
    return entry


# ---------------------------------------------------------------- modes

def run_http(lab: Lab, pkg: Package, work: Path, timeout: float,
             keep_going: bool) -> dict[str, Any]:
    server = lab.popen("h0", [PY, "-m", "bench.http_serve", "--root", str(pkg.root),
                              "--bind", lab.addr("h0"), "--port", str(HTTP_PORT)])
    if server.wait_json(lambda o: o.get("event") == "ready", 20) is None:
        raise LabError(f"http server did not start: {server.describe()}")
    url = f"http://{lab.addr('h0')}:{HTTP_PORT}/{BIG_NAME}"
    clients: dict[str, Proc] = {}
    for host in lab.receiver_hosts:
        out = work / host
        out.mkdir()
        clients[host] = lab.popen(host, [*RECEIVER_NICE, PY, "-m", "bench.http_get", url, "--out",
                                         str(out / BIG_NAME), "--wait-go"], stdin=True)
    for host, proc in clients.items():
        if proc.wait_json(lambda o: o.get("event") == "ready", 60) is None:
            raise LabError(f"http client on {host} did not start: {proc.describe()}")
    before = lab.link_stats("h0")
    t0 = time.monotonic()
    for proc in clients.values():
        proc.send("go\n")
    finals = wait_all(clients, lambda o: o.get("event") in ("done", "error"),
                       t0 + timeout, keep_going)
    after = lab.link_stats("h0")
    size, sha = pkg.files[BIG_NAME]
    per = []
    for host, proc in clients.items():
        entry = _receiver_entry(lab, host, proc, finals.get(host), t0)
        path = work / host / BIG_NAME  # re-hashed on disk, not taken from the client's report
        entry["files_ok"] = entry["completed"] and path.is_file() and sha256_file(path) == sha
        entry["verified"] = entry["files_ok"] and entry.get("bytes") == size
        per.append(entry)
    done_times = [f[0] for f in finals.values() if f and f[1].get("event") == "done"]
    return {"per_receiver": per, "t_end": max(done_times, default=None),
            "t0": t0, "sender_tx_bytes": after["tx_bytes"] - before["tx_bytes"],
            "sender_tx_packets": after["tx_packets"] - before["tx_packets"]}


def _progress_at_least(proc: Proc, fraction: float) -> bool:
    """Whether a receiver's JSON lines show ``fraction`` of the package verified (or done)."""
    for _, obj in reversed(proc.json_lines()):
        if obj.get("event") == "done":
            return True
        if obj.get("event") == "progress" and obj.get("total"):
            return bool(obj["units"] >= fraction * obj["total"])
    return False


def _restart_sender(lab: Lab, receivers: dict[str, Proc], sender: Proc, argv: list[str],
                    fraction: float, deadline: float) -> tuple[Proc, dict[str, Any]]:
    """SIGKILL ``sender`` once every receiver reports ``fraction`` verified, and start a new
    one (``argv``) RESTART_DELAY_S later: the scenario of a sender host that reboots."""
    while not all(_progress_at_least(p, fraction) for p in receivers.values()):
        if time.monotonic() > deadline or any(p.finished for p in receivers.values()):
            raise LabError(f"receivers did not reach {fraction:.0%} before the restart: "
                           f"{[p.last_json() for p in receivers.values()]}")
        time.sleep(0.02)
    seen = {h: p.last_json() for h, p in receivers.items()}
    at = {h: round(o[1]["units"] / o[1]["total"], 4) if o and "units" in o[1] else 1.0
          for h, o in seen.items()}
    sender.kill()  # SIGKILL: no END, the receivers see the session fall silent
    killed = time.monotonic()
    time.sleep(RESTART_DELAY_S)  # the scenario's gap, not a wait for anything
    new = lab.popen("h0", argv)
    return new, {"fraction": fraction, "progress_at_kill": at, "delay_s": RESTART_DELAY_S,
                 "kill_t": killed}


@dataclass(frozen=True)
class RoguePlan:
    """A rogue host replaying the session (bench.rogue): its rate and recording files."""

    rate: float = 3000.0
    record: Path | None = None  # keep what it heard here (for a later --rogue-replay-file)
    replay_file: Path | None = None  # also replay a recording of an earlier run
    control_share: float = 0.5  # fraction of replays that are control messages
    garbage: bool = False  # send the same bytes with a broken tag: the bandwidth alone


ROGUE_HOST = "rogue"
CROSS_PORT = 8081
CROSS_HOST = "h1"  # downloads over the same bottleneck (h0's uplink) the session uses


@dataclass(frozen=True)
class CrossPlan:
    """A bulk TCP download (curl, bench.cross_traffic) from h0 to h1 during the session."""

    size: int  # bytes it downloads (a sparse file on h0: read as zeros, no disk)
    # after the session's go: its receivers first see the link idle. Negative: the download
    # runs that long before the session starts (LEDBAT's latecomer case, see DESIGN.md)
    delay_s: float = 1.0


def _start_cross(lab: Lab, plan: CrossPlan, work: Path) -> tuple[Proc, Proc]:
    root = work / "cross"
    root.mkdir()
    with open(root / "big.bin", "wb") as f:
        f.truncate(plan.size)
    server = lab.popen("h0", [PY, "-m", "bench.http_serve", "--root", str(root),
                              "--bind", lab.addr("h0"), "--port", str(CROSS_PORT)])
    if server.wait_json(lambda o: o.get("event") == "ready", 20) is None:
        raise LabError(f"cross-traffic server did not start: {server.describe()}")
    url = f"http://{lab.addr('h0')}:{CROSS_PORT}/big.bin"
    client = lab.popen(CROSS_HOST, [PY, "-m", "bench.cross_traffic", url, "--delay",
                                    str(max(0.0, plan.delay_s))], stdin=True)
    if client.wait_json(lambda o: o.get("event") == "ready", 20) is None:
        raise LabError(f"cross-traffic client did not start: {client.describe()}")
    return server, client


def _bytes_at(lines: list[tuple[float, dict[str, Any]]], t: float) -> float:
    """The download's byte count at time ``t``, interpolated between its progress lines."""
    prev = (lines[0][0], 0.0)
    for when, obj in lines:
        got = float(obj.get("bytes", 0))
        if when >= t:
            if when == prev[0]:
                return got
            return prev[1] + (got - prev[1]) * (t - prev[0]) / (when - prev[0])
        prev = (when, got)
    return prev[1]


def _cross_report(client: Proc, plan: CrossPlan, t0: float, t_end: float | None,
                  rate_bps: int) -> dict[str, Any]:
    """What the download got while the session ran: bytes over the overlap of the two (from
    the download's start to the session's end, or to the download's, whichever is first)."""
    if client.popen.poll() is None:
        client.popen.send_signal(signal.SIGTERM)
    client.wait_json(lambda o: o.get("event") == "done", 30)
    info = cross_share(client.json_lines(), plan, t_end, rate_bps, t0=t0)
    if info.get("error"):
        info["error"] = client.describe()
    return info


def cross_share(json_lines: list[tuple[float, dict[str, Any]]], plan: CrossPlan,
                t_end: float | None, rate_bps: int, *, t0: float = -math.inf) -> dict[str, Any]:
    """The download's figures from its timestamped JSON lines (see :func:`_cross_report`);
    ``t0`` is the session's start (a download that began earlier counts from there)."""
    lines = [(t, o) for t, o in json_lines if o.get("event") in ("started", "progress", "done")]
    info: dict[str, Any] = {"size": plan.size, "delay_s": plan.delay_s}
    started = next((t for t, o in lines if o["event"] == "started"), None)
    done = next(((t, o) for t, o in lines if o["event"] == "done"), None)
    if started is None or t_end is None:
        return {**info, "error": "the download or the session did not run"}
    finished = done is not None and not done[1].get("stopped") and done[1]["bytes"] >= plan.size
    stop = min(t_end, done[0]) if finished and done is not None else t_end
    begin = max(started, t0)
    window = stop - begin
    got = _bytes_at(lines, stop) - _bytes_at(lines, begin)
    mbps = got * 8 / window / 1e6 if window > 0 else 0.0
    info.update(window_s=round(window, 3), bytes_in_window=int(got),
                mbit_s=round(mbps, 2),
                share_of_link=round(mbps * 1e6 / rate_bps, 3) if rate_bps else None,
                download_finished=finished,
                download_s=round(done[0] - started, 3) if finished and done else None,
                bytes_total=done[1]["bytes"] if done else None)
    return info


def _start_rogue(lab: Lab, plan: RoguePlan) -> Proc:
    """The rogue in its own namespace, joined to the data and discovery groups."""
    argv = [PY, "-m", "bench.rogue", "--interface", lab.addr(ROGUE_HOST),
            "--listen", f"{MCAST_GROUP}:{MCAST_PORT}",
            "--listen", f"{DISCOVERY_GROUP}:{DISCOVERY_PORT}", "--rate", str(plan.rate)]
    if plan.record is not None:
        argv += ["--record", str(plan.record)]
    if plan.replay_file is not None:
        argv += ["--replay-file", str(plan.replay_file)]
    argv += ["--control-share", str(plan.control_share)] + (["--garbage"] if plan.garbage else [])
    rogue = lab.popen(ROGUE_HOST, argv)
    if rogue.wait_json(lambda o: o.get("event") == "listening", 60) is None:
        raise LabError(f"rogue did not start: {rogue.describe()}")
    return rogue


def _stop_rogue(rogue: Proc) -> dict[str, Any]:
    """SIGTERM the rogue and return its summary (what it heard and sent)."""
    if rogue.popen.poll() is None:
        rogue.popen.send_signal(signal.SIGTERM)
    got = rogue.wait_json(lambda o: o.get("event") == "done", 30)
    rogue.kill()
    return got[1] if got else {"error": rogue.describe()}


def run_multicast(lab: Lab, pkg: Package, work: Path, timeout: float, keep_going: bool,
                  sender_rate: str | None,
                  mcast_cmd: Sequence[str] | None = None,
                  restart_sender_at: float | None = None,
                  rogue_plan: RoguePlan | None = None,
                  yield_bandwidth: bool = False,
                  cross: CrossPlan | None = None) -> dict[str, Any]:
    """The engine run via its CLI contract (``mcast_cmd`` replaces ``python -m mcast.cli``).

    With ``restart_sender_at`` the sender is SIGKILLed once every receiver has verified that
    fraction and started again a second later; the receivers follow the new session with
    what they kept (a shorter silence timeout, ``RESTART_RECV_TIMEOUT``, lets them notice).
    With ``rogue_plan`` a rogue host (bench.rogue) joins the groups before the sender starts
    and replays what it hears, with forged sources, until every receiver is done. With
    ``yield_bandwidth`` the sender runs with ``--yield``; with ``cross`` a bulk TCP download
    from h0 to h1 starts ``cross.delay_s`` after the sender's go and shares h0's uplink."""
    if mcast_cmd is None:
        ok, why = mcast_cli_has_send()
        if not ok:
            raise LabError(f"multicast mode unavailable: {why}")
    cli = list(mcast_cmd or DEFAULT_MCAST_CMD)
    home = pkg.root.parent  # the run's temp dir, or a package dir kept across runs
    snap, key = home / "snapshot.xml", home / "lab.key"
    if not snap.is_file():  # a kept package keeps its snapshot, signing key and session key
        # In h0: the snapshot step needs no network, and in a lab host it could not reach any.
        lab.exec("h0", [*cli, "snapshot", str(pkg.root), "-o", str(snap),
                        "--key", str(key)], timeout=max(120, pkg.total / 20e6))
    pub = key.with_name(key.name + ".pub")
    session_key = home / "session.key"  # the HMAC key every datagram of the session carries
    if not session_key.is_file():
        session_key.write_text(os.urandom(32).hex())
    common = ["--snapshot", str(snap), "--group", MCAST_GROUP, "--port", str(MCAST_PORT),
              "--session-key-file", str(session_key), "--json"]
    receivers: dict[str, Proc] = {}
    silence = ["--timeout", RESTART_RECV_TIMEOUT] if restart_sender_at is not None else []
    for host in lab.receiver_hosts:
        out = work / host
        out.mkdir()
        receivers[host] = lab.popen(host, [*RECEIVER_NICE, *cli, "recv", "--trust-key",
                                           str(pub), "--out", str(out), "--interface",
                                           lab.addr(host), *silence, *common])
    failed = _wait_joined(lab, receivers, MCAST_GROUP, 60)
    active = {h: p for h, p in receivers.items() if h not in failed}
    rate = ["--rate", sender_rate] if sender_rate else []
    before = lab.link_stats("h0")
    t0 = time.monotonic()
    sender: Proc | None = None
    rogue: Proc | None = None
    rogue_info: dict[str, Any] | None = None
    cross_procs: tuple[Proc, Proc] | None = None
    cross_info: dict[str, Any] | None = None
    restart: dict[str, Any] | None = None
    finals: dict[str, tuple[float, dict[str, Any]] | None] = {}
    startup_s = None
    if active and (keep_going or not failed):
        # Like the HTTP baseline (server up, clients started on "go"), the sender loads first
        # and the clock starts at "go"; its start-up time is reported on its own.
        send_argv = [*cli, "send", str(pkg.root), "--trust-key", str(pub),
                     "--interface", lab.addr("h0"), *rate, *common,
                     *(["--yield"] if yield_bandwidth else [])]
        if cross is not None:
            cross_procs = _start_cross(lab, cross, work)
        if rogue_plan is not None:
            rogue = _start_rogue(lab, rogue_plan)  # it hears the session from its first datagram
        sender = lab.popen("h0", [*send_argv, "--wait-go"], stdin=True)
        if sender.wait_json(lambda o: o.get("event") in ("ready", "error"), 60) is None:
            raise LabError(f"sender did not start: {sender.describe()}")
        startup_s = round(time.monotonic() - t0, 3)
        before = lab.link_stats("h0")
        t0 = time.monotonic()
        if cross_procs is not None and cross is not None and cross.delay_s < 0:
            cross_procs[1].send("go\n")  # a download already running when the session starts
            cross_procs[1].wait_json(lambda o: o.get("event") == "started", 20)
            time.sleep(-cross.delay_s)
            t0 = time.monotonic()
        sender.send("go\n")
        if cross_procs is not None and cross is not None and cross.delay_s >= 0:
            cross_procs[1].send("go\n")
        if restart_sender_at is not None:
            sender, restart = _restart_sender(lab, active, sender, send_argv, restart_sender_at,
                                              t0 + timeout)
            restart["kill_after_s"] = round(restart.pop("kill_t") - t0, 3)
        finals = wait_all(active, lambda o: o.get("event") == "done", t0 + timeout,
                           keep_going)
        if rogue is not None:  # the transfer is over: so is the attack on it
            rogue_info = _stop_rogue(rogue)
        if cross is not None and cross_procs is not None:
            done_at = [f[0] for f in finals.values() if f]
            t_last = max(done_at) if len(done_at) == len(active) else None
            cross_info = _cross_report(cross_procs[1], cross, t0, t_last, lab.rate_bps or 0)
            cross_info["sender_timeline"] = [  # (s after go, Mbit/s paced, worst delay ms)
                (round(t - t0, 2), round(o.get("rate_bps", 0) / 1e6, 1), o.get("qdelay_ms"))
                for t, o in sender.json_lines() if o.get("event") == "progress"]
        if len(finals) == len(active) and all(finals.values()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                sender.wait(timeout=30)  # it exits by itself once every receiver is done
        sender.kill()  # a failed run: do not wait out its linger
    if rogue is not None and rogue_info is None:
        rogue_info = _stop_rogue(rogue)
    after = lab.link_stats("h0")
    per = []
    for host, proc in receivers.items():
        final = finals.get(host)
        entry = _receiver_entry(lab, host, proc, final, t0)
        entry["files_ok"] = entry["completed"] and check_tree(work / host, pkg)
        entry["verified"] = receiver_verified(final[1] if final else None, entry["files_ok"])
        per.append(entry)
    done_times = [f[0] for f in finals.values() if f]
    if sender is None:
        sender_info: dict[str, Any] = {"error": f"not started: receivers failed {failed}"}
    else:
        last = sender.last_json()
        sender_info = last[1] if last else {"error": sender.describe()}
    return {"per_receiver": per, "t_end": max(done_times, default=None),
            "t0": t0, "sender_tx_bytes": after["tx_bytes"] - before["tx_bytes"],
            "sender_tx_packets": after["tx_packets"] - before["tx_packets"],
            "sender": sender_info, "sender_rc": sender.popen.poll() if sender else None,
            "sender_startup_s": startup_s,
            **({"restart": restart} if restart_sender_at is not None else {}),
            **({"rogue": rogue_info} if rogue_plan is not None else {}),
            **({"cross_traffic": cross_info} if cross is not None else {})}


def _wait_joined(lab: Lab, receivers: dict[str, Proc], group: str, timeout: float) -> set[str]:
    """Wait until every receiver's eth0 has joined ``group`` (its IGMP membership is visible).

    Returns the receivers that failed instead: exited, or still not joined at the timeout.
    """
    deadline = time.monotonic() + timeout
    pending, failed = set(receivers), set()
    while pending:
        for host in sorted(pending):
            if receivers[host].popen.poll() is not None:
                pending.discard(host)
                failed.add(host)
                continue
            out = lab.exec(host, ["ip", "maddr", "show", "dev", "eth0"], check=False).stdout
            if group in out:
                pending.discard(host)
        if pending and time.monotonic() > deadline:
            return failed | pending
        if pending:
            time.sleep(0.05)
    return failed


# ---------------------------------------------------------------- one run

def run_lab(receivers: int, size: int, rate_bps: int, loss: float, mode: str, *,
            keep_going: bool = False, timeout: float | None = None,
            workdir: str | None = None, sender_rate: str | None = None,
            loss_proto: str = "udp",
            mcast_cmd: Sequence[str] | None = None,
            packages: int = 2, max_sessions: int = 1,
            kill_sender_at: float | None = None,
            source_rate_bps: int | None = None,
            restart_sender_at: float | None = None,
            rogue: RoguePlan | None = None,
            package_dir: Path | None = None,
            yield_bandwidth: bool = False,
            cross: CrossPlan | None = None) -> dict[str, Any]:
    """Build the lab, run one distribution, tear everything down; return the report dict."""
    line_rate_s = size * 8 / rate_bps if rate_bps else None
    if timeout is None:
        copies = receivers if mode == "http" else 1
        timeout = 60 + 5 * (line_rate_s or size * 8 / 1e9) * copies
    if sender_rate is None:  # the engine paces to the link; with no link limit, it finds one
        sender_rate = format_rate(rate_bps)
    work = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=workdir))
    try:
        t_gen = time.monotonic()
        if package_dir is not None:
            package_dir.mkdir(parents=True, exist_ok=True)
            pkg = kept_package(package_dir / "pkg", size)
        else:
            pkg = make_package(work / "pkg", size)
        gen_s = time.monotonic() - t_gen
        extra = (ROGUE_HOST,) if rogue is not None else ()
        with Lab(receivers=receivers, rate_bps=rate_bps, loss=loss,
                 loss_proto=loss_proto, extra_hosts=extra) as lab:
            if mode == "http":
                res = run_http(lab, pkg, work, timeout, keep_going)
            elif mode == "fetch":
                res = run_fetch(lab, work, pkg, rate_bps, packages=packages,
                                max_sessions=max_sessions, kill_sender_at=kill_sender_at,
                                timeout=timeout * packages, keep_going=keep_going,
                                source_rate_bps=source_rate_bps)
            else:
                res = run_multicast(lab, pkg, work, timeout, keep_going, sender_rate,
                                    mcast_cmd, restart_sender_at=restart_sender_at,
                                    rogue_plan=rogue, yield_bandwidth=yield_bandwidth,
                                    cross=cross)
        leftovers = lab.leftovers()  # after close: must be empty
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per = res.pop("per_receiver")
    t0, t_end = res.pop("t0"), res.pop("t_end")
    completed = len(per) == receivers and all(p["completed"] for p in per)
    verified = completed and all(p.get("verified") for p in per)
    wall_s = round(t_end - t0, 4) if t_end is not None and completed else None
    ratio = round(wall_s / line_rate_s, 3) if wall_s and line_rate_s else None
    rss = [p["peak_rss_mb"] for p in per if isinstance(p.get("peak_rss_mb"), int | float)]
    report = {
        "mode": mode, "receivers": receivers, "size": size, "package_bytes": pkg.total,
        "rate_bps": rate_bps, "loss": loss, "loss_proto": loss_proto,
        "completed": completed, "verified": verified,
        "completed_count": sum(bool(p["completed"]) for p in per),
        "verified_count": sum(bool(p.get("verified")) for p in per),
        "wall_s": wall_s,
        "line_rate_s": round(line_rate_s, 4) if line_rate_s else None,
        "ratio": ratio,
        "sender_tx_bytes": res.pop("sender_tx_bytes"),
        "sender_tx_packets": res.pop("sender_tx_packets"),
        "peak_rss_mb": max(rss, default=None),
        "generate_s": round(gen_s, 3),
        "timeout_s": round(timeout, 1),
        "lab_leftovers": leftovers,
        **res,
        "per_receiver": per,
    }
    report["sender_tx_copies"] = round(report["sender_tx_bytes"] / max(1, size), 3)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.lab",
        description="Run one package distribution across a network-namespace lab LAN.")
    ap.add_argument("--receivers", type=int, default=3)
    ap.add_argument("--size", type=parse_size, default="16M",
                    help="package size, binary units: 4096, 512K, 64M, 1G")
    ap.add_argument("--rate", type=parse_rate, default="100mbit",
                    help="link rate (tc tbf): 100mbit, 1gbit; 0 = not shaped")
    ap.add_argument("--loss", type=float, default=0.0, help="percent of UDP dropped per receiver")
    ap.add_argument("--loss-proto", default="udp", choices=["udp", "tcp", "all"],
                    help="which incoming packets the loss applies to (default udp)")
    ap.add_argument("--mode", choices=["multicast", "http", "fetch"], default="multicast",
                    help="fetch: agents discover/start sessions, HTTP fallback (bench.lab_fetch)")
    ap.add_argument("--packages", type=int, default=2, help="fetch mode: distinct packages")
    ap.add_argument("--max-sessions", type=int, default=1,
                    help="fetch mode: sessions allowed per subnet")
    ap.add_argument("--kill-sender-at", type=float, default=None,
                    help="fetch mode: SIGKILL an 'mcast send' of package 0 once every agent"
                         " has verified this fraction")
    ap.add_argument("--source-rate", type=parse_rate, default=None,
                    help="fetch mode: the codebase's uplink (a slow WAN behind the master)")
    ap.add_argument("--restart-sender-at", type=float, default=None, metavar="FRACTION",
                    help="multicast mode: SIGKILL the sender once every receiver has verified"
                         " this fraction, start a new one 1 s later")
    ap.add_argument("--rogue-replay", type=float, default=None, metavar="RATE",
                    help="multicast mode: a rogue host records the session and replays it with"
                         " forged sources at RATE datagrams/s (bench.rogue)")
    ap.add_argument("--rogue-record", type=Path, default=None, metavar="FILE",
                    help="the rogue keeps what it heard in FILE")
    ap.add_argument("--rogue-replay-file", type=Path, default=None, metavar="FILE",
                    help="the rogue also replays FILE, a recording of an earlier run")
    ap.add_argument("--rogue-control-share", type=float, default=0.5, metavar="F",
                    help="fraction of the rogue's replays that are control messages")
    ap.add_argument("--rogue-garbage", action="store_true",
                    help="the rogue inverts each replay's tag: the same bytes, never authentic"
                         " (the control run: what the bandwidth alone costs)")
    ap.add_argument("--package-dir", type=Path, default=None, metavar="DIR",
                    help="multicast mode: keep the package, its snapshot and keys in DIR and"
                         " reuse them next time (the same package version across runs)")
    ap.add_argument("--yield", dest="yield_bandwidth", action="store_true",
                    help="multicast mode: the sender backs off for other traffic (mcast send"
                         " --yield)")
    ap.add_argument("--cross-traffic", nargs="?", const="256M", default=None, type=parse_size,
                    metavar="SIZE",
                    help="multicast mode: curl on h1 downloads SIZE (default 256M) over HTTP"
                         " from h0, through the session's bottleneck, starting 1 s after the"
                         " session; the report says what share of the link it got meanwhile")
    ap.add_argument("--cross-delay", type=float, default=1.0, metavar="S",
                    help="the download starts S seconds after the session (negative: S seconds"
                         " before it)")
    ap.add_argument("--keep-going", action="store_true",
                    help="wait for every receiver even after one failed")
    ap.add_argument("--timeout", type=float, default=None, help="seconds (default from size/rate)")
    ap.add_argument("--sender-rate", default=None, help="multicast --rate (default: the link rate)")
    ap.add_argument("--mcast-cmd", default=None,
                    help="engine CLI command (default: 'python -m mcast.cli')")
    ap.add_argument("--workdir", default=None, help="where the temp package dir goes")
    ap.add_argument("--json", action="store_true", help="compact one-line JSON")
    args = ap.parse_args(argv)
    size, rate_bps = args.size, args.rate
    if not 0 <= args.loss <= 100:
        ap.error("--loss is a percentage, 0..100")
    rogue = None
    if args.rogue_replay is not None or args.rogue_record or args.rogue_replay_file:
        if args.mode != "multicast":
            ap.error("the rogue options are multicast-mode scenarios")
        rate = args.rogue_replay if args.rogue_replay is not None else (
            3000.0 if args.rogue_replay_file else 0.0)
        if rate < 0:
            ap.error("--rogue-replay is datagrams per second, >= 0")
        if args.rogue_replay_file is not None and not args.rogue_replay_file.is_file():
            ap.error(f"--rogue-replay-file {args.rogue_replay_file}: no such file")
        rogue = RoguePlan(rate, args.rogue_record and args.rogue_record.resolve(),
                          args.rogue_replay_file and args.rogue_replay_file.resolve(),
                          args.rogue_control_share, args.rogue_garbage)
    if (args.yield_bandwidth or args.cross_traffic) and args.mode != "multicast":
        ap.error("--yield and --cross-traffic are multicast-mode options")
    if args.package_dir is not None and args.mode != "multicast":
        ap.error("--package-dir is for multicast mode")
    if args.restart_sender_at is not None:
        if args.mode != "multicast":
            ap.error("--restart-sender-at is a multicast-mode scenario")
        if not 0 < args.restart_sender_at < 1:
            ap.error("--restart-sender-at is a fraction, 0 < FRACTION < 1")
    if os.geteuid() != 0:
        print("bench.lab needs root (network namespaces)", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited as ignored
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    stale = cleanup_stale() + cleanup_stale_workdirs(args.workdir)
    compile_engine()  # as installed: its processes do not compile our modules from source
    if stale:
        print(f"lab: removed stale {stale}", file=sys.stderr)
    try:
        report = run_lab(args.receivers, size, rate_bps, args.loss, args.mode,
                         keep_going=args.keep_going, timeout=args.timeout,
                         workdir=args.workdir, sender_rate=args.sender_rate,
                         loss_proto=args.loss_proto,
                         mcast_cmd=shlex.split(args.mcast_cmd) if args.mcast_cmd else None,
                         packages=args.packages, max_sessions=args.max_sessions,
                         kill_sender_at=args.kill_sender_at,
                         source_rate_bps=args.source_rate,
                         restart_sender_at=args.restart_sender_at, rogue=rogue,
                         package_dir=args.package_dir and args.package_dir.resolve(),
                         yield_bandwidth=args.yield_bandwidth,
                         cross=(CrossPlan(args.cross_traffic, args.cross_delay)
                                if args.cross_traffic else None))
    except KeyboardInterrupt:
        print(json.dumps({"mode": args.mode, "completed": False, "verified": False,
                          "error": "interrupted"}), flush=True)
        return 130
    except (LabError, ValueError) as exc:  # ValueError: a kept package of another size
        report = {"mode": args.mode, "receivers": args.receivers, "size": size,
                  "rate_bps": rate_bps, "loss": args.loss, "completed": False,
                  "verified": False, "error": str(exc)}
    print(json.dumps(report) if args.json else json.dumps(report, indent=2), flush=True)
    return 0 if report.get("verified") else 1


if __name__ == "__main__":
    sys.exit(main())
