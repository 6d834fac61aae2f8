"""``mcast demo``: the seed's Software Delivery flow end to end, on this machine or on the lab.

One run, everything it starts removed at the end (also on failure, Ctrl-C and SIGTERM):

1. a temp dir (``mcast-demo-<pid>-*``, kept only with ``--keep``, which also leaves there the
   JSON lines the demo read from the observer and each agent, ``*.jsonl``) holding a Notification
   Server data dir made with the server stub's Python API: a generated package (a random
   ``payload.bin`` of ``--size`` bytes and an ``install.py`` that re-hashes the payload, writes
   a marker and prints a line, so the command's exit code is real), a site owning the agents'
   subnet, Agent Settings that allow multicast (``minMulticastSize`` at most the package size,
   ``maxSessionsPerSubnet`` 1) and one task targeting N fresh computer GUIDs, signed like
   every task and run as the demo's own user (its install.py writes a marker into the agent's
   state directory, which only that user may enter); each computer is enrolled with
   ``mcast-ns computer add GUID --secret-file F`` (its secret in the work dir), and the
   server's TLS CA and certificate (``mcast-ns init --hostname``: the server's address);
2. the WAN: unless ``--wan-rate 0``, a package server (:mod:`bench.http_serve`, all its
   bodies together capped at ``--wan-rate``, default 20mbit) registered as the site's package
   server, so every HTTP byte of the package crosses one link slower than the LAN, as it does
   at a branch office; with ``--wan-rate 0`` the Notification Server serves the package;
3. ``mcast-ns serve`` as a child process (HTTPS), its URL read from its first line;
4. N agents (:mod:`bench.demo_agent`: ``mcast-agent --server URL --guid G --state DIR
   --trust-key PUB --secret-file F --ca-file CA --once --serve-cache-for SECONDS --json``,
   each its own process, signing every request with its secret, with this
   run's own discovery channel so that no other run's sessions count against the subnet's
   limit). Each agent first imports everything and says ``ready``; the demo then releases
   them: all at the same moment (``--spread 0``, the default), so they meet in one multicast
   session (one master downloads over HTTP and multicasts, the others join it), or ``--spread
   SECONDS`` apart. Each agent serves its own peer cache (:mod:`agent.cache`) after its run
   until the demo ends it with SIGTERM, so a later agent joins a session fed from a peer's disk
   instead of crossing the WAN again.
   Beside the server, ``mcast sessions --json`` listens to the discovery channel from before
   the first release to the end: the sessions the demo reports are the ones it heard;
5. with ``--kill-master-at FRACTION``: the first agent whose progress says it is a session's
   master is SIGKILLed once that session has sent FRACTION of the package (the most any of its
   receivers has verified, or the session's announced progress, whichever is more); a
   receiver takes over and the others finish;
6. live progress from the agents' JSON lines (a table redrawn in place on a terminal), then a
   table per agent: route, where its copy came from, bytes by multicast and by HTTP, payload
   verified (the demo re-hashes the agent's cached files itself), exit code of the command,
   and the status the SERVER recorded for that computer (read from its store once its event
   queue is drained).

``--json`` prints one JSON object (the summary) as the last line of stdout. Per agent
(``per_agent``): ``index``, ``guid``, ``addr``, ``released_s`` (its release, from the first),
``done_s`` (the end of the agent's run, from the first release; null if it never got there),
``route`` (master/joined/http/cached, as the agent reported it), ``session`` (the session it
joined or led, as the agent reported it with its download), ``served_from`` (derived, never
assumed: ``http`` (route http), ``master`` (it fetched over HTTP and served a session),
``session`` (it joined a session an HTTP master led), ``peer-cache`` (it joined a session the
demo heard claimed by a complete copy, i.e. served from a peer's cache), ``cache`` (it already
had the package), ``unknown`` (it joined a session the demo never heard), null for a killed
agent), ``bytes_multicast``, ``bytes_http`` (for a killed agent, the last its progress showed),
``verified``, ``exit_code``, ``agent_rc``, ``killed``, ``server_status``, ``server_exit_code``,
``server_bytes_multicast``, ``server_bytes_http``, ``cache`` (what its peer cache did, as the
agent reported it when it stopped: solicits, sessions served, claims lost, failures, error;
null if it never said), ``ok``, ``problem``, ``download_note``, ``output``, ``errors``. Totals:
``event`` (``summary``), ``mode``, ``agents``, ``package_size``, ``package_hash``,
``bytes_http_total``, ``bytes_multicast_total``, ``http_ratio`` and ``wan_copies`` (both
bytes_http_total / package_size: how many copies crossed the WAN), ``sessions`` (the distinct
session ids heard announcing data on the agents' discovery group by an ``mcast sessions
--json`` observer the demo runs beside the server; ``session_ids`` lists them, ``claims_only``
counts claims that never sent), ``cache_sessions`` (those whose claim said it held a complete
copy: a peer cache), ``cache_sessions_served`` (the sessions the agents' peer caches say they
served), ``masters`` (the agents whose route says they led a session), ``spread_s``,
``wan_rate_bps``, ``kill_master_at``, ``killed`` (indexes of agents the demo killed), ``kill``
(null without ``--kill-master-at``; else the victim's ``agent`` and ``session``, the ``sent``
and ``master_verified`` fractions at the kill, and ``missed``: why no master was killed, or
empty), ``takeover_s`` (from the kill to the first announce, its claim, of a session first
heard after the kill that went on to send; null without a kill or a takeover), ``failed``
(indexes of agents not ok, killed ones apart), ``wall_s`` (from the first release to the end of
the last agent's run), ``all_ok``, ``server_url``, ``workdir``. ``verified`` is the demo's own
re-hash of each agent's cached files.

Exit 0 only if every agent not killed on purpose verified the package, ran the command with
exit 0 and the server recorded ``succeeded`` for it (and a requested kill happened); 1
otherwise; 2 for bad arguments or a missing prerequisite (``--lab`` without root); 130 when
interrupted.

``--lab`` runs the same on the namespace lab of :mod:`bench.labnet` (100 Mbit/s links): the
server and the WAN package server in ``h0`` (198.18.0.1), agent i in host ``hi`` with that
host's address as its multicast interface, the site owning 198.18.0.0/24. Nothing else leaves
loopback or the lab.

    python -m mcast.cli demo [--agents 4] [--size 16M] [--json] [--keep] [--timeout 120]
                             [--spread SECONDS] [--kill-master-at FRACTION]
                             [--wan-rate 20mbit] [--fail-agents K] [--lab [--rate 100mbit]]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import pwd
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.labnet import Lab, LabError, Proc, child_env, lab_available
from bench.labpkg import sha256_file
from mcast.argtypes import Parser, one_line
from mcast.errors import UsageError
from mcast.units import parse_rate, parse_size

PY = sys.executable
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
WORKDIR_PREFIX = "mcast-demo-"
PACKAGE_NAME = "demo"
MARKER = "demo-installed.txt"  # written by install.py into the agent's state dir
DISCOVERY_GROUP_PREFIX = "239.255.78."  # clear of data groups (239.255.1-76.y) and 77.x

_INSTALL_PY = """\
\"\"\"Demo installer: re-hash the payload, record that it ran here, say so.\"\"\"
import hashlib, os, pathlib, sys

