"""The engine beside other ways to copy one file to many hosts, on the same namespace lab.

One lab (:class:`bench.labnet.Lab`: h0 sends, h1..hN receive, tbf rate, nftables UDP loss as
:mod:`bench.lab` sets them), one random file, and each tool in turn:

* ``mcast``: the CLI as a user runs it: ``snapshot`` (before the clock), ``recv`` on every
  receiver, ``send`` on h0, all keyed with ``--session-key-file``;
* ``udpcast``: ``udp-receiver`` on every receiver, ``udp-sender --min-receivers N``;
* ``uftp``: ``uftpd`` in the foreground on every receiver (a destination dir each),
  ``uftp -H <receivers>`` on h0; uftpd never exits, so a receiver's end is the sender's exit
  (it exits once every listed receiver confirmed the file) and uftpd is stopped after it;
* ``http``: nginx on h0 serving the file (started first, polled until it answers), ``curl``
  on every receiver.

Each tool is timed the same way: its receivers start first and are ready (joined their
multicast group, seen in the namespace's ``ip maddr``; for http the server answers), the
clock runs from the sender's process start (http: the clients' start) to the last
receiver's exit (told by a pidfd the moment it happens), nobody is niced, and a receiver
counts only if its file re-hashes equal on disk. A tool that is not installed is skipped
with the reason.

    python -m bench.peers --receivers 8 --size 64M --rate 100mbit --loss 2 \\
        --tools mcast,udpcast,uftp [--plot peers.png]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.lab import (
    DEFAULT_MCAST_CMD,
    WORKDIR_PREFIX,
    _wait_joined,
    cleanup_stale_workdirs,
    mcast_cli_has_send,
)
from bench.labnet import Lab, LabError, Proc, cleanup_stale
from bench.labpkg import BIG_NAME, Package, make_package, sha256_file
from bench.pyc import compile_engine
from mcast.units import format_rate, parse_rate, parse_size

TOOLS = ("mcast", "udpcast", "uftp", "http")
MCAST_GROUP, MCAST_PORT = "239.255.78.1", 47100
UDPCAST_RDV, UDPCAST_DATA, UDPCAST_PORT = "239.255.78.2", "239.255.78.3", 47200
UFTP_PUB, UFTP_PRIV, UFTP_PORT = "239.255.78.4", "239.255.78.5", 47300
HTTP_PORT = 8081
READY_S = 60.0  # how long a receiver may take to show that it listens


class ToolFailed(RuntimeError):
    """A tool ran but did not deliver (the message says why)."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def tool_missing(tool: str) -> str | None:
    """Why ``tool`` cannot run here, or None."""
    if tool == "mcast":
        ok, why = mcast_cli_has_send()
        return None if ok else why
    needs = {
        "udpcast": ("udp-sender", "udp-receiver"),
        "uftp": ("uftp", "uftpd"),
        "http": ("nginx", "curl"),
    }[tool]
    lost = [b for b in needs if _which(b) is None]
    return f"not installed: {', '.join(lost)}" if lost else None


