"""The ``mcast`` command line: snapshot, send, recv, fetch, sessions, and plug-in commands.

Owns argument parsing, turning every expected failure into one clear line and an exit code,
and the two output styles: a rich progress bar on a terminal, or JSON lines (``--json``)
whose last line is a summary with ``"event": "done"`` (or ``"error"``).

Every argument is checked when it is given, by its argparse type: a bad value (a negative
``--tries``, ``--interface notanip``, a group outside 239.255.0.0/16, a malformed key file)
is one line on stderr and exit 2; a file that cannot be read is exit 4. Errors raised later
are ``McastError``s whose ``exit_code`` is the status (see :mod:`mcast.errors`): 0 done,
1 the session ended before the package was complete, 2 bad arguments, 3 snapshot not trusted
or malformed, 4 file or disk error, 5 network or safety refusal, 130 interrupted.

``send``, ``recv`` and ``fetch`` run keyed: without ``--session-key-file`` they refuse to
start (exit 2) unless ``--insecure`` asks for the unauthenticated mode, which they say in a
warning line on stderr; their ``start`` and ``done`` JSON lines carry ``"authenticated"``.

Plug-in commands: the engine imports nothing above it. Other packages add subcommands
through the entry-point group ``mcast.commands``: an entry point ``NAME = "module:func"``
makes ``mcast NAME ARGS...`` call ``func(ARGS)`` (a list of strings; it returns the exit
status). The project's ``bench`` package registers ``demo = "bench.demo:main"`` in
pyproject.toml, so ``mcast demo`` exists once the project is installed
(``pip install -e .``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mcast import argtypes
from mcast.argtypes import Parser, bad, one_line, read_file
from mcast.errors import (
    ExitCode,
    McastError,
    NetworkError,
    StorageError,
    TrustError,
    UsageError,
)
from mcast.events import FailureKind
from mcast.send_driver import SendProgress, send
from mcast.sender import SenderConfig
from mcast.snapshot import (
    Snapshot,
    SnapshotError,
    TrustStore,
    build_snapshot,
    generate_key,
    load_private_key,
    parse_snapshot_xml,
    public_key_pem,
    save_private_key,
)
from mcast.udp import (
    AUTO_INTERFACE,
    DEFAULT_GROUP,
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    DISCOVERY_GROUP,
    DISCOVERY_PORT,
    Channel,
    Endpoint,
    UnsafeAddress,
    check_endpoint,
    resolve_interface,
)
from mcast.units import parse_rate, parse_size
from mcast.wire import Announce, BadPacket, End, decode_untrusted

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

PLUGIN_GROUP = "mcast.commands"
BUILTIN = ("snapshot", "send", "recv", "fetch", "sessions", "dissect")
# Plug-in commands the documentation promises, and where they come from when not installed.
DOCUMENTED_PLUGINS = {"demo": "the project's bench package (pip install -e . in the repository)"}


# ---------------------------------------------------------------------------------------
# output


class Output:
    """JSON lines on stdout, or human lines and a progress bar on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._progress: Any = None
        self._task: Any = None
        self._last_line = float("-inf")

    def due(self, interval: float, *, now_anyway: bool = False) -> bool:
        """True at most once per ``interval`` seconds (or at once with ``now_anyway``):
        how often a progress line is worth printing."""
        now = time.monotonic()
        if now_anyway or now - self._last_line >= interval:
            self._last_line = now
            return True
        return False

    def event(self, name: str, **fields: Any) -> None:
        if self.as_json:
            print(json.dumps({"event": name, **fields}, default=str), flush=True)

    def say(self, text: str) -> None:
        if not self.as_json:
            self._console().print(text)

    def bar(self, description: str, total: float) -> None:
        if self.as_json or not sys.stderr.isatty():
            return
        # rich is imported only when there is a terminal to draw on (about 30 ms saved for
        # JSON output and for the benchmarks that run this CLI many times)
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console(),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def update(self, completed: float, description: str | None = None) -> None:
        if self._progress is not None:
            kw = {"description": description} if description else {}
            self._progress.update(self._task, completed=completed, **kw)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _console(self) -> Any:
        from rich.console import Console  # for human output only, as in bar()

        return Console(stderr=True)