EXPECTED = {expected!r}
FAIL = {fail!r}
here = pathlib.Path(__file__).resolve().parent
digest = hashlib.sha256((here / "payload.bin").read_bytes()).hexdigest()
guid = os.environ.get("MCAST_AGENT_GUID", "?")
if digest != EXPECTED:
    print(f"payload sha256 {{digest[:16]}} is not {{EXPECTED[:16]}}")
    sys.exit(4)
marker = os.environ.get("MCAST_DEMO_MARKER")
if marker:
    pathlib.Path(marker).write_text(f"{{guid}} {{digest}}\\n")
print(f"demo installed on {{guid}}: payload sha256 {{digest[:16]}}")
if guid in FAIL:
    print("failing on purpose (--fail-agents)")
    sys.exit(3)
"""


class Interrupted(Exception):
    """SIGINT/SIGTERM/SIGHUP during the run."""


# ---------------------------------------------------------------- the package and the server


@dataclass
class Setup:
    work: Path
    data: Path
    pub: Path
    task_id: str
    package_hash: str
    package_size: int
    files: dict[str, str]  # relative path -> sha256 hex
    guids: list[str]
    session_key_file: Path  # the site's discovery key, for the session observer
    www: Path  # the WAN package server's root: pkg/<hash>/content
    ca_file: Path  # the CA the agents pin (the server's DATA/tls/ca.pem)

    def secret_file(self, guid: str) -> Path:
        return self.work / "secrets" / f"{guid}.secret"


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(1 << 20, left))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def prepare(
    work: Path, agents: int, size: int, subnet: str, fail: int, server_addr: str = "127.0.0.1"
) -> Setup:
    """The server's data dir: package, site, settings that allow multicast, one task, its
    TLS certificate for ``server_addr``, and every target computer with its secret."""
    from server_stub import repo, tls
    from server_stub.cli import main as ns_main
    from server_stub.store import TaskRow

    guids = [str(uuid.uuid4()) for _ in range(agents)]
    src = work / "package"
    src.mkdir()
    payload_sha = _write_random(src / "payload.bin", size)
    install = _INSTALL_PY.format(expected=payload_sha, fail=guids[:fail])
    (src / "install.py").write_text(install)
    files = {
        "payload.bin": payload_sha,
        "install.py": hashlib.sha256(install.encode()).hexdigest(),
    }
    data = work / "ns-data"
    store = repo.init_data_dir(data)
    tls.init_tls(data, [server_addr, "localhost"])
    try:
        row = repo.add_package(store, src, PACKAGE_NAME).row
        store.add_site("demo-lan", [subnet])
        # what keys the discovery group the observer listens to: the agents' site's key
        discovery_key = store.discovery_key("demo-lan")
        store.set_setting("multicastEnabled", "true")
        store.set_setting("minMulticastSize", str(min(1 << 20, row.size)))
        store.set_setting("maxSessionsPerSubnet", "1")
        task = TaskRow(
            str(uuid.uuid4()),
            row.package_id,
            f"{shlex.quote(PY)} install.py",
            "asap",
            pwd.getpwuid(os.geteuid()).pw_name,  # run as the demo's user: it reads its files
            "agent",
        )
        store.add_task(task, guids)
    finally:
        store.close()
    (work / "secrets").mkdir()
    with contextlib.redirect_stdout(io.StringIO()):  # as an administrator enrols them
        for guid in guids:
            secret = str(work / "secrets" / f"{guid}.secret")
            if ns_main(["computer", "add", guid, "--data", str(data), "--secret-file", secret]):
                raise LabError(f"mcast-ns computer add {guid} failed")
    key_file = work / "session.key"
    key_file.write_text(discovery_key.hex())
    www = work / "www"
    content = www / "pkg" / row.hash / "content"  # the package's files end to end
    content.parent.mkdir(parents=True)
    with open(content, "wb") as out:
        for f in repo.load_snapshot(data, row.hash).files:
            out.write((src / f.path).read_bytes())
    return Setup(
        work, data, data / repo.PUB_NAME, task.task_id, row.hash, row.size, files, guids,
        key_file, www, tls.tls_dir(data) / tls.CA_CERT,
    )  # fmt: skip


def start_wan(net: Net, setup: Setup, rate_bps: int) -> str:
    """The site's package server behind a ``rate_bps`` link; returns its URL, registered."""
    from server_stub.store import Store

    argv = [PY, "-m", "bench.http_serve", "--root", str(setup.www), "--bind", net.addr(0),
            "--port", "0", "--rate", str(rate_bps)]  # fmt: skip
    wan = net.spawn(0, argv)
    ready = wan.wait_json(lambda o: o.get("event") == "ready", 30)
    if ready is None:
        raise LabError(f"the WAN package server did not start: {wan.describe()}")
    url = f"http://{net.addr(0)}:{ready[1]['port']}/"
    store = Store(setup.data)
    try:
        store.add_pkgserver("demo-lan", url)
    finally:
        store.close()
    return url


