"""``mcast demo``: the seed's Software Delivery flow end to end, on this machine or on the lab.

One run, everything it starts removed at the end (also on failure, Ctrl-C and SIGTERM):

1. a temp dir (``mcast-demo-<pid>-*``, kept only with ``--keep``) holding a Notification
   Server data dir made with the server stub's Python API: a generated package (a random
   ``payload.bin`` of ``--size`` bytes and an ``install.py`` that re-hashes the payload, writes
   a marker and prints a line, so the command's exit code is real), a site owning the agents'
   subnet, Agent Settings that allow multicast (``minMulticastSize`` at most the package size,
   ``maxSessionsPerSubnet`` 1) and one task targeting N fresh computer GUIDs;
2. ``mcast-ns serve`` as a child process, its URL read from its first line;
3. N agents (``mcast-agent --server URL --guid G --state DIR --trust-key PUB --once --json``,
   each its own process, with this run's own discovery channel so that no other run's sessions
   count against the subnet's limit). Each agent first imports everything and says ``ready``;
   the demo then releases all of them at the same moment, so they meet in one multicast
   session: one master downloads over HTTP and multicasts, the others join it. Beside the
   server, ``mcast sessions --json`` listens to that discovery channel from before the release
   to the end: the sessions the demo reports are the ones it heard;
4. live progress from the agents' JSON lines (a table redrawn in place on a terminal), then a
   table per agent: route, bytes by multicast and by HTTP, payload verified (the demo re-hashes
   the agent's cached files itself), exit code of the command, and the status the SERVER
   recorded for that computer (read from its store once its event queue is drained).

``--json`` prints one JSON object (the summary) as the last line of stdout: per agent its
route (master/joined/http/cached), bytes by multicast and HTTP, verified, exit code and the
server's recorded status (with the server's byte counts); totals ``package_size``,
``bytes_http_total``, ``http_ratio`` (= bytes_http_total / package_size), ``sessions`` (the
distinct session ids heard announcing data on the agents' discovery group by an
``mcast sessions --json`` observer the demo runs beside the server; ``session_ids`` lists
them, ``claims_only`` counts claims that never sent), ``masters`` (the agents whose route
says they started one), ``wall_s`` (from the release of the agents to the last one's exit)
and ``all_ok``. ``verified`` is the demo's own re-hash of each agent's cached files.
Exit 0 only if every agent verified the package, ran the command
with exit 0 and the server recorded ``succeeded`` for it; 1 otherwise; 2 for bad arguments or
a missing prerequisite (``--lab`` without root); 130 when interrupted.

``--lab`` runs the same on the namespace lab of :mod:`bench.labnet` (100 Mbit/s links): the
server in ``h0`` (198.18.0.1), agent i in host ``hi`` with that host's address as its multicast
interface, the site owning 198.18.0.0/24. Nothing else leaves loopback or the lab.

    python -m mcast.cli demo [--agents 4] [--size 16M] [--json] [--keep] [--timeout 120]
                             [--fail-agents K] [--lab [--rate 100mbit]]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
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


def prepare(work: Path, agents: int, size: int, subnet: str, fail: int) -> Setup:
    """The server's data dir: package, site, settings that allow multicast, one task."""
    from server_stub import repo
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
            "system",
            "agent",
        )
        store.add_task(task, guids)
    finally:
        store.close()
    key_file = work / "session.key"
    key_file.write_text(discovery_key.hex())
    return Setup(
        work, data, data / repo.PUB_NAME, task.task_id, row.hash, row.size, files, guids, key_file
    )