def _exit_times(procs: dict[str, Proc], deadline: float) -> dict[str, float | None]:
    """Each process's exit time (monotonic), None for one still running at ``deadline``."""
    times: dict[str, float | None] = {}

    def watch(host: str, proc: Proc) -> None:
        times[host] = proc.exit_time(deadline)

    threads = [threading.Thread(target=watch, args=item, daemon=True) for item in procs.items()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {host: times.get(host) for host in procs}


def _wait_ready(lab: Lab, procs: dict[str, Proc], group: str) -> None:
    failed = _wait_joined(lab, procs, group, READY_S)
    if failed:
        raise ToolFailed(
            "receivers not listening: " + "; ".join(procs[h].describe() for h in sorted(failed))
        )


def _finish(
    lab: Lab,
    pkg: Package,
    outs: dict[str, Path],
    t0: float,
    ends: dict[str, float | None],
    procs: dict[str, Proc] | None = None,
) -> dict[str, Any]:
    """The tool's wall time and the receivers whose file re-hashes equal on disk."""
    _, sha = pkg.files[BIG_NAME]
    verified = [
        h
        for h, path in outs.items()
        if ends.get(h) is not None and path.is_file() and sha256_file(path) == sha
    ]
    done = [t for t in ends.values() if t is not None]
    all_done = len(done) == len(outs)
    return {
        "wall_s": round(max(done) - t0, 4) if all_done else None,
        "last_exit_s": round(max(done) - t0, 4) if done else None,  # of those that exited
        "receivers_verified": len(verified),
        "receivers": len(outs),
        "unverified": sorted(set(outs) - set(verified)),
        # the last words of a receiver that did not deliver
        **(
            {"why": {h: procs[h].describe()[-400:] for h in sorted(set(outs) - set(verified))}}
            if procs and len(verified) < len(outs)
            else {}
        ),
    }


# ---------------------------------------------------------------- the tools


def run_mcast(lab: Lab, pkg: Package, work: Path, rate_bps: int, timeout: float) -> dict[str, Any]:
    cli = list(DEFAULT_MCAST_CMD)
    snap, key, session_key = work / "snapshot.xml", work / "lab.key", work / "session.key"
    lab.exec(
        "h0",
        [*cli, "snapshot", str(pkg.root), "-o", str(snap), "--key", str(key)],
        timeout=max(120, pkg.total / 20e6),
    )
    session_key.write_text(os.urandom(32).hex())
    pub = key.with_name(key.name + ".pub")
    common = [
        "--snapshot",
        str(snap),
        "--group",
        MCAST_GROUP,
        "--port",
        str(MCAST_PORT),
        "--session-key-file",
        str(session_key),
        "--trust-key",
        str(pub),
        "--json",
    ]
    outs = {h: work / "mcast" / h for h in lab.receiver_hosts}
    recv = {}
    for host, out in outs.items():
        out.mkdir(parents=True)
        recv[host] = lab.popen(
            host, [*cli, "recv", "--out", str(out), "--interface", lab.addr(host), *common]
        )
    _wait_ready(lab, recv, MCAST_GROUP)
    rate = ["--rate", format_rate(rate_bps) if rate_bps else "0"]  # 0: no cap, find the pace
    t0 = time.monotonic()
    sender = lab.popen(
        "h0", [*cli, "send", str(pkg.root), "--interface", lab.addr("h0"), *rate, *common]
    )
    ends = _exit_times(recv, t0 + timeout)
    sender.kill()
    for host, proc in recv.items():  # a receiver that exited without its done line failed
        last = proc.last_json()
        if ends[host] is not None and not (
            last and last[1].get("event") == "done" and last[1].get("complete") is True
        ):
            ends[host] = None
    return {
        **_finish(lab, pkg, {h: o / BIG_NAME for h, o in outs.items()}, t0, ends, recv),
        "command": "mcast send/recv",
    }


def run_udpcast(
    lab: Lab, pkg: Package, work: Path, rate_bps: int, timeout: float
) -> dict[str, Any]:
    addrs = [
        "--interface",
        "eth0",
        "--mcast-rdv-address",
        UDPCAST_RDV,
        "--portbase",
        str(UDPCAST_PORT),
        "--nokbd",
    ]
    outs = {h: work / "udpcast" / h / BIG_NAME for h in lab.receiver_hosts}
    recv = {}
    for host, out in outs.items():
        out.parent.mkdir(parents=True)
        recv[host] = lab.popen(host, ["udp-receiver", *addrs, "--file", str(out)])
    _wait_ready(lab, recv, UDPCAST_RDV)
    rate = ["--max-bitrate", f"{rate_bps // 1000}k"] if rate_bps else []
    t0 = time.monotonic()
    sender = lab.popen(
        "h0",
        [
            "udp-sender",
            *addrs,
            "--mcast-data-address",
            UDPCAST_DATA,
            "--ttl",
            "1",
            "--min-receivers",
            str(len(outs)),
            *rate,
            "--file",
            str(pkg.root / BIG_NAME),
        ],
    )
    ends = _exit_times(recv, t0 + timeout)
    sender.kill()
    for host, proc in recv.items():
        if ends[host] is not None and proc.popen.returncode != 0:
            ends[host] = None
    return {**_finish(lab, pkg, outs, t0, ends, recv), "command": "udp-sender/udp-receiver"}


def run_uftp(lab: Lab, pkg: Package, work: Path, rate_bps: int, timeout: float) -> dict[str, Any]:
    outs = {h: work / "uftp" / h / BIG_NAME for h in lab.receiver_hosts}
    recv = {}
    for host, out in outs.items():
        out.parent.mkdir(parents=True)
        recv[host] = lab.popen(
            host,
            [
                "uftpd",
                "-d",
                "-I",
                "eth0",
                "-M",
                UFTP_PUB,
                "-p",
                str(UFTP_PORT),
                "-D",
                str(out.parent),
                "-P",
                str(work / "uftp" / f"{host}.pid"),
            ],
        )
    _wait_ready(lab, recv, UFTP_PUB)
    # UFTP's default is 1,000 kbit/s; -1 is "as fast as the interface allows"
    rate = ["-R", str(max(1, rate_bps // 1000)) if rate_bps else "-1"]
    t0 = time.monotonic()
    sender = lab.popen(
        "h0",
        [
            "uftp",
            "-I",
            "eth0",
            "-M",
            UFTP_PUB,
            "-P",
            UFTP_PRIV,
            "-p",
            str(UFTP_PORT),
            "-t",
            "1",
            "-H",
            ",".join(lab.addr(h) for h in outs),
            *rate,
            BIG_NAME,
        ],
        cwd=pkg.root,
    )  # a relative name: the receivers put it under their -D dir
    # uftpd stays up: a receiver is done when the sender, which waits for every listed
    # receiver to confirm the file, exits
    end = _exit_times({"h0": sender}, t0 + timeout)["h0"]
    if end is not None and sender.popen.returncode != 0:
        raise ToolFailed(f"uftp sender failed: {sender.describe()}")
    for proc in recv.values():
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
        proc.kill()
    return {**_finish(lab, pkg, outs, t0, dict.fromkeys(outs, end), recv), "command": "uftp/uftpd"}


NGINX_CONF = """daemon off;
user root;  # the file sits in a private temp dir
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx.err;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    server {{
        listen {addr}:{port};
        root {root};
    }}
}}
"""


def run_http(lab: Lab, pkg: Package, work: Path, rate_bps: int, timeout: float) -> dict[str, Any]:
    home = work / "http"
    (home / "tmp").mkdir(parents=True)
    conf = home / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(work=home, addr=lab.addr("h0"), port=HTTP_PORT, root=pkg.root)
    )
    server = lab.popen("h0", [_which("nginx") or "nginx", "-c", str(conf), "-p", str(home)])
    url = f"http://{lab.addr('h0')}:{HTTP_PORT}/{BIG_NAME}"
    first = lab.receiver_hosts[0]
    deadline = time.monotonic() + READY_S
    while lab.exec(first, ["curl", "-sfI", url], check=False).returncode != 0:
        if server.popen.poll() is not None or time.monotonic() > deadline:
            raise ToolFailed(f"nginx does not answer: {server.describe()}")
        time.sleep(0.05)
    outs = {h: home / h / BIG_NAME for h in lab.receiver_hosts}
    for out in outs.values():
        out.parent.mkdir()
    t0 = time.monotonic()
    clients = {h: lab.popen(h, ["curl", "-sSf", "-o", str(out), url]) for h, out in outs.items()}
    ends = _exit_times(clients, t0 + timeout)
    for host, proc in clients.items():
        if ends[host] is not None and proc.popen.returncode != 0:
            ends[host] = None
    server.kill()
    return {**_finish(lab, pkg, outs, t0, ends, clients), "command": "nginx/curl"}


RUNNERS: dict[str, Callable[[Lab, Package, Path, int, float], dict[str, Any]]] = {
    "mcast": run_mcast,
    "udpcast": run_udpcast,
    "uftp": run_uftp,
    "http": run_http,
}


# ---------------------------------------------------------------- one run


def run_peers(
    receivers: int,
    size: int,
    rate_bps: int,
    loss: float,
    tools: list[str],
    *,
    timeout: float | None = None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Build one lab, run every tool in turn on the same file, tear it down; the report."""
    line_rate_s = size * 8 / rate_bps if rate_bps else None
    if timeout is None:  # per tool: a unicast copy per receiver at worst
        timeout = 60 + 5 * (line_rate_s or size * 8 / 1e9) * receivers
    work = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=workdir))
    results: dict[str, dict[str, Any]] = {}
    try:
        pkg = make_package(work / "pkg", size)
        for rel in list(pkg.files):  # one file: what every tool can send
            if rel != BIG_NAME:
                (pkg.root / rel).unlink()
                del pkg.files[rel]
        shutil.rmtree(pkg.root / "etc", ignore_errors=True)
        with Lab(receivers=receivers, rate_bps=rate_bps, loss=loss) as lab:
            for tool in tools:
                why = tool_missing(tool)
                if why is not None:
                    results[tool] = {"skipped": why}
                    continue
                try:
                    results[tool] = RUNNERS[tool](lab, pkg, work, rate_bps, timeout)
                except (ToolFailed, LabError, subprocess.SubprocessError, OSError) as exc:
                    results[tool] = {"failed": str(exc)[:2000]}
                finally:
                    for proc in lab.procs:  # nothing of one tool runs into the next
                        proc.kill()
        leftovers = lab.leftovers()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results.get("mcast", {}).get("wall_s")
    for res in results.values():
        wall = res.get("wall_s")
        if "skipped" in res or "failed" in res:
            continue
        if wall is None:
            res["failed"] = f"not every receiver finished within {timeout:.0f} s"
        res["ratio_line_rate"] = round(wall / line_rate_s, 3) if wall and line_rate_s else None
        res["ratio_mcast"] = round(wall / base, 3) if wall and base else None
        res["verified"] = res["receivers_verified"] == receivers
    return {
        "receivers": receivers,
        "size": size,
        "rate_bps": rate_bps,
        "loss": loss,
        "loss_proto": "udp",
        "line_rate_s": round(line_rate_s, 4) if line_rate_s else None,
        "timeout_s": round(timeout, 1),
        "tools": results,
        "lab_leftovers": leftovers,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """Bars of wall time per tool, with the line-rate time as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["tools"])
    walls = [report["tools"][n].get("wall_s") or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(names, walls, color="tab:blue")
    for bar, name in zip(bars, names, strict=True):
        res = report["tools"][name]
        label = (
            f"{res['wall_s']:.1f} s"
            if res.get("wall_s")
            else "skipped"
            if "skipped" in res
            else "failed"
        )
        ax.annotate(
            label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom"
        )
    if report.get("line_rate_s"):
        ax.axhline(
            report["line_rate_s"],
            color="tab:red",
            linestyle="--",
            label=f"line rate ({report['line_rate_s']:.1f} s)",
        )
        ax.legend()
    ax.set_ylabel("wall time, s (sender start to last receiver)")
    ax.set_title(
        f"{report['size'] >> 20} MiB to {report['receivers']} receivers, "
        f"{format_rate(report['rate_bps'])}, {report['loss']}% UDP loss"
    )
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0])
    ap.add_argument("--receivers", type=int, default=3)
    ap.add_argument("--size", type=parse_size, default="16M")
    ap.add_argument("--rate", type=parse_rate, default="100mbit")
    ap.add_argument("--loss", type=float, default=0.0, help="percent of UDP dropped per receiver")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma list of {', '.join(TOOLS)}")
    ap.add_argument("--plot", type=Path, default=None, metavar="FILE.png")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per tool")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not tools or any(t not in TOOLS for t in tools):
        ap.error(f"--tools takes a comma list of {', '.join(TOOLS)}")
    if not 0 <= args.loss <= 100:
        ap.error("--loss is a percentage, 0..100")
    if os.geteuid() != 0:
        print("bench.peers needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cleanup_stale()
    cleanup_stale_workdirs(args.workdir)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    compile_engine()  # as installed: its processes do not compile our modules from source
    report = run_peers(
        args.receivers,
        args.size,
        args.rate,
        args.loss,
        tools,
        timeout=args.timeout,
        workdir=args.workdir,
    )
    if args.plot is not None:
        plot(report, args.plot)
        report["plot"] = str(args.plot)
    print(json.dumps(report, indent=2), flush=True)
    ran = [r for r in report["tools"].values() if "skipped" not in r]
    return 0 if ran and all(r.get("verified") for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