def wait_url(proc: Proc, timeout: float) -> str:
    """The ``https://...`` line ``mcast-ns serve`` prints first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(proc.stdout_tail):
            if line.text.startswith(("https://", "http://")):
                return line.text.strip()
        if proc.finished:
            break
        time.sleep(0.05)
    raise LabError(f"the server did not print its URL: {proc.describe()}")


def server_status(
    data: Path, task_id: str, guids: list[str], timeout: float = 15.0
) -> dict[str, Any]:
    """The task status the server recorded per computer, once its event queue is drained."""
    from server_stub.store import Store

    store = Store(data)
    try:
        deadline = time.monotonic() + timeout
        while store.queue_counts()["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        rows = {r.computer: r for r in store.task_status() if r.task_id == task_id}
    finally:
        store.close()
    return {g: rows.get(g) for g in guids}


# ---------------------------------------------------------------- where processes run


class Net(Protocol):
    """Loopback or the lab: where the server and agent i run, and at which address."""

    def spawn(self, who: int, argv: list[str]) -> Proc: ...  # who 0 = server, i = agent i

    def addr(self, who: int) -> str: ...

    @property
    def subnet(self) -> str: ...

    def stop_all(self) -> None: ...


class Loopback:
    subnet = "127.0.0.0/8"

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def spawn(self, who: int, argv: list[str]) -> Proc:
        popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE,
            text=True, bufsize=1, env=child_env(), start_new_session=True,
        )  # fmt: skip
        proc = Proc("local", argv, popen)
        self.procs.append(proc)
        return proc

    def addr(self, who: int) -> str:
        return "127.0.0.1"

    def stop_all(self) -> None:
        for proc in self.procs:  # each leads its own process group (start_new_session)
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()


class OnLab:
    subnet = "198.18.0.0/24"

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def spawn(self, who: int, argv: list[str]) -> Proc:
        return self.lab.popen(f"h{who}", argv, stdin=True)

    def addr(self, who: int) -> str:
        return self.lab.addr(f"h{who}")

    def stop_all(self) -> None:
        for proc in self.lab.procs:
            proc.kill()


# ---------------------------------------------------------------- the agents


@dataclass
class AgentView:
    """One agent as seen from its JSON lines: those of ``mcast-agent --json`` and the
    ``ready`` that :mod:`bench.demo_agent` prints before it is released."""

    index: int
    guid: str
    addr: str
    state_dir: Path
    proc: Proc | None = None
    seen: int = 0
    ready: bool = False
    released: float | None = None  # time.monotonic() of its "go"
    phase: str = "starting"
    state: str = ""
    verified_bytes: int = 0
    total: int = 0
    route: str = ""
    session: str | None = None  # the session its download says it joined or led
    bytes_multicast: int = 0
    bytes_http: int = 0
    exit_code: int | None = None
    agent_rc: int | None = None  # its run's exit code ("serving-for"), then its process's
    exited: float | None = None  # time.monotonic() of "serving-for": its run is done
    cache: dict[str, Any] | None = None  # what its peer cache did, from its "stopped" line
    download_note: str = ""  # the agent's "downloaded via ..." message
    output: str = ""  # the tail of the command's output, or why it failed
    errors: list[str] = field(default_factory=list)
    timed_out: bool = False
    killed: bool = False

    def update(self) -> None:
        if self.proc is None:
            return
        new = self.proc.json_lines(self.seen)
        self.seen += len(new)
        for t, ev in new:
            self._apply(t, ev)

    def _apply(self, t: float, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "ready":
            self.ready = True
        elif kind == "progress":
            self.phase = str(ev.get("phase", self.phase))
            self.total = int(ev.get("total") or self.total)
            self.verified_bytes = max(self.verified_bytes, int(ev.get("verified") or 0))
            self.bytes_multicast = int(ev.get("multicast") or 0)
            self.bytes_http = int(ev.get("http") or 0)
        elif kind == "job":
            self.state = str(ev.get("state", ""))
            self.phase = self.state
            if self.state == "downloaded":
                self.session = ev.get("session")
                self.route = str(ev.get("route") or "")
                if not self.route:  # an agent without the route field: read the message
                    msg = str(ev.get("message", ""))  # "downloaded via ROUTE (notes)"
                    self.route = msg.removeprefix("downloaded via ").split(" ")[0]
                self.bytes_multicast = int(ev.get("bytes_multicast") or 0)
                self.bytes_http = int(ev.get("bytes_http") or 0)
                self.verified_bytes = self.total or self.verified_bytes
                self.download_note = str(ev.get("message", ""))
            elif self.state in ("succeeded", "failed"):
                self.exit_code = ev.get("exit_code")
                self.output = str(ev.get("message", ""))
        elif kind in ("retry", "dropped"):
            self.errors.append(str(ev.get("error") or ev.get("reason") or ev))
        elif kind == "peer-cache" and ev.get("action") == "serving-for":
            self.agent_rc, self.exited = int(ev.get("rc", -1)), t  # its run is done
            self.phase = self.state or "exited"
        elif kind == "peer-cache" and ev.get("action") == "stopped":
            self.cache = {k: ev.get(k) for k in ("solicits", "sessions", "claims_lost",
                                                 "failures")}  # fmt: skip
            self.cache["error"] = str(ev.get("error") or "")

    @property
    def finished(self) -> bool:
        """The agent's run is done (it may still serve its cache), or its process ended."""
        return self.agent_rc is not None or (self.proc is not None and self.proc.finished)

    @property
    def rc(self) -> int | None:
        """The agent's exit code: its process's once it exited, else what its run said."""
        polled = None if self.proc is None else self.proc.popen.poll()
        return polled if polled is not None else self.agent_rc

    @property
    def fraction(self) -> float:
        return self.verified_bytes / self.total if self.total else 0.0