@contextlib.contextmanager
def engine_errors(out: Output) -> Iterator[None]:
    """Close the progress display however the engine ends; a socket error is exit 5 (the
    engine's own failures are McastErrors already and pass through)."""
    try:
        yield
    except OSError as exc:
        raise NetworkError(f"network error: {exc}") from None
    finally:
        out.close()


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------------------------------
# argument types only this command line takes; the others, and the parser class, are shared
# with mcast-agent and mcast-ns in mcast.argtypes. A bad value raises ArgumentTypeError
# (one line, exit 2); a file that cannot be read raises a StorageError, which argparse lets
# through to main (exit 4).


def _block_size(text: str) -> int:
    size = parse_size(text)
    if size <= 0 or size % 2:
        bad(f"block size {text!r} is not a positive even number of bytes")
    return size


def _new_file(text: str) -> Path:
    """A file to write (the snapshot): its directory must exist."""
    path = Path(text)
    if not path.parent.is_dir():
        raise StorageError(f"cannot write {path}: no directory {path.parent}")
    if path.is_dir():
        raise StorageError(f"cannot write {path}: it is a directory")
    return path


def _out_dir(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise StorageError(f"destination {path} exists and is not a directory")
    return path


def _key_file(what: str) -> Callable[[str], bytes]:
    """An HMAC key file: the key as hex digits (at least 32) or as 32 raw bytes."""

    def read(text: str) -> bytes:
        path = Path(text)
        raw = read_file(path, what)
        try:
            key = bytes.fromhex(raw.strip().decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            if len(raw) != 32:
                bad(f"{what} {path} is neither hex digits nor 32 raw bytes")
            key = raw
        if len(key) < 16:
            bad(f"{what} in {path} is shorter than 16 bytes")
        return key

    read.__name__ = what
    return read


session_key = _key_file("session key")
discovery_key = _key_file("discovery key")


@dataclass(frozen=True)
class SigningKey:
    path: Path
    key: Ed25519PrivateKey | None  # None: the file does not exist yet and will be made


def signing_key(text: str) -> SigningKey:
    path = Path(text)
    if not path.exists():
        if not path.parent.is_dir():
            raise StorageError(f"cannot create signing key {path}: no directory {path.parent}")
        return SigningKey(path, None)
    read_file(path, "signing key")  # unreadable: exit 4; malformed: exit 2
    try:
        return SigningKey(path, load_private_key(path))
    except SnapshotError:
        bad(f"signing key {path} is not an Ed25519 private key (PEM)")


def snapshot_file(text: str) -> Snapshot:
    """A snapshot document, parsed (not yet checked against the trust key): exit 3 if it is
    not well formed."""
    path = Path(text)
    data = read_file(path, "snapshot")
    try:
        return parse_snapshot_xml(data)
    except SnapshotError as exc:
        raise TrustError(f"snapshot {path}: {exc}") from None


def _discovery_key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--discovery-key-file", dest="discovery_key", type=discovery_key,
                   help="file with the site's discovery key, under which sessions announce"
                   " on the discovery group (default: the session key)")  # fmt: skip


def _hold_arg(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument("--hold", type=argtypes.non_negative_seconds, default=default,
                   help="a new session announces this long before its first data, so that"
                   " receivers arriving together start together")  # fmt: skip


def _channel_args(p: argparse.ArgumentParser, group: str, port: int, *, auto: bool = False) -> None:
    if auto:
        p.add_argument("--interface", type=argtypes.interface, default=DEFAULT_INTERFACE,
                       help="local IPv4 address multicast is pinned to, or 'auto': the one "
                       "that routes to the first codebase")  # fmt: skip
    else:
        p.add_argument("--interface", type=argtypes.ipv4, default=DEFAULT_INTERFACE,
                       help="local IPv4 address multicast is pinned to")  # fmt: skip
    p.add_argument("--group", type=argtypes.group, default=group,
                   help="multicast group (239.255.0.0/16)")  # fmt: skip
    p.add_argument("--port", type=argtypes.port, default=port)
    p.add_argument("--session-key-file", dest="session_key", type=session_key,
                   help="file with the session's HMAC key (hex, or 32 raw bytes)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="JSON lines on stdout")


def _insecure_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure", action="store_true",
                   help="run without a session key: unauthenticated datagrams, which any host"
                   " on the LAN can forge or replay (refused unless asked for)")  # fmt: skip


def _channel(args: argparse.Namespace, server: str | None = None) -> Channel:
    """The channel of the arguments; ``--interface auto`` routes to ``server`` (a URL)."""
    interface = args.interface
    try:
        if interface == AUTO_INTERFACE:
            if server is None:
                raise UsageError("--interface auto needs a --codebase to route to")
            url = urlsplit(server)
            port = url.port or (443 if url.scheme == "https" else 80)
            interface = resolve_interface(interface, args.group, url.hostname or "", port)
        check_endpoint(args.group, interface)
    except UnsafeAddress as exc:
        raise NetworkError(str(exc)) from None
    return Channel(args.group, args.port, interface)


INSECURE_WARNING = (
    "mcast: warning: --insecure: no session key, so any host on the LAN can forge or replay"
    " this session's datagrams (the signed snapshot still guards every byte written)"
)


def authenticated(args: argparse.Namespace) -> bool:
    """Whether the session is keyed. Without ``--session-key-file`` a command that touches a
    session refuses to start (exit 2) unless ``--insecure`` asks for the unauthenticated mode,
    which is then said on stderr."""
    if args.session_key is not None:
        if args.insecure:
            raise UsageError("--insecure and --session-key-file contradict each other: give one")
        return True
    if not args.insecure:
        raise UsageError(
            f"{args.command} needs a session key: give --session-key-file FILE, or --insecure"
            " to run unauthenticated"
        )
    print(INSECURE_WARNING, file=sys.stderr, flush=True)
    return False


def verified_snapshot(snap: Snapshot, public: Ed25519PublicKey | None) -> Snapshot:
    """The snapshot, checked against the trust key when one is given (exit 3 if not)."""
    if public is not None:
        TrustStore.of(public).verify(snap, time.time())
    return snap


# ---------------------------------------------------------------------------------------
# commands


def cmd_snapshot(args: argparse.Namespace, out: Output) -> int:
    signer: SigningKey = args.key
    key = signer.key
    try:
        if key is None:
            key = generate_key()
            save_private_key(key, signer.path)
            out.say(f"created signing key {signer.path}")
        pub_path = signer.path.with_name(signer.path.name + ".pub")
        if not pub_path.exists():
            pub_path.write_bytes(public_key_pem(key.public_key()))
        try:
            snap = build_snapshot(
                args.path,
                args.name,
                version=args.version,
                block_size=args.block_size,
                valid_for=args.valid_days * 86400,
            ).signed(key)
        except SnapshotError as exc:  # an unsafe file name or a special file in the tree
            raise StorageError(str(exc)) from None
        args.output.write_bytes(snap.to_xml())
    except OSError as exc:
        raise StorageError(f"{exc.filename or args.path}: {exc.strerror or exc}") from None
    out.event(
        "done", snapshot=str(args.output), hash=snap.package_hash_hex, size=snap.total_size,
        files=len(snap.files), units=snap.block_count, public_key=str(pub_path),
    )  # fmt: skip
    out.say(
        f"{args.output}: {len(snap.files)} files, {snap.total_size:,} bytes,"
        f" hash {snap.package_hash_hex[:16]}…, signed by {snap.key_id}"
    )
    return ExitCode.OK


def cmd_send(args: argparse.Namespace, out: Output) -> int:
    keyed = authenticated(args)
    snap = verified_snapshot(args.snapshot, args.trust_key)
    ch = _channel(args)
    cfg = SenderConfig(
        group=ch.group, port=ch.port, rate_bps=args.rate, linger=args.linger,
        receiver_timeout=args.receiver_timeout, hold_s=args.hold,
    )  # fmt: skip
    out.event("start", hash=snap.package_hash_hex, size=snap.total_size, rate_bps=args.rate,
              group=ch.group, port=ch.port, interface=ch.interface,
              authenticated=keyed)  # fmt: skip
    if args.wait_go:  # everything is loaded: start on a line on stdin (benchmarks, udp-sender)
        out.event("ready")
        sys.stdin.readline()
    out.bar(f"sending {snap.name}", snap.total_size)

    def progress(p: SendProgress) -> None:
        out.update(p.progress * snap.total_size,
                   f"sending {snap.name} ({p.receivers_active} receivers)")  # fmt: skip
        if out.due(1.0):
            out.event("progress", progress=round(p.progress, 4), receivers=p.receivers_active,
                      bytes_sent=p.bytes_sent, repairs=p.repairs_sent)  # fmt: skip

    group, port = args.discovery
    disc = None if args.no_discovery else Channel(group, port, ch.interface)
    with engine_errors(out):
        result = trio.run(lambda: send(snap, args.path, channel=ch, key=args.session_key,
                                       config=cfg, progress=progress, discovery=disc,
                                       discovery_key=args.discovery_key))  # fmt: skip
    s = result.stats
    out.event(
        "done", authenticated=keyed, reason=result.reason, receivers_done=result.receivers_done,
        receivers_lost=result.receivers_lost, bytes_sent=result.bytes_sent,
        wall_s=round(result.wall_s, 3), data_packets=s.data_sent, repair_packets=s.parity_sent,
        naks=s.naks_received, feedback_refused=s.feedback_refused, peak_rss_mb=peak_rss_mb(),
        rate_bps=s.rate_bps, rate_cuts=s.rate_cuts, timeline=result.timeline,
    )  # fmt: skip
    out.say(
        f"session ended ({result.reason}): {result.receivers_done} receivers done,"
        f" {result.receivers_lost} lost; {s.data_sent:,} data + {s.parity_sent:,} repair packets"
    )
    return ExitCode.OK


_FOLLOW = (FailureKind.SILENT, FailureKind.ENDED)  # the sender went away: it may come back


def cmd_recv(args: argparse.Namespace, out: Output) -> int:
    # the receive side is imported here: ``mcast send`` should not wait for it at start-up
    from mcast.partial import PartialDownload
    from mcast.receiver import ReceiverConfig
    from mcast.recv_driver import ReceiveProgress, ReceiveResult, receive

    keyed = authenticated(args)
    snap = verified_snapshot(args.snapshot, args.trust_key)
    ch = _channel(args)
    cfg = ReceiverConfig(silence_timeout=args.timeout)
    out.event("start", hash=snap.package_hash_hex, size=snap.total_size, out=str(args.out),
              authenticated=keyed)  # fmt: skip
    out.bar(f"waiting for {snap.name}", snap.total_size)
    joined = [False]

    def progress(p: ReceiveProgress) -> None:
        out.update(p.bytes_verified, f"receiving {snap.name}" if p.joined else None)
        if p.joined and not joined[0]:
            joined[0] = True
            out.event("joined")
        if out.due(0.2):  # often enough for an observer to act at a given fraction
            out.event("progress", units=p.units_verified, total=p.units_total,
                      bytes=p.bytes_verified)  # fmt: skip

    kept = {"units_kept": 0, "sessions_followed": 0}  # across restarts of the sender

    async def follow() -> tuple[ReceiveResult, int]:
        """Receive, and when the sender dies or ends early, wait for the next session of the
        same snapshot (a restarted sender): every verified unit is kept across sessions."""
        part = PartialDownload.open(snap, args.out)
        received = 0
        try:
            while True:
                result = await receive(snap, args.out, channel=ch, key=args.session_key,
                                       config=cfg, progress=progress, part=part)  # fmt: skip
                received += result.bytes_received
                if result.complete or result.failure not in _FOLLOW:
                    break
                kept["units_kept"] = result.units_verified
                kept["sessions_followed"] += 1
                out.event("session_lost", session=f"{result.session_id or 0:x}",
                          reason=result.reason, units_kept=result.units_verified)  # fmt: skip
                out.say(f"session lost ({result.reason}); {result.units_verified} units kept,"
                        " waiting for the sender to come back")  # fmt: skip
            if result.complete:
                result.files = part.finish()
        except BaseException:
            part.checkpoint()
            part.close()
            raise
        if not result.complete:
            part.checkpoint()
            part.close()
        return result, received

    with engine_errors(out):
        result, received = trio.run(follow)
    s = result.stats
    assert s is not None
    out.event(
        "done", authenticated=keyed, verified=result.complete, complete=result.complete,
        reason=result.reason,
        bytes=result.bytes_total if result.complete else received,
        bytes_multicast=received, units=result.units_verified,
        units_total=result.units_total, units_resumed=result.units_resumed,
        wall_s=round(result.wall_s, 3), peak_rss_mb=peak_rss_mb(), session=result.session_id,
        naks_sent=s.naks_sent, repairs=s.parity_shards, bad_packets=s.bad_packets,
        verify_failures=s.verify_failures, timeline=result.timeline, **kept,
    )  # fmt: skip
    if result.complete:
        out.say(f"{snap.name}: {len(result.files)} files verified in {args.out}")
        return ExitCode.OK
    out.say(
        f"{snap.name}: incomplete ({result.reason}); {result.units_verified}/{result.units_total}"
        " units kept for resume"
    )
    return ExitCode.INCOMPLETE


def cmd_fetch(args: argparse.Namespace, out: Output) -> int:
    # Imported here, not at the top: mcast.fetch pulls in httpx (about 0.2 s), which no
    # other command needs.
    from mcast.fetch import FetchProgress, FetchSettings, fetch

    keyed = authenticated(args)
    snap = verified_snapshot(args.snapshot, args.trust_key)
    ch = _channel(args, (args.codebase or [None])[0])
    settings = FetchSettings(
        multicast_enabled=not args.no_multicast, min_multicast_size=args.min_multicast_size,
        max_sessions_per_subnet=args.max_sessions, multicast_tries=args.tries,
        time_budget_s=args.budget, speed_test=not args.no_speed_test,
        session_key=args.session_key, interface=ch.interface,
        discovery_group=ch.group, discovery_port=ch.port, rate_bps=args.rate,
        serve_after_s=args.linger, discovery_key=args.discovery_key, hold_s=args.hold,
        min_session_bps=args.min_session_kbps * 1024,
    )  # fmt: skip
    out.event("start", hash=snap.package_hash_hex, size=snap.total_size, out=str(args.out),
              authenticated=keyed)  # fmt: skip
    out.bar(f"fetching {snap.name}", snap.total_size)
    last_phase = [""]

    def progress(p: FetchProgress) -> None:
        out.update(max(p.bytes_verified, p.bytes_http), f"{p.phase} {snap.name}")
        if out.due(0.25, now_anyway=p.phase != last_phase[0]):
            last_phase[0] = p.phase
            out.event("progress", phase=p.phase, bytes=p.bytes_verified,
                      bytes_multicast=p.bytes_multicast, bytes_http=p.bytes_http)  # fmt: skip

    started = time.monotonic()
    with engine_errors(out):
        result = trio.run(lambda: fetch(snap, args.out, args.codebase or [], settings,
                                        progress=progress))  # fmt: skip
    out.event(
        "done", authenticated=keyed, verified=result.complete, complete=result.complete,
        route=result.route.value,
        bytes=result.bytes_total, bytes_multicast=result.bytes_multicast,
        bytes_http=result.bytes_http, sessions_tried=result.sessions_tried,
        codebase=result.codebase, notes=result.notes, wall_s=round(time.monotonic() - started, 3),
        peak_rss_mb=peak_rss_mb(),
    )  # fmt: skip
    out.say(
        f"{snap.name}: {result.route.value}; {result.bytes_multicast:,} bytes by multicast,"
        f" {result.bytes_http:,} by HTTP"
        + (f" ({'; '.join(result.notes)})" if result.notes else "")
    )
    return ExitCode.OK


def cmd_sessions(args: argparse.Namespace, out: Output) -> int:
    from mcast.discovery import SessionTable

    ch = _channel(args)
    key = args.session_key if args.discovery_key is None else args.discovery_key
    table = SessionTable()

    def render() -> Any:
        from rich.table import Table  # on a terminal only: JSON output never loads rich

        t = Table(title=f"sessions on {ch.group}:{ch.port} via {ch.interface}")
        for col in ("session", "package", "data group", "rate", "progress", "receivers", "state"):
            t.add_column(col)
        for h in table.live(trio.current_time()):
            a = h.announce
            state = "claiming" if a.claiming else ("repairing" if a.pass_done else "sending")
            t.add_row(f"{a.session:016x}", a.package_hash.hex()[:16], f"{a.group}:{a.port}",
                      f"{a.rate_bps / 1e6:.0f} Mbit/s", f"{a.progress_pct}%",
                      str(a.receivers), state)  # fmt: skip
        return t

    async def listen() -> None:
        ep = Endpoint.open(ch.group, ch.port, ch.interface)
        # joined: an observer (the demo, the lab) may start what it watches from now on
        out.event("listening", group=ch.group, port=ch.port, interface=ch.interface)
        live = None
        if not out.as_json:
            from rich.live import Live  # on a terminal only, as above

            live = Live(render(), console=out._console(), auto_refresh=False)
            live.start()
        try:
            with trio.move_on_after(args.duration or math.inf):
                while True:
                    with trio.move_on_after(0.5):
                        for data, _ in await ep.receive_batch():
                            _log(data)
                    if live is not None:
                        live.update(render(), refresh=True)
        finally:
            ep.close()
            if live is not None:
                live.stop()

    def _log(data: bytes) -> None:
        try:
            msg = decode_untrusted(data, key)
        except BadPacket:
            return
        now = trio.current_time()
        if isinstance(msg, Announce):
            table.heard(msg, now)
            out.event("announce", t=round(time.monotonic(), 4), session=f"{msg.session:016x}",
                      hash=msg.package_hash.hex(), group=msg.group, port=msg.port,
                      claiming=msg.claiming, progress=msg.progress_pct, receivers=msg.receivers,
                      rate_bps=msg.rate_bps, complete=msg.complete,
                      verified_units=msg.verified_units)  # fmt: skip
        elif isinstance(msg, End):
            table.ended(msg.session)
            out.event("end", t=round(time.monotonic(), 4), session=f"{msg.session:016x}",
                      reason=msg.reason)  # fmt: skip

    with engine_errors(out):
        trio.run(listen)
    return ExitCode.OK


def cmd_dissect(args: argparse.Namespace, out: Output) -> int:
    """Every datagram of ours in a capture, with its verdict (see mcast.dissect)."""
    from mcast.dissect import Judge

    try:
        from scapy.layers.inet import IP, UDP
        from scapy.utils import PcapReader
    except ImportError:  # pragma: no cover - scapy is a dependency
        raise UsageError("mcast dissect needs scapy (pip install scapy)") from None
    keys = {}
    if args.session_key is not None:
        keys["session key"] = args.session_key
    if args.discovery_key is not None:
        keys["discovery key"] = args.discovery_key
    judge = Judge(keys, args.session)
    seen = 0
    try:
        reader = PcapReader(str(args.capture))
    except Exception as exc:  # OSError, or scapy's Scapy_Exception for a non-capture
        raise StorageError(f"cannot read capture {args.capture}: {exc}") from None
    with reader:
        for pkt in reader:
            if UDP not in pkt or IP not in pkt:
                continue
            data = bytes(pkt[UDP].payload)
            if not data.startswith(b"MC"):
                continue  # not ours (the magic); everything that claims to be is judged
            seen += 1
            v = judge.judge(data)
            ip, udp = pkt[IP], pkt[UDP]
            where = f"{ip.src}:{udp.sport} > {ip.dst}:{udp.dport}"
            if args.json:
                out.event("datagram", t=float(pkt.time), path=where, **v.as_dict())
            elif not args.summary:
                sid = "-" if v.session is None else f"{v.session:016x}"
                print(f"{float(pkt.time):.6f} {where} {v.kind} {sid} {v.detail} [{v.verdict}]")
    counts = ", ".join(f"{n} {verdict}" for verdict, n in judge.tally.most_common())
    out.event("summary", datagrams=seen, verdicts=dict(judge.tally))
    out.say(f"{seen} datagrams" + (f": {counts}" if counts else ""))
    return ExitCode.OK


def _session_id(text: str) -> int:
    try:
        sid = int(text.removeprefix("0x"), 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a session id (hex)") from None
    if not 0 <= sid < 2**64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a session id (64-bit hex)")
    return sid


# ---------------------------------------------------------------------------------------
# parser, plug-ins and entry point


def plugin_commands() -> dict[str, EntryPoint]:
    """The subcommands other installed packages add (entry-point group ``mcast.commands``)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def build_parser(plugins: dict[str, EntryPoint] | None = None) -> argparse.ArgumentParser:
    ap = Parser(prog="mcast", description="Multicast-first package delivery (see README.md).")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("snapshot", help="hash and sign a file or directory")
    p.add_argument("path", type=argtypes.existing_path)
    p.add_argument("-o", "--output", type=_new_file, required=True, help="snapshot XML to write")
    p.add_argument("--key", type=signing_key, required=True,
                   help="Ed25519 signing key (PEM); made if missing")  # fmt: skip
    p.add_argument("--name", help="package name (default: the path's name)")
    p.add_argument("--version", type=argtypes.at_least(0), default=1)
    p.add_argument("--block-size", type=_block_size, default=64 * 1024)
    p.add_argument("--valid-days", type=argtypes.positive_days, default=30.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("send", help="serve a package on a multicast group")
    p.add_argument("path", type=argtypes.existing_path, help="the package file or directory")
    p.add_argument("--snapshot", type=snapshot_file, required=True)
    p.add_argument("--trust-key", type=argtypes.public_key,
                   help="public key to check the snapshot with")  # fmt: skip
    p.add_argument("--rate", type=parse_rate, default=100_000_000,
                   help="e.g. 100mbit, 1gbit; 0 = no cap (find the receivers' pace)")  # fmt: skip
    p.add_argument("--linger", type=argtypes.positive_seconds, default=2.0,
                   help="seconds to stay after the last receiver is done")  # fmt: skip
    p.add_argument("--receiver-timeout", type=argtypes.positive_seconds, default=5.0)
    p.add_argument("--discovery", type=argtypes.group_port,
                   default=(DISCOVERY_GROUP, DISCOVERY_PORT), metavar="GROUP:PORT",
                   help="the subnet's discovery group, where the session announces itself")
    p.add_argument("--no-discovery", action="store_true",
                   help="do not announce the session on the subnet's discovery group")  # fmt: skip
    p.add_argument("--wait-go", action="store_true",
                   help="load everything, print ready, start on a line on stdin")  # fmt: skip
    _hold_arg(p, 0.0)
    _discovery_key_arg(p)
    _channel_args(p, DEFAULT_GROUP, DEFAULT_PORT)
    _insecure_arg(p)
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("recv", help="receive a package from a multicast session")
    p.add_argument("--snapshot", type=snapshot_file, required=True)
    p.add_argument("--trust-key", type=argtypes.public_key, required=True,
                   help="public key of the signer")  # fmt: skip
    p.add_argument("--out", type=_out_dir, required=True, help="destination directory")
    p.add_argument("--timeout", type=argtypes.positive_seconds, default=10.0,
                   help="give up after this many seconds without the session")  # fmt: skip
    _channel_args(p, DEFAULT_GROUP, DEFAULT_PORT)
    _insecure_arg(p)
    p.set_defaults(func=cmd_recv)

    p = sub.add_parser("fetch", help="get a package: join or start a session, HTTP for the rest")
    p.add_argument("--snapshot", type=snapshot_file, required=True)
    p.add_argument("--trust-key", type=argtypes.public_key, required=True,
                   help="public key of the signer")  # fmt: skip
    p.add_argument("--out", type=_out_dir, required=True, help="destination directory")
    p.add_argument("--codebase", type=argtypes.http_url, action="append",
                   help="package URL (repeatable), for HTTP")  # fmt: skip
    p.add_argument("--max-sessions", type=argtypes.at_least(1), default=1,
                   help="sessions allowed per subnet")  # fmt: skip
    p.add_argument("--tries", type=argtypes.at_least(0), default=3,
                   help="multicast sessions before HTTP (0: HTTP only)")  # fmt: skip
    p.add_argument("--budget", type=argtypes.positive_seconds, default=600.0,
                   help="seconds for multicast before HTTP")  # fmt: skip
    p.add_argument("--no-multicast", action="store_true")
    p.add_argument("--no-speed-test", action="store_true")
    p.add_argument("--min-multicast-size", type=parse_size, default=0)
    p.add_argument("--rate", type=parse_rate, default=100_000_000,
                   help="rate of a session this agent starts; 0 = no cap")  # fmt: skip
    p.add_argument("--linger", type=argtypes.positive_seconds, default=2.0,
                   help="a master serves this long after its last receiver")  # fmt: skip
    p.add_argument("--min-session-kbps", type=argtypes.at_least(0), default=64,
                   help="a session slower than this (KiB/s) for a while is left for HTTP;"
                   " 0: no floor")  # fmt: skip
    _hold_arg(p, 2.0)
    _discovery_key_arg(p)
    _channel_args(p, DISCOVERY_GROUP, DISCOVERY_PORT, auto=True)
    _insecure_arg(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("sessions", help="list the multicast sessions live on the subnet")
    p.add_argument("--duration", type=argtypes.positive_seconds,
                   help="stop after this many seconds")  # fmt: skip
    _discovery_key_arg(p)
    _channel_args(p, DISCOVERY_GROUP, DISCOVERY_PORT)
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("dissect", help="each datagram of a capture (pcap) with its verdict")
    p.add_argument("capture", type=argtypes.existing_path, help="a pcap file (tcpdump -w)")
    p.add_argument("--session-key-file", dest="session_key", type=session_key,
                   help="the package's key: tags are checked under it")  # fmt: skip
    _discovery_key_arg(p)
    p.add_argument("--session", type=_session_id, help="the session of interest (hex id)")
    p.add_argument("--summary", action="store_true", help="only the count of each verdict")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dissect)

    for name, ep in sorted((plugins or {}).items()):
        # listed in ``mcast --help``; main() runs them before argparse sees their options
        sub.add_parser(name, help=f"plug-in command ({ep.value}; mcast {name} --help)")
    return ap


def run_plugin(name: str, plugins: dict[str, EntryPoint], words: list[str]) -> int:
    """``mcast NAME ARGS``: the plug-in parses its own options (argparse's REMAINDER would
    refuse them)."""
    ep = plugins.get(name)
    if ep is None:
        raise UsageError(
            f"'{name}' is a plug-in command that is not installed; it comes with"
            f" {DOCUMENTED_PLUGINS[name]}"
        )
    try:
        func = ep.load()
    except ImportError as exc:
        raise UsageError(f"plug-in command '{name}' ({ep.value}) cannot be loaded: {exc}") from None
    return int(func(words))


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    out = Output("--json" in words)  # for errors before the arguments are parsed
    try:
        command = words[0] if words else ""
        builtin = command in BUILTIN
        # the installed plug-ins are looked up only when they may be asked for: reading the
        # entry points costs a start-up that ``mcast send`` should not pay
        plugins = {} if builtin else plugin_commands()
        if not builtin and (command in plugins or command in DOCUMENTED_PLUGINS):
            return run_plugin(command, plugins, words[1:])
        args = build_parser(plugins).parse_args(words)
        out = Output(args.json)
        func: Callable[[argparse.Namespace, Output], int] = args.func
        return func(args, out)
    except McastError as exc:
        _error(out, one_line(exc), exc.exit_code)
    except KeyboardInterrupt:
        _error(out, "interrupted", ExitCode.INTERRUPTED)


def _error(out: Output, message: str, code: int) -> NoReturn:
    out.close()
    if out.as_json:
        out.event("error", error=message, code=code)
    print(f"mcast: error: {message}", file=sys.stderr)
    raise SystemExit(code)


# Commands whose work is all closed, flushed and synced when they return: their process may
# end without the interpreter's teardown (about 25 ms of CPU, paid by every receiver of a
# session at the same moment, the one that decides when the last of them is done).
_QUICK_EXIT = frozenset({"send", "recv"})


def entry() -> None:
    """The ``mcast`` program: :func:`main`, then the process's exit."""
    code = main()
    if sys.argv[1:2] and sys.argv[1] in _QUICK_EXIT:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