def wait_url(proc: Proc, timeout: float) -> str:
    """The ``http://...`` line ``mcast-ns serve`` prints first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(proc.stdout_tail):
            if line.text.startswith("http://"):
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
    """One agent as seen from its JSON lines."""

    index: int
    guid: str
    addr: str
    state_dir: Path
    proc: Proc | None = None
    seen: int = 0
    ready: bool = False
    phase: str = "starting"
    state: str = ""
    verified_bytes: int = 0
    total: int = 0
    route: str = ""
    bytes_multicast: int = 0
    bytes_http: int = 0
    exit_code: int | None = None
    download_note: str = ""  # the agent's "downloaded via ..." message
    output: str = ""  # the tail of the command's output, or why it failed
    errors: list[str] = field(default_factory=list)
    timed_out: bool = False

    def update(self) -> None:
        if self.proc is None:
            return
        new = self.proc.json_lines(self.seen)
        self.seen += len(new)
        for _t, ev in new:
            self._apply(ev)

    def _apply(self, ev: dict[str, Any]) -> None:
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

    @property
    def finished(self) -> bool:
        return self.proc is not None and self.proc.finished

    @property
    def rc(self) -> int | None:
        return None if self.proc is None else self.proc.popen.poll()


def agent_argv(v: AgentView, url: str, setup: Setup, discovery: str) -> list[str]:
    args = [
        "--server", url, "--guid", v.guid, "--state", str(v.state_dir),
        "--trust-key", str(setup.pub), "--once", "--json", "--ip", v.addr,
        "--interface", v.addr, "--discovery", discovery, "--command-timeout", "60",
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
    cols = ("agent", "route", "MiB mcast", "MiB http", "verified", "exit", "server", "ok")
    for col in cols:
        table.add_column(col, no_wrap=col != "ok")
    for a in summary["per_agent"]:
        exit_code = "" if a["exit_code"] is None else str(a["exit_code"])
        table.add_row(
            f"{a['index']} {a['guid'][:8]}", a["route"] or "-", _mib(a["bytes_multicast"]),
            _mib(a["bytes_http"]), "yes" if a["verified"] else "NO", exit_code,
            a["server_status"], "ok" if a["ok"] else f"FAILED: {a['problem']}",
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


def sessions_heard(observer: Proc) -> dict[str, Any]:
    """Distinct session ids announced on the discovery group: those that sent data, and the
    claims (a would-be master's announce before it sends) that never became a session."""
    sending, claimed = set(), set()
    for _t, ev in observer.json_lines(0):
        if ev.get("event") == "announce":
            (claimed if ev.get("claiming") else sending).add(str(ev.get("session")))
    return {"sessions": len(sending), "session_ids": sorted(sending),
            "claims_only": len(claimed - sending)}  # fmt: skip


def run_agents(
    net: Net, setup: Setup, views: list[AgentView], url: str, timeout: float, live: Any
) -> tuple[float, dict[str, Any]]:
    """Start every agent, release them together, follow them to the end, listening to the
    discovery group all along; returns the wall time and the sessions heard."""
    group = f"{DISCOVERY_GROUP_PREFIX}{random.randint(1, 254)}"
    port = random.randint(47100, 47999)
    discovery = f"{group}:{port}"
    observer = start_observer(net, setup, group, port)
    for v in views:
        v.proc = net.spawn(v.index, agent_argv(v, url, setup, discovery))
    deadline = time.monotonic() + max(60.0, timeout)
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
    t0 = time.monotonic()
    for v in views:
        if v.proc is not None:
            v.proc.send("go\n")
            v.phase = "checking in"
    deadline = t0 + timeout
    while True:
        for v in views:
            v.update()
        if live is not None:
            live.update(
                live_table(views, f"mcast demo: {len(views)} agents, {time.monotonic() - t0:.1f} s")
            )
        if all(v.finished for v in views):
            break
        if time.monotonic() > deadline:
            for v in views:
                if not v.finished and v.proc is not None:
                    v.timed_out = True
                    v.proc.kill()
            break
        time.sleep(0.1)
    for v in views:
        v.update()
    wall = time.monotonic() - t0
    observer.kill()
    return wall, sessions_heard(observer)


def summarize(
    mode: str, setup: Setup, views: list[AgentView], status: dict[str, Any], wall: float,
    heard: dict[str, Any],
) -> dict[str, Any]:
    per: list[dict[str, Any]] = []
    for v in views:
        row = status.get(v.guid)
        server = row.state if row is not None else "unknown"
        verified = cache_verified(v, setup)
        ran = (v.state_dir / MARKER).is_file()
        problems = []
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
        per.append({
            "index": v.index, "guid": v.guid, "addr": v.addr, "route": v.route,
            "bytes_multicast": v.bytes_multicast, "bytes_http": v.bytes_http,
            "verified": verified, "exit_code": v.exit_code, "agent_rc": v.rc,
            "server_status": server,
            "server_exit_code": row.exit_code if row is not None else None,
            "server_bytes_multicast": row.bytes_multicast if row is not None else None,
            "server_bytes_http": row.bytes_http if row is not None else None,
            "ok": not problems, "problem": "; ".join(problems),
            "download_note": v.download_note, "output": v.output.strip()[-300:],
            "errors": v.errors[-3:],
        })  # fmt: skip
    http_total = sum(a["bytes_http"] for a in per)
    masters = [a["index"] for a in per if a["route"] == "master"]
    return {
        "event": "summary",
        "mode": mode,
        "agents": len(views),
        "package_size": setup.package_size,
        "package_hash": setup.package_hash,
        "bytes_http_total": http_total,
        "bytes_multicast_total": sum(a["bytes_multicast"] for a in per),
        "http_ratio": round(http_total / setup.package_size, 4),
        **heard,  # sessions: distinct session ids heard announcing on the discovery group
        "masters": masters,  # agents whose route says they started a session
        "wall_s": round(wall, 3),
        "all_ok": bool(per) and all(a["ok"] for a in per),
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
        setup = prepare(work, args.agents, args.size, net.subnet, args.fail_agents)
        server_argv = [PY, "-m", "server_stub.cli", "serve", "--data", str(setup.data),
                       "--bind", f"{net.addr(0)}:0"]  # fmt: skip
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
            wall, heard = run_agents(net, setup, views, url, args.timeout, live)
        status = server_status(setup.data, setup.task_id, setup.guids)
        summary = summarize("lab" if args.lab else "loopback", setup, views, status, wall, heard)
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

    console = Console(width=None if sys.stdout.isatty() else 120)
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
            f"HTTP bytes {summary['bytes_http_total']:,} = {summary['http_ratio']:.2f} x the "
            f"package; multicast sessions: {summary['sessions']}; {summary['wall_s']:.1f} s",
            highlight=False,
        )
        if summary["workdir"]:
            console.print(f"kept {summary['workdir']}")
    return EXIT_OK if summary["all_ok"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