def agent_argv(v: AgentView, url: str, setup: Setup, discovery: str, serve_for: float) -> list[str]:
    """The agent serves its peer cache for ``serve_for`` seconds after its run: longer than
    the demo lasts (it ends the agent with SIGTERM), a bound if the demo itself is killed."""
    args = [
        "--server", url, "--guid", v.guid, "--state", str(v.state_dir),
        "--trust-key", str(setup.pub), "--secret-file", str(setup.secret_file(v.guid)),
        "--ca-file", str(setup.ca_file), "--once", "--serve-cache-for", f"{serve_for:g}",
        "--json", "--ip", v.addr, "--interface", v.addr, "--discovery", discovery,
        "--command-timeout", "60",
    ]  # fmt: skip
    return [PY, "-m", "bench.demo_agent", str(v.state_dir / MARKER), *args]


def cache_verified(v: AgentView, setup: Setup) -> bool:
    """The demo's own check: every package file in the agent's cache has the right sha256."""
    root = v.state_dir / "cache" / setup.package_hash
    return all(
        (root / rel).is_file() and sha256_file(root / rel) == want
        for rel, want in setup.files.items()
    )


# ---------------------------------------------------------------- display


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def live_table(views: list[AgentView], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("agent", "address", "phase", "progress", "route", "MiB mcast", "MiB http"):
        right = col.startswith(("MiB", "prog"))
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    for v in views:
        pct = f"{100 * v.verified_bytes / v.total:.0f}%" if v.total else ""
        table.add_row(
            f"{v.index} {v.guid[:8]}", v.addr, v.phase, pct, v.route,
            _mib(v.bytes_multicast), _mib(v.bytes_http),
        )  # fmt: skip
    return table


def final_table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    ok = "all ok" if summary["all_ok"] else "FAILED"
    table = Table(
        title=f"mcast demo ({summary['mode']}): {summary['agents']} agents, "
        f"{_mib(summary['package_size'])} MiB package: {ok}"
    )
    cols = ("agent", "route", "from", "MiB mcast", "MiB http", "verified", "exit", "server", "ok")
    for col in cols:
        table.add_column(col, no_wrap=col != "ok")
    for a in summary["per_agent"]:
        exit_code = "" if a["exit_code"] is None else str(a["exit_code"])
        ok = "ok" if a["ok"] else f"FAILED: {a['problem']}"
        if a["killed"]:
            ok = "killed on purpose"
        table.add_row(
            f"{a['index']} {a['guid'][:8]}", a["route"] or "-", a["served_from"] or "-",
            _mib(a["bytes_multicast"]), _mib(a["bytes_http"]), "yes" if a["verified"] else "NO",
            exit_code, a["server_status"], ok,
        )  # fmt: skip
    return table


# ---------------------------------------------------------------- one run


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind the run like Ctrl-C does (the lab's own handlers, while it
    is up, raise SystemExit instead: handled the same way)."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, h)


def start_observer(net: Net, setup: Setup, group: str, port: int) -> Proc:
    """``mcast sessions --json`` on the agents' discovery group, beside the server: the
    sessions the demo reports are the ones it hears announced, not a count it assumes."""
    argv = [PY, "-m", "mcast.cli", "sessions", "--json", "--interface", net.addr(0),
            "--group", group, "--port", str(port),
            "--session-key-file", str(setup.session_key_file)]  # fmt: skip
    observer = net.spawn(0, argv)
    if observer.wait_json(lambda o: o.get("event") in ("listening", "error"), 30) is None:
        raise LabError(f"the session observer did not start: {observer.describe()}")
    last = observer.last_json()
    if last is None or last[1].get("event") != "listening":
        raise LabError(f"the session observer failed: {observer.describe()}")
    return observer


@dataclass
class SessionSeen:
    """One session id as the observer heard it announce."""

    first_t: float  # time.monotonic() (of this process) of its first announce, claim or not
    cache: bool  # its claim (or first announce) said it held a complete copy: a peer cache
    first_send_t: float | None = None  # its first announce as a sending session
    progress: int = 0  # the most of its first pass it announced sent, in %


def observed(observer: Proc) -> dict[str, SessionSeen]:
    """Every session id the observer heard, in the order first heard."""
    seen: dict[str, SessionSeen] = {}
    for t, ev in observer.json_lines(0):
        if ev.get("event") != "announce":
            continue
        sid = str(ev.get("session"))
        ss = seen.get(sid)
        if ss is None:
            ss = seen[sid] = SessionSeen(t, bool(ev.get("complete")))
        if ev.get("claiming"):
            ss.cache = ss.cache or bool(ev.get("complete"))
        else:
            if ss.first_send_t is None:
                ss.first_send_t = t
            ss.progress = max(ss.progress, int(ev.get("progress") or 0))
    return seen


def sessions_heard(seen: dict[str, SessionSeen]) -> dict[str, Any]:
    """Distinct session ids announced on the discovery group: those that sent data, the claims
    (a would-be master's announce before it sends) that never became a session, and the
    sessions whose claim said they held a complete copy (served from a peer's cache)."""
    sending = sorted(sid for sid, ss in seen.items() if ss.first_send_t is not None)
    return {"sessions": len(sending), "session_ids": sending,
            "claims_only": len(seen) - len(sending),
            "cache_sessions": sum(1 for sid in sending if seen[sid].cache)}  # fmt: skip


def served_from(v: AgentView, seen: dict[str, SessionSeen]) -> str | None:
    """Where the agent's copy came from, from its route, the session its fetch named and what
    the observer heard of that session; None for an agent the demo killed."""
    if v.killed:
        return None
    if v.route in ("http", "master"):
        return v.route
    if v.route == "cached":
        return "cache"
    if v.route == "joined" and v.session in seen:
        return "peer-cache" if seen[v.session].cache else "session"
    return "unknown"


@dataclass
class Kill:
    """``--kill-master-at``: SIGKILL the first master once its session has sent ``at``."""

    at: float
    victim: AgentView | None = None
    t: float | None = None  # time.monotonic() of the kill
    session: str | None = None  # the victim's session: the first heard sending
    sent: float = 0.0
    master_verified: float = 0.0
    missed: str = ""

    def step(self, views: list[AgentView], observer: Proc) -> None:
        if self.t is not None or self.missed:
            return
        if self.victim is None:  # the first agent whose progress says it leads a session
            self.victim = next((v for v in views if v.phase == "master"), None)
            if self.victim is None:
                return
        v = self.victim
        if v.finished:
            self.missed = (f"agent {v.index}, the first master, finished before its session "
                           f"had sent {self.at:g} of the package")  # fmt: skip
            return
        sending = [(ss.first_send_t, sid, ss) for sid, ss in observed(observer).items()
                   if ss.first_send_t is not None]  # fmt: skip
        announced = min(sending)[2].progress / 100 if sending else 0.0
        received = max((w.fraction for w in views if w is not v and w.phase == "multicast"),
                       default=0.0)  # fmt: skip
        sent = max(announced, received)
        if sent < self.at or v.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(v.proc.pid, signal.SIGKILL)  # no END, no status: a machine that died
        self.t = time.monotonic()
        v.killed, v.phase = True, "killed"
        self.session = min(sending)[1] if sending else None
        self.sent, self.master_verified = round(sent, 4), round(v.fraction, 4)

    def report(self, seen: dict[str, SessionSeen]) -> tuple[dict[str, Any], float | None]:
        """The kill as the summary shows it, and the takeover time: from the kill to the first
        announce (its claim) of a session first heard after the kill that went on to send."""
        if self.t is None:
            why = self.missed or "no agent became a session's master"
            return {"agent": None, "missed": why}, None
        assert self.victim is not None
        after = [ss.first_t for sid, ss in seen.items()
                 if sid != self.session and ss.first_t > self.t and ss.first_send_t is not None]
        takeover = round(min(after) - self.t, 3) if after else None
        return {"agent": self.victim.index, "session": self.session, "sent": self.sent,
                "master_verified": self.master_verified, "missed": ""}, takeover  # fmt: skip


@dataclass
class Run:
    """What :func:`run_agents` measured."""

    wall: float
    seen: dict[str, SessionSeen]
    released: dict[int, float]  # agent index -> seconds after the first release
    done: dict[int, float]  # agent index -> its exit, in seconds after the first release
    kill: dict[str, Any] | None = None
    takeover_s: float | None = None


def run_agents(
    net: Net, setup: Setup, views: list[AgentView], url: str, args: argparse.Namespace,
    live: Any,
) -> Run:
    """Start every agent, release them (together or ``--spread`` apart), kill the first
    master if asked, follow them to the end while listening to the discovery group, then stop
    the agents serving their caches (SIGTERM)."""
    group = f"{DISCOVERY_GROUP_PREFIX}{random.randint(1, 254)}"
    port = random.randint(47100, 47999)
    discovery = f"{group}:{port}"
    observer = start_observer(net, setup, group, port)
    serve_for = args.spread * (len(views) - 1) + args.timeout + 120
    for v in views:
        v.proc = net.spawn(v.index, agent_argv(v, url, setup, discovery, serve_for))
    deadline = time.monotonic() + max(60.0, args.timeout)
    while not all(v.ready for v in views):  # imports done everywhere
        for v in views:
            v.update()
            if v.finished and not v.ready:
                raise LabError(
                    f"agent {v.index} did not start: {v.proc.describe() if v.proc else ''}"
                )
        if time.monotonic() > deadline:
            raise LabError("agents did not get ready in time")
        time.sleep(0.05)
    kill = Kill(args.kill_master_at) if args.kill_master_at is not None else None
    t0 = time.monotonic()
    deadline = t0 + args.spread * (len(views) - 1) + args.timeout
    t_last = t0
    while True:
        now = time.monotonic()
        for v in views:
            if v.released is None and now >= t0 + args.spread * (v.index - 1):
                if v.proc is not None:
                    v.proc.send("go\n")
                v.released, v.phase = now, "checking in"
            v.update()
        if kill is not None:
            kill.step(views, observer)
        if live is not None:
            live.update(live_table(views, f"mcast demo: {len(views)} agents, {now - t0:.1f} s"))
        if all(v.finished or v.killed for v in views):
            t_last = now
            break
        if now > deadline:
            for v in views:
                if not v.finished and not v.killed and v.proc is not None:
                    v.timed_out = True
                    v.proc.kill()
            t_last = now
            break
        time.sleep(0.05)
    stop_agents(views)
    seen = observed(observer)
    observer.kill()
    if args.keep:  # what the demo heard and read, for a look afterwards
        for name, proc in [("observer", observer)] + [(f"agent-{v.index}", v.proc) for v in views]:
            if proc is not None:
                with open(setup.work / f"{name}.jsonl", "w") as out:
                    for t, ev in proc.json_lines(0):
                        out.write(json.dumps({"t_demo": round(t - t0, 3), **ev}) + "\n")
    run = Run(t_last - t0, seen, {v.index: round((v.released or t0) - t0, 3) for v in views},
              {v.index: round(v.exited - t0, 3) for v in views if v.exited is not None})
    if kill is not None:
        run.kill, run.takeover_s = kill.report(seen)
    return run


def stop_agents(views: list[AgentView], timeout: float = 15.0) -> None:
    """SIGTERM every agent still running (serving its cache, or one the demo let go before it
    was released), and wait for its last lines: its peer cache's stats and its exit code."""
    for v in views:
        if v.proc is not None and v.proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                v.proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for v in views:
        if v.proc is None:
            continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            v.proc.wait(max(0.1, deadline - time.monotonic()))
        v.update()


def summarize(
    args: argparse.Namespace, setup: Setup, views: list[AgentView], status: dict[str, Any],
    run: Run,
) -> dict[str, Any]:
    per: list[dict[str, Any]] = []
    for v in views:
        row = status.get(v.guid)
        server = row.state if row is not None else "unknown"
        verified = cache_verified(v, setup)
        ran = (v.state_dir / MARKER).is_file()
        problems = []
        if v.killed:
            problems.append("killed by the demo (--kill-master-at)")
        else:
            if v.timed_out:
                problems.append("timed out")
            if not verified:
                problems.append("package not verified")
            if v.exit_code != 0:
                problems.append(f"command exit {v.exit_code}")
            elif not ran:
                problems.append("command left no marker")
            if server != "succeeded":
                problems.append(f"server recorded {server}")
            if v.rc != 0:
                problems.append(f"agent exit {v.rc}")
            if v.proc is not None and v.proc.popen.poll() is None:
                problems.append("agent still running after SIGTERM")
        per.append({
            "index": v.index, "guid": v.guid, "addr": v.addr,
            "released_s": run.released.get(v.index), "done_s": run.done.get(v.index),
            "route": v.route, "session": v.session,
            "served_from": served_from(v, run.seen),
            "bytes_multicast": v.bytes_multicast, "bytes_http": v.bytes_http,
            "verified": verified, "exit_code": v.exit_code, "agent_rc": v.rc,
            "killed": v.killed, "server_status": server,
            "server_exit_code": row.exit_code if row is not None else None,
            "server_bytes_multicast": row.bytes_multicast if row is not None else None,
            "server_bytes_http": row.bytes_http if row is not None else None,
            "cache": v.cache,
            "ok": not problems, "problem": "; ".join(problems),
            "download_note": v.download_note, "output": v.output.strip()[-300:],
            "errors": v.errors[-3:],
        })  # fmt: skip
    http_total = sum(a["bytes_http"] for a in per)  # a killed agent's too: it crossed the WAN
    masters = [a["index"] for a in per if a["route"] == "master"]
    killed = [a["index"] for a in per if a["killed"]]
    failed = [a["index"] for a in per if not a["ok"] and not a["killed"]]
    kill_ok = run.kill is None or not run.kill.get("missed")
    wan_copies = round(http_total / setup.package_size, 4)
    return {
        "event": "summary",
        "mode": "lab" if args.lab else "loopback",
        "agents": len(views),
        "package_size": setup.package_size,
        "package_hash": setup.package_hash,
        "bytes_http_total": http_total,
        "bytes_multicast_total": sum(a["bytes_multicast"] for a in per),
        "http_ratio": wan_copies,
        "wan_copies": wan_copies,  # how many copies of the package crossed the WAN
        **sessions_heard(run.seen),  # sessions: distinct ids heard announcing data
        "cache_sessions_served": sum(int((a["cache"] or {}).get("sessions") or 0) for a in per),
        "masters": masters,  # agents whose route says they started a session
        "spread_s": args.spread,
        "wan_rate_bps": args.wan_rate,
        "kill_master_at": args.kill_master_at,
        "killed": killed,
        "kill": run.kill,
        "takeover_s": run.takeover_s,
        "failed": failed,
        "wall_s": round(run.wall, 3),
        "all_ok": len(killed) < len(per) and not failed and kill_ok,
        "per_agent": per,
    }


def run_demo(args: argparse.Namespace, live_ok: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
    lab: Lab | None = None
    net: Net | None = None
    server: Proc | None = None
    try:
        if args.lab:
            lab = Lab(receivers=args.agents, rate_bps=args.rate)
            lab.__enter__()
            net = OnLab(lab)
        else:
            net = Loopback()
        setup = prepare(work, args.agents, args.size, net.subnet, args.fail_agents, net.addr(0))
        server_argv = [PY, "-m", "server_stub.cli", "serve", "--data", str(setup.data),
                       "--bind", f"{net.addr(0)}:0"]  # fmt: skip
        if args.wan_rate:
            start_wan(net, setup, args.wan_rate)
        server = net.spawn(0, server_argv)
        url = wait_url(server, 30)
        views = [
            AgentView(i, g, net.addr(i), work / f"agent-{i}")
            for i, g in enumerate(setup.guids, start=1)
        ]
        live_cm: Any = contextlib.nullcontext()
        if live_ok:
            from rich.live import Live

            live_cm = Live(
                live_table(views, "mcast demo: starting"), refresh_per_second=8, transient=True
            )
        with live_cm as live:
            run = run_agents(net, setup, views, url, args, live)
        status = server_status(setup.data, setup.task_id, setup.guids)
        summary = summarize(args, setup, views, status, run)
        summary["server_url"] = url
        summary["workdir"] = str(work) if args.keep else None
        return summary
    finally:
        if server is not None and server.popen.poll() is None:
            server.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.popen.wait(10)
        if net is not None:
            net.stop_all()
        if lab is not None:
            lab.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mcast demo",
        description="The seed's Software Delivery flow end to end: the server stub, a task for "
        "N agent processes, one multicast session; a table per agent (or --json).",
    )
    p.add_argument("--agents", type=int, default=4, help="number of agents (default 4)")
    p.add_argument("--size", type=parse_size, default=parse_size("16M"),
                   help="payload size: 4M, 16M (default), 1G")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON summary object on stdout")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (printed)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for the agents")
    p.add_argument(
        "--fail-agents",
        type=int,
        default=0,
        metavar="K",
        help="make the command exit 3 on the first K agents (a failure demo)",
    )
    p.add_argument("--spread", type=float, default=0.0, metavar="SECONDS",
                   help="release the agents this many seconds apart (default 0: together)")
    p.add_argument("--kill-master-at", type=float, metavar="FRACTION",
                   help="SIGKILL the first master once its session has sent this fraction "
                   "of the package (0 < FRACTION < 1); a receiver takes over")
    p.add_argument("--wan-rate", type=parse_rate, default="20mbit",
                   help="the link to the site's package server (default 20mbit; 0 = the "
                   "Notification Server serves the package, not shaped)")
    p.add_argument("--lab", action="store_true", help="on the namespace lab (root)")
    p.add_argument("--rate", type=parse_rate, default="100mbit",
                   help="lab link rate (default 100mbit; 0 = not shaped)")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options, checked: a bad one raises a one-line UsageError."""
    parser = build_parser()
    if argv[:1] == ["--"]:  # ``mcast demo -- --agents 8``: argparse passes the "--" on
        argv = argv[1:]
    args = parser.parse_args(argv)
    if not 1 <= args.agents <= 64:
        parser.error("--agents must be 1..64")
    if args.size < 1:
        parser.error("--size must be positive")
    if not 0 <= args.fail_agents <= args.agents:
        parser.error("--fail-agents must be 0..--agents")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if not 0 <= args.spread <= 3600:  # (also refuses nan)
        parser.error("--spread must be 0..3600 seconds")
    if args.kill_master_at is not None:
        if not 0 < args.kill_master_at < 1:
            parser.error("--kill-master-at must be a fraction between 0 and 1 (exclusive)")
        if args.agents < 2:
            parser.error("--kill-master-at needs --agents 2 or more (a receiver takes over)")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:  # alone or as ``mcast demo``: one line, exit 2
        print(f"mcast demo: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    if args.lab:
        ok, why = lab_available()
        if not ok:
            print(f"mcast demo --lab: skipped: {why}", file=sys.stderr)
            return EXIT_USAGE
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    live_ok = not args.json and sys.stdout.isatty()
    try:
        with _signals():
            summary = run_demo(args, live_ok)
    except (KeyboardInterrupt, Interrupted, SystemExit) as exc:
        why = str(exc) or "SIGINT"
        if isinstance(exc, SystemExit):
            why = f"exit {exc.code}"
        if args.json:
            print(json.dumps({"event": "error", "error": f"interrupted ({why})", "all_ok": False}))
        else:
            print(f"mcast demo: interrupted ({why}); cleaned up", file=sys.stderr)
        return EXIT_INTERRUPTED
    except LabError as exc:
        if args.json:
            print(json.dumps({"event": "error", "error": str(exc), "all_ok": False}))
        else:
            print(f"mcast demo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        console.print(final_table(summary))
        console.print(
            f"HTTP bytes {summary['bytes_http_total']:,}: {summary['wan_copies']:.2f} copies of "
            f"the package crossed the WAN; multicast sessions: {summary['sessions']} "
            f"({summary['cache_sessions']} from a peer's cache); {summary['wall_s']:.1f} s",
            highlight=False,
        )
        kill = summary["kill"]
        if kill is not None:
            if kill["agent"] is None:
                console.print(f"no master was killed: {kill['missed']}", highlight=False)
            else:
                took = summary["takeover_s"]
                console.print(
                    f"agent {kill['agent']} (master) killed at {kill['sent']:.0%} sent; "
                    + (f"a new session announced {took:.2f} s later" if took is not None
                       else "no new session was heard"), highlight=False,
                )  # fmt: skip
        if summary["workdir"]:
            console.print(f"kept {summary['workdir']}")
    return EXIT_OK if summary["all_ok"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
