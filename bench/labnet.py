"""Network-namespace plumbing for the lab LAN: build it, run processes in it, tear it down.

This module owns the lab topology and the processes run in it (:class:`Proc`, their
environment in :func:`child_env`, :func:`wait_all` for their last lines). The topology: a
switch namespace with a bridge (``br0``, multicast snooping off, so multicast floods like on
a dumb switch), one host namespace per lab host (``h0`` is the sender, ``h1..hN`` the
receivers, then any extra host a scenario asks for, such as a rogue), one veth per host
with the switch end enslaved to ``br0`` and the host end named ``eth0``; rate limits with
``tc tbf``; loss with an nftables ``numgen random`` drop on each receiver's ingress.

Safety (see DESIGN.md, "Network safety"):

* every address is in 198.18.0.0/24 and no namespace gets a default route, so nothing
  run inside the lab can reach anything outside it;
* every link is created *inside* a lab namespace (never in the root namespace), so deleting
  the namespaces removes everything;
* names carry a per-run prefix ``mcl<pid>_<seq>-`` so concurrent runs never collide, and
  :func:`cleanup_stale` removes only leftovers whose owner pid is dead;
* :meth:`Lab.close` is idempotent, runs on exceptions, SIGINT, SIGTERM, SIGHUP and at exit,
  and kills every process still living in a lab namespace before deleting it.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import itertools
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "mcl"
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)_(\d+)-")
SUBNET = "198.18.0"  # lab hosts are SUBNET.1 .. SUBNET.(N+1), /24
MAX_RECEIVERS = 200
MCAST_ROUTE = "224.0.0.0/4"
# Where this process imports the project from (a checkout, or site-packages when installed).
IMPORT_ROOT = Path(__file__).resolve().parent.parent
_seq = itertools.count()


class LabError(RuntimeError):
    """A lab command failed (the message carries the command and its stderr)."""


# ---------------------------------------------------------------- nftables

def nft_loss_ruleset(loss_pct: float, proto: str = "udp", device: str = "eth0") -> str:
    """The nftables ruleset that drops ``loss_pct`` % of incoming ``proto`` packets on ``device``.

    Written on several lines on purpose: in nft 1.0.6 the one-line form
    ``table netdev lab { chain ingress { ...; drop; } }`` is a syntax error (a block that
    closes on the same line must be followed by ``;`` before the next ``}``).
    """
    threshold = round(loss_pct * 100)  # out of 10,000: 0.01 % resolution
    if not 0 <= threshold <= 10000:
        raise ValueError(f"loss must be within 0..100 %, got {loss_pct}")
    match = "" if proto == "all" else f"meta l4proto {proto} "
    return (
        "table netdev lab {\n"
        "  chain ingress {\n"
        f'    type filter hook ingress device "{device}" priority 0; policy accept;\n'
        f"    {match}numgen random mod 10000 < {threshold} counter drop\n"
        "  }\n"
        "}\n"
    )


# ---------------------------------------------------------------- commands

def run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; raise :class:`LabError` with stderr when it fails."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                          timeout=timeout, check=False, env=child_env())
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> rc={proc.returncode}: {proc.stderr.strip()}")
    return proc


def netns_list() -> list[str]:
    out = run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    if not out:
        return []
    try:
        return [entry["name"] for entry in json.loads(out)]
    except (ValueError, KeyError, TypeError):
        return [line.split()[0] for line in out.splitlines() if line.strip()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_pids(ns: str) -> None:
    """SIGKILL every process living in lab namespace ``ns`` (they are all ours)."""
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    for tok in out.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(tok), signal.SIGKILL)


def _delete_netns(names: Sequence[str]) -> list[str]:
    errors = []
    for ns in names:
        _kill_netns_pids(ns)
    for ns in names:
        proc = run(["ip", "netns", "delete", ns], check=False)
        if proc.returncode != 0 and ns in netns_list():
            errors.append(f"{ns}: {proc.stderr.strip()}")
    return errors


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove namespaces/links of crashed lab runs (owner pid dead); return what was removed."""
    name_re = re.compile(rf"^{re.escape(prefix)}(\d+)_(\d+)-")
    stale = [ns for ns in netns_list()
             if (m := name_re.match(ns)) and not pid_alive(int(m.group(1)))]
    _delete_netns(stale)
    # We never create links in the root namespace, but a crashed older build might have.
    out = run(["ip", "-j", "link", "show"], check=False).stdout.strip()
    links = []
    with contextlib.suppress(ValueError):
        links = [entry["ifname"] for entry in json.loads(out or "[]")]
    for link in links:
        if (m := name_re.match(link)) and not pid_alive(int(m.group(1))):
            run(["ip", "link", "delete", link], check=False)
            stale.append(link)
    return stale


def lab_available() -> tuple[bool, str]:
    """(True, "") when this process can build a lab, else (False, reason)."""
    if os.geteuid() != 0:
        return False, "needs root (network namespaces)"
    for tool in ("ip", "nft", "tc", "ethtool"):
        if not shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"):
            return False, f"{tool} not installed"
    probe = f"{PREFIX}{os.getpid()}_{next(_seq)}-probe"
    try:
        add = run(["ip", "netns", "add", probe], check=False)
        if add.returncode != 0:
            return False, f"ip netns unavailable: {add.stderr.strip()}"
        nft = run(["ip", "netns", "exec", probe, "nft", "-f", "-"], check=False,
                  input="table inet probe {\n}\n")
        if nft.returncode != 0:
            return False, f"nft unavailable: {nft.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"lab tools failed: {exc}"
    finally:
        run(["ip", "netns", "delete", probe], check=False)
    return True, ""


# ---------------------------------------------------------------- processes in the lab

@dataclass
class Line:
    t: float  # time.monotonic() when the line was read
    text: str


class Proc:
    """A process running inside a lab host.

    A reader thread timestamps every stdout line as it arrives and parses JSON lines once
    (``objs``); raw text keeps only the last lines, so a chatty engine costs no quadratic work.
    """

    def __init__(self, host: str, argv: Sequence[str], popen: subprocess.Popen[str]) -> None:
        self.host = host
        self.argv = list(argv)
        self.popen = popen
        self.t_start = time.monotonic()
        self.objs: list[tuple[float, dict[str, Any]]] = []  # (monotonic time, JSON object)
        self.stdout_tail: collections.deque[Line] = collections.deque(maxlen=200)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=50)
        self._cond = threading.Condition()
        self._eof = False
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for th in self._readers:
            th.start()

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            t, text = time.monotonic(), raw.rstrip("\n")
            obj = None
            if text.lstrip().startswith("{"):
                with contextlib.suppress(ValueError):
                    obj = json.loads(text)
            with self._cond:
                self.stdout_tail.append(Line(t, text))
                if isinstance(obj, dict):
                    self.objs.append((t, obj))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            self.stderr_tail.append(raw.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def finished(self) -> bool:
        """The process exited and all of its stdout has been read."""
        with self._cond:
            return self._eof and self.popen.poll() is not None

    def json_lines(self, start: int = 0) -> list[tuple[float, dict[str, Any]]]:
        with self._cond:
            return self.objs[start:]

    def last_json(self) -> tuple[float, dict[str, Any]] | None:
        with self._cond:
            return self.objs[-1] if self.objs else None

    def wait_json(self, pred: Any, timeout: float) -> tuple[float, dict[str, Any]] | None:
        """Wait for a JSON stdout line with ``pred(obj)`` true; None on timeout or process end."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            with self._cond:
                new = self.objs[seen:]
                seen = len(self.objs)
                if not new:
                    if self._eof:
                        return None
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(min(remaining, 0.2))
                    continue
            for t, obj in new:
                if pred(obj):
                    return t, obj

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text)
        self.popen.stdin.flush()

    def wait(self, timeout: float | None = None) -> int:
        rc = self.popen.wait(timeout)
        self._readers[0].join(5)
        return rc

    def exit_time(self, deadline: float) -> float | None:
        """When the process exited (monotonic), None if it still runs at ``deadline``. Told by
        a pidfd the moment it happens: a wait with a timeout polls, up to 50 ms late."""
        if self.popen.returncode is not None:  # reaped already: its pid may be another's now
            return time.monotonic()
        try:
            fd = os.pidfd_open(self.popen.pid)
        except (AttributeError, OSError):  # no pidfds here, or already reaped
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(max(0.0, deadline - time.monotonic()))
                return time.monotonic()
            return None
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not poller.poll(max(0, math.ceil((deadline - time.monotonic()) * 1000))):
                if time.monotonic() >= deadline:
                    return None
            ended = time.monotonic()
            self.popen.wait()
            return ended
        finally:
            os.close(fd)

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def describe(self) -> str:
        tail = " | ".join(list(self.stderr_tail)[-5:])
        return f"{self.host}: {' '.join(self.argv)} rc={self.popen.poll()} stderr: {tail}"


def wait_all(procs: dict[str, Proc], is_final: Callable[[dict[str, Any]], bool],
              deadline: float, keep_going: bool) -> dict[str, tuple[float, dict[str, Any]] | None]:
    """Wait until each process printed a final JSON line or exited; None for a failure.

    Without ``keep_going`` the wait stops at the first failure (the rest count as failed).
    """
    results: dict[str, tuple[float, dict[str, Any]] | None] = {}
    seen = dict.fromkeys(procs, 0)
    while len(results) < len(procs):
        for host, proc in procs.items():
            if host in results:
                continue
            finished = proc.finished  # read before the lines: no line can be missed
            new = proc.json_lines(seen[host])
            seen[host] += len(new)
            final = next(((t, o) for t, o in new if is_final(o)), None)
            if final is not None or finished:
                results[host] = final
                if final is None and not keep_going:
                    return results
        if len(results) < len(procs) and time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return results


def _proxy_free() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


@functools.cache
def _extra_path() -> str | None:
    """The directory to put first on a child's PYTHONPATH, or None when none is needed.

    Children run ``sys.executable -m MODULE`` from this process's working directory and find
    the project as any Python would: installed, on the inherited PYTHONPATH, or in the
    working directory. Only when that finds other code than this process runs (a test run
    whose ``pythonpath`` setting added a checkout, a checkout beside another installed copy)
    is this process's import root put first, so that a child never runs other code than its
    parent. Asked once, of a Python started the way the children are.
    """
    probe = subprocess.run(
        [sys.executable, "-c", "import bench, mcast; print(bench.__file__); print(mcast.__file__)"],
        capture_output=True, text=True, env=_proxy_free(), timeout=60, check=False)
    found = [Path(line).resolve().parent.parent for line in probe.stdout.split()]
    return None if found == [IMPORT_ROOT, IMPORT_ROOT] else str(IMPORT_ROOT)


def child_env() -> dict[str, str]:
    """Environment for lab and demo children: the same code as this process (see
    :func:`_extra_path`), unbuffered output, no proxies."""
    env = dict(_proxy_free(), PYTHONUNBUFFERED="1")
    extra = _extra_path()
    if extra is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH", "")) if p)
    return env


# ---------------------------------------------------------------- the lab

_CLOSE_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Lab:
    """A lab LAN: ``h0`` (sender, 198.18.0.1), ``h1..hN`` (receivers) and any ``extra_hosts``
    on one bridge.

    Use as a context manager; everything is removed on exit, on exceptions and on
    SIGINT/SIGTERM/SIGHUP (the handler raises ``SystemExit`` so ``with`` blocks unwind)::

        with Lab(receivers=3, rate_bps=100_000_000, loss=2.0) as lab:
            lab.exec("h1", ["ping", "-c1", lab.addr("h0")])
    """

    def __init__(self, receivers: int, rate_bps: int = 0, loss: float = 0.0,
                 loss_proto: str = "udp", burst: str = "256k", latency: str = "20ms",
                 extra_hosts: Sequence[str] = ()) -> None:
        if not 1 <= receivers <= MAX_RECEIVERS:
            raise ValueError(f"receivers must be 1..{MAX_RECEIVERS}")
        if loss_proto not in ("udp", "tcp", "all"):
            raise ValueError("loss_proto must be udp, tcp or all")
        self.receivers = receivers
        self.rate_bps = rate_bps or None
        self.loss = float(loss)
        self.loss_proto = loss_proto
        self.burst = burst
        self.latency = latency
        self.prefix = f"{PREFIX}{os.getpid()}_{next(_seq)}-"
        # extra hosts (a rogue, say) come after the receivers: no shaping, no loss
        self.hosts = [f"h{i}" for i in range(receivers + 1)] + list(extra_hosts)
        if len(set(self.hosts)) != len(self.hosts) or len(self.hosts) > MAX_RECEIVERS + 1:
            raise ValueError(f"lab hosts must be distinct and at most {MAX_RECEIVERS + 1}")
        self.procs: list[Proc] = []
        self._built = False
        self._closed = False
        self._old_handlers: dict[int, Any] = {}

    # names and addresses
    @property
    def switch(self) -> str:
        return self.prefix + "sw"

    def ns(self, host: str) -> str:
        return self.prefix + host

    def addr(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts.index(host) + 1}"

    @property
    def receiver_hosts(self) -> list[str]:
        return self.hosts[1 : self.receivers + 1]

    def port(self, host: str) -> str:
        """The switch-side veth of ``host`` (lives in the switch namespace)."""
        return f"p{self.hosts.index(host)}"

    # lifecycle
    def __enter__(self) -> Lab:
        self._install_signal_handlers()
        atexit.register(self.close)
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        for sig in _CLOSE_SIGNALS:
            with contextlib.suppress(ValueError, OSError):
                self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old)
        self._old_handlers.clear()

    def _ip(self, ns: str, *args: str) -> None:
        run(["ip", "-n", ns, *args])

    def build(self) -> None:
        if self._built:
            return
        self._built = True
        sw = self.switch
        run(["ip", "netns", "add", sw])
        self._ip(sw, "link", "set", "lo", "up")
        self._ip(sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        self._ip(sw, "link", "set", "br0", "up")
        for host in self.hosts:
            self._build_host(host)
        if self.rate_bps:
            self._tbf(self.ns("h0"), "eth0")  # the sender's uplink
            for host in self.receiver_hosts:
                self._tbf(sw, self.port(host))  # switch port towards each receiver
        if self.loss > 0:
            ruleset = nft_loss_ruleset(self.loss, self.loss_proto)
            for host in self.receiver_hosts:
                run(["ip", "netns", "exec", self.ns(host), "nft", "-f", "-"], input=ruleset)

    def _build_host(self, host: str) -> None:
        ns, sw, port = self.ns(host), self.switch, self.port(host)
        run(["ip", "netns", "add", ns])
        # Both ends are created inside lab namespaces: nothing ever appears in the root ns.
        self._ip(sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._ip(sw, "link", "set", port, "master", "br0", "up")
        for key in ("all", "default", "lo", "eth0"):  # no IPv6 chatter on the lab LAN
            run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                 f"net.ipv6.conf.{key}.disable_ipv6=1"], check=False)
        self._ip(ns, "link", "set", "lo", "up")
        self._ip(ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
        self._ip(ns, "link", "set", "eth0", "up")
        self._ip(ns, "route", "add", MCAST_ROUTE, "dev", "eth0")
        # Per-datagram loss needs software segmentation before the wire (DESIGN.md).
        run(["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx-udp-segmentation", "off"])
        if self.loss > 0 and self.loss_proto != "udp":
            # The same for TCP: a veth carries a whole TSO/GSO burst (up to 64 KB) as one
            # packet, and dropping it would lose ~44 segments at once. Segment before the wire.
            run(["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tso", "off", "gso", "off",
                 "gro", "off"])

    def _tbf(self, ns: str, dev: str, rate_bps: int | None = None) -> None:
        self._ip(ns, "link", "set", dev, "up")
        run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf",
             "rate", f"{rate_bps or self.rate_bps}bit", "burst", self.burst,
             "latency", self.latency])

    def limit_uplink(self, host: str, rate_bps: int) -> None:
        """Shape what ``host`` sends to ``rate_bps`` (a slow WAN link behind a codebase)."""
        self._tbf(self.ns(host), "eth0", rate_bps)

    def close(self) -> None:
        """Kill lab processes and delete every namespace of this lab. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        blocked = False
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(Exception):
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *_CLOSE_SIGNALS})
                blocked = True
        try:
            for proc in self.procs:
                with contextlib.suppress(Exception):
                    proc.kill()
            mine = [ns for ns in netns_list() if ns.startswith(self.prefix)]
            # hosts first, switch last; deleting a host ns destroys its veth pair
            mine.sort(key=lambda ns: ns == self.switch)
            errors = _delete_netns(mine)
            if errors:
                print(f"lab: teardown problems: {errors}", file=sys.stderr)
        except Exception as exc:  # close must never mask the original error
            print(f"lab: teardown failed: {exc!r}", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                atexit.unregister(self.close)
            self._restore_signal_handlers()
            if blocked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, *_CLOSE_SIGNALS})

    def leftovers(self) -> list[str]:
        return [ns for ns in netns_list() if ns.startswith(self.prefix)]

    # running things inside hosts
    def _wrap(self, host: str, argv: Sequence[str]) -> list[str]:
        if host != "sw" and host not in self.hosts:
            raise ValueError(f"unknown lab host {host!r}")
        ns = self.switch if host == "sw" else self.ns(host)
        return ["ip", "netns", "exec", ns, *argv]

    def exec(self, host: str, argv: Sequence[str], *, check: bool = True,
             input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host`` to completion; returns the CompletedProcess (text)."""
        return run(self._wrap(host, argv), check=check, input=input, timeout=timeout)

    async def aexec(self, host: str, argv: Sequence[str], *, check: bool = True,
                    **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Async (trio) variant of :meth:`exec`; output captured as bytes."""
        import trio

        kwargs.setdefault("capture_stdout", True)
        kwargs.setdefault("capture_stderr", True)
        return await trio.run_process(self._wrap(host, argv), check=check, **kwargs)

    def popen(self, host: str, argv: Sequence[str], *, stdin: bool = False,
              cwd: str | os.PathLike[str] | None = None) -> Proc:
        """Start ``argv`` inside ``host`` in the background; it is killed at :meth:`close`."""
        if self._closed:
            raise LabError("lab is closed")
        popen = subprocess.Popen(
            self._wrap(host, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, text=True, bufsize=1,
            errors="replace",
            env=child_env(), cwd=cwd, start_new_session=True)
        proc = Proc(host, argv, popen)
        self.procs.append(proc)
        return proc

    # counters
    def link_stats(self, host: str, dev: str = "eth0") -> dict[str, int]:
        ns = self.switch if host == "sw" else self.ns(host)
        out = run(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev]).stdout
        st = json.loads(out)[0]["stats64"]
        return {"tx_bytes": st["tx"]["bytes"], "tx_packets": st["tx"]["packets"],
                "rx_bytes": st["rx"]["bytes"], "rx_packets": st["rx"]["packets"],
                "rx_dropped": st["rx"]["dropped"], "tx_dropped": st["tx"]["dropped"]}

    def nft_dropped(self, host: str) -> int | None:
        """Packets dropped so far by the loss rule of receiver ``host`` (None without loss)."""
        if self.loss <= 0 or host == "h0":
            return None
        out = self.exec(host, ["nft", "-j", "list", "table", "netdev", "lab"], check=False).stdout
        with contextlib.suppress(ValueError, KeyError, TypeError):
            for item in json.loads(out)["nftables"]:
                for expr in item.get("rule", {}).get("expr", []):
                    if "counter" in expr:
                        return int(expr["counter"]["packets"])
        return None


@contextlib.contextmanager
def lab(**kwargs: Any) -> Iterator[Lab]:
    with Lab(**kwargs) as the_lab:
        yield the_lab


# ---------------------------------------------------------------- UDP multicast probe

_PROBE_RECV = r"""
import json, socket, sys, time
group, iface, port, want = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: never drop in our socket
s.bind((group, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton(group) + socket.inet_aton(iface))
print(json.dumps({"event": "ready"}), flush=True)
seen = set()
s.settimeout(10)
try:
    while len(seen) < want:
        data = s.recv(2048)
        seen.add(int.from_bytes(data[:4], "big"))
        s.settimeout(1.0)
except TimeoutError:
    pass
print(json.dumps({"event": "done", "received": len(seen)}), flush=True)
"""

_PROBE_SEND = r"""
import socket, sys, time
group, iface = sys.argv[1], sys.argv[2]
port, count, size = (int(a) for a in sys.argv[3:6])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
pad = bytes(size - 4)
for i in range(count):
    s.sendto(i.to_bytes(4, "big") + pad, (group, port))
    if i % 50 == 49:
        time.sleep(0.002)
"""


def udp_probe(lab: Lab, count: int = 5000, size: int = 200, group: str = "239.255.77.9",
              port: int = 47999, hosts: Sequence[str] | None = None) -> dict[str, float]:
    """Multicast ``count`` numbered datagrams from h0; return each receiver's delivered fraction."""
    hosts = list(hosts or lab.receiver_hosts)
    recvs = {h: lab.popen(h, [sys.executable, "-c", _PROBE_RECV, group, lab.addr(h),
                              str(port), str(count)]) for h in hosts}
    for p in recvs.values():
        if p.wait_json(lambda o: o.get("event") == "ready", 10) is None:
            raise LabError(f"probe receiver did not start: {p.describe()}")
    lab.exec("h0", [sys.executable, "-c", _PROBE_SEND, group, lab.addr("h0"), str(port),
                    str(count), str(size)], timeout=120)
    result = {}
    for h, p in recvs.items():
        done = p.wait_json(lambda o: o.get("event") == "done", 30)
        if done is None:
            raise LabError(f"probe receiver failed: {p.describe()}")
        result[h] = done[1]["received"] / count
        p.wait(5)
    return result
