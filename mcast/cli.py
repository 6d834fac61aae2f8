"""The ``mcast`` command line: snapshot, send, recv, fetch, sessions, and demo.

Owns argument parsing, turning every expected failure into one clear line and an exit code,
and the two output styles: a rich progress bar on a terminal, or JSON lines (``--json``)
whose last line is a summary with ``"event": "done"`` (or ``"error"``).

Exit codes: 0 done, 1 the session ended before the package was complete, 2 bad arguments,
3 snapshot not trusted or malformed, 4 file or disk error, 5 network or safety refusal,
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import trio

from mcast.units import parse_rate, parse_size

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_TRUST, EXIT_IO, EXIT_NET, EXIT_INTERRUPTED = (
    0, 1, 2, 3, 4, 5, 130,
)  # fmt: skip


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


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
        from rich.console import Console

        return Console(stderr=True)


@contextlib.contextmanager
def engine_errors(out: Output) -> Iterator[None]:
    """Turn the engine's expected failures into one clear line and an exit code."""
    from mcast.fetch import FetchError
    from mcast.partial import DownloadError
    from mcast.source import SourceMismatch

    try:
        yield
    except FetchError as exc:
        raise CliError(str(exc), EXIT_INCOMPLETE) from None
    except (DownloadError, SourceMismatch) as exc:
        raise CliError(str(exc), EXIT_IO) from None
    except OSError as exc:
        raise CliError(f"network error: {exc}", EXIT_NET) from None
    finally:
        out.close()


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------------------------------
# shared argument helpers


def _channel_args(p: argparse.ArgumentParser) -> None:
    from mcast.udp import DEFAULT_GROUP, DEFAULT_INTERFACE, DEFAULT_PORT

    p.add_argument("--interface", default=DEFAULT_INTERFACE, help="local IPv4 address to use")
    p.add_argument("--group", default=DEFAULT_GROUP, help="multicast group (239.255.0.0/16)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT)
    p.add_argument("--session-key-file", type=Path, help="file with the session's HMAC key")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout")


def _discovery_args(p: argparse.ArgumentParser) -> None:
    from mcast.udp import DEFAULT_INTERFACE, DISCOVERY_GROUP, DISCOVERY_PORT

    p.add_argument("--interface", default=DEFAULT_INTERFACE, help="local IPv4 address to use")
    p.add_argument("--group", default=DISCOVERY_GROUP, help="the subnet's discovery group")
    p.add_argument("--port", type=_port, default=DISCOVERY_PORT)
    p.add_argument("--session-key-file", type=Path, help="file with the session's HMAC key")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _channel(args: argparse.Namespace) -> Any:
    from mcast.recv_driver import Channel
    from mcast.udp import UnsafeAddress, check_endpoint

    try:
        check_endpoint(args.group, args.interface)
    except UnsafeAddress as exc:
        raise CliError(str(exc), EXIT_NET) from None
    return Channel(args.group, args.port, args.interface)


def read_session_key(path: Path | None) -> bytes | None:
    """A session key file holds the key as hex (64 digits) or as 32 raw bytes."""
    if path is None:
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read session key {path}: {exc.strerror}", EXIT_IO) from None
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = raw
    if len(key) < 16:
        raise CliError(f"session key in {path} is shorter than 16 bytes", EXIT_USAGE)
    return key


def load_snapshot(path: Path, trust_key: Path | None) -> Any:
    from mcast.snapshot import (
        SnapshotError,
        TrustStore,
        load_public_key,
        parse_snapshot_xml,
    )

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read snapshot {path}: {exc.strerror}", EXIT_IO) from None
    try:
        snap = parse_snapshot_xml(data)
        if trust_key is not None:
            try:
                public = load_public_key(trust_key.read_bytes())
            except OSError as exc:
                raise CliError(f"cannot read key {trust_key}: {exc.strerror}", EXIT_IO) from None
            TrustStore.of(public).verify(snap, time.time())
    except SnapshotError as exc:
        raise CliError(f"snapshot {path}: {exc}", EXIT_TRUST) from None
    return snap


# ---------------------------------------------------------------------------------------
# commands


def cmd_snapshot(args: argparse.Namespace, out: Output) -> int:
    from mcast.snapshot import (
        SnapshotError,
        build_snapshot,
        generate_key,
        load_private_key,
        public_key_pem,
        save_private_key,
    )

    key_path: Path = args.key
    if key_path.exists():
        key = load_private_key(key_path)
    else:
        key = generate_key()
        save_private_key(key, key_path)
        out.say(f"created signing key {key_path}")
    pub_path = key_path.with_name(key_path.name + ".pub")
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
    except SnapshotError as exc:
        raise CliError(str(exc), EXIT_IO) from None
    except OSError as exc:
        raise CliError(f"cannot read {args.path}: {exc.strerror}", EXIT_IO) from None
    args.output.write_bytes(snap.to_xml())
    out.event(
        "done", snapshot=str(args.output), hash=snap.package_hash_hex, size=snap.total_size,
        files=len(snap.files), units=snap.block_count, public_key=str(pub_path),
    )  # fmt: skip
    out.say(
        f"{args.output}: {len(snap.files)} files, {snap.total_size:,} bytes,"
        f" hash {snap.package_hash_hex[:16]}…, signed by {snap.key_id}"
    )
    return EXIT_OK


def cmd_send(args: argparse.Namespace, out: Output) -> int:
    from mcast.send_driver import SendProgress, send
    from mcast.sender import SenderConfig

    snap = load_snapshot(args.snapshot, args.trust_key)
    ch = _channel(args)
    key = read_session_key(args.session_key_file)
    cfg = SenderConfig(
        group=ch.group, port=ch.port, rate_bps=args.rate, linger=args.linger,
        receiver_timeout=args.receiver_timeout,
    )  # fmt: skip
    out.event("start", hash=snap.package_hash_hex, size=snap.total_size, rate_bps=args.rate,
              group=ch.group, port=ch.port, interface=ch.interface)  # fmt: skip
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

    from mcast.recv_driver import Channel
    from mcast.udp import DISCOVERY_GROUP, DISCOVERY_PORT

    disc = None if args.no_discovery else Channel(DISCOVERY_GROUP, DISCOVERY_PORT, ch.interface)
    with engine_errors(out):
        result = trio.run(lambda: send(snap, args.path, channel=ch, key=key, config=cfg,
                                       progress=progress, discovery=disc))  # fmt: skip
    s = result.stats
    out.event(
        "done", reason=result.reason, receivers_done=result.receivers_done,
        receivers_lost=result.receivers_lost, bytes_sent=result.bytes_sent,
        wall_s=round(result.wall_s, 3), data_packets=s.data_sent, repair_packets=s.parity_sent,
        naks=s.naks_received, feedback_refused=s.feedback_refused, peak_rss_mb=peak_rss_mb(),
        rate_bps=s.rate_bps, rate_cuts=s.rate_cuts, timeline=result.timeline,
    )  # fmt: skip
    out.say(
        f"session ended ({result.reason}): {result.receivers_done} receivers done,"
        f" {result.receivers_lost} lost; {s.data_sent:,} data + {s.parity_sent:,} repair packets"
    )
    return EXIT_OK


def cmd_recv(args: argparse.Namespace, out: Output) -> int:
    from mcast.receiver import ReceiverConfig
    from mcast.recv_driver import ReceiveProgress, receive

    snap = load_snapshot(args.snapshot, args.trust_key)
    ch = _channel(args)
    key = read_session_key(args.session_key_file)
    cfg = ReceiverConfig(silence_timeout=args.timeout)
    out.event("start", hash=snap.package_hash_hex, size=snap.total_size, out=str(args.out))
    out.bar(f"waiting for {snap.name}", snap.total_size)
    joined = [False]

    def progress(p: ReceiveProgress) -> None:
        out.update(p.bytes_verified, f"receiving {snap.name}" if p.joined else None)
        if p.joined and not joined[0]:
            joined[0] = True
            out.event("joined")
        if out.due(1.0):
            out.event("progress", units=p.units_verified, total=p.units_total,
                      bytes=p.bytes_verified)  # fmt: skip

    with engine_errors(out):
        result = trio.run(lambda: receive(snap, args.out, channel=ch, key=key, config=cfg,
                                          progress=progress))  # fmt: skip
    s = result.stats
    assert s is not None
    out.event(
        "done", verified=result.complete, complete=result.complete, reason=result.reason,
        bytes=result.bytes_total if result.complete else result.bytes_received,
        bytes_multicast=result.bytes_received, units=result.units_verified,
        units_total=result.units_total, units_resumed=result.units_resumed,
        wall_s=round(result.wall_s, 3), peak_rss_mb=peak_rss_mb(), session=result.session_id,
        naks_sent=s.naks_sent, repairs=s.parity_shards, bad_packets=s.bad_packets,
        verify_failures=s.verify_failures, timeline=result.timeline,
    )  # fmt: skip
    if result.complete:
        out.say(f"{snap.name}: {len(result.files)} files verified in {args.out}")
        return EXIT_OK
    out.say(
        f"{snap.name}: incomplete ({result.reason}); {result.units_verified}/{result.units_total}"
        " units kept for resume"
    )
    return EXIT_INCOMPLETE


def cmd_fetch(args: argparse.Namespace, out: Output) -> int:
    from mcast.fetch import FetchProgress, FetchSettings, fetch

    snap = load_snapshot(args.snapshot, args.trust_key)
    ch = _channel(args)
    settings = FetchSettings(
        multicast_enabled=not args.no_multicast, min_multicast_size=args.min_multicast_size,
        max_sessions_per_subnet=args.max_sessions, multicast_tries=args.tries,
        time_budget_s=args.budget, speed_test=not args.no_speed_test,
        session_key=read_session_key(args.session_key_file), interface=ch.interface,
        discovery_group=ch.group, discovery_port=ch.port, rate_bps=args.rate,
        serve_after_s=args.linger,
    )  # fmt: skip
    out.event("start", hash=snap.package_hash_hex, size=snap.total_size, out=str(args.out))
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
        "done", verified=result.complete, complete=result.complete, route=result.route.value,
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
    return EXIT_OK


def cmd_sessions(args: argparse.Namespace, out: Output) -> int:
    from mcast.discovery import SessionTable
    from mcast.udp import Endpoint
    from mcast.wire import Announce, BadPacket, End, decode_untrusted

    ch = _channel(args)
    key = read_session_key(args.session_key_file)
    table = SessionTable()

    def render() -> Any:
        from rich.table import Table

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
        live = None
        if not out.as_json:
            from rich.live import Live

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
                      rate_bps=msg.rate_bps)  # fmt: skip
        elif isinstance(msg, End):
            table.ended(msg.session)
            out.event("end", t=round(time.monotonic(), 4), session=f"{msg.session:016x}",
                      reason=msg.reason)  # fmt: skip

    try:
        trio.run(listen)
    except OSError as exc:
        raise CliError(f"network error: {exc}", EXIT_NET) from None
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# parser and entry point


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mcast", description="Multicast-first package delivery (see README.md)."
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("snapshot", help="hash and sign a file or directory")
    p.add_argument("path", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="snapshot XML to write")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 key (PEM); made if missing")
    p.add_argument("--name", help="package name (default: the path's name)")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--block-size", type=parse_size, default=64 * 1024)
    p.add_argument("--valid-days", type=_positive_float, default=30.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("send", help="serve a package on a multicast group")
    p.add_argument("path", type=Path, help="the package file or directory")
    p.add_argument("--snapshot", type=Path, required=True)
    p.add_argument("--trust-key", type=Path, help="public key to check the snapshot with")
    p.add_argument("--rate", type=parse_rate, default=100_000_000, help="e.g. 100mbit, 1gbit")
    p.add_argument("--linger", type=_positive_float, default=2.0,
                   help="seconds to stay after the last receiver is done")  # fmt: skip
    p.add_argument("--receiver-timeout", type=_positive_float, default=5.0)
    p.add_argument("--no-discovery", action="store_true",
                   help="do not announce the session on the subnet's discovery group")  # fmt: skip
    p.add_argument("--wait-go", action="store_true",
                   help="load everything, print ready, start on a line on stdin")  # fmt: skip
    _channel_args(p)
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("recv", help="receive a package from a multicast session")
    p.add_argument("--snapshot", type=Path, required=True)
    p.add_argument("--trust-key", type=Path, required=True, help="public key of the signer")
    p.add_argument("--out", type=Path, required=True, help="destination directory")
    p.add_argument("--timeout", type=_positive_float, default=10.0,
                   help="give up after this many seconds without the session")  # fmt: skip
    _channel_args(p)
    p.set_defaults(func=cmd_recv)

    p = sub.add_parser("fetch", help="get a package: join or start a session, HTTP for the rest")
    p.add_argument("--snapshot", type=Path, required=True)
    p.add_argument("--trust-key", type=Path, required=True, help="public key of the signer")
    p.add_argument("--out", type=Path, required=True, help="destination directory")
    p.add_argument("--codebase", action="append", help="package URL (repeatable), for HTTP")
    p.add_argument("--max-sessions", type=int, default=1, help="sessions allowed per subnet")
    p.add_argument("--tries", type=int, default=3, help="multicast sessions before HTTP")
    p.add_argument("--budget", type=_positive_float, default=600.0,
                   help="seconds for multicast before HTTP")  # fmt: skip
    p.add_argument("--no-multicast", action="store_true")
    p.add_argument("--no-speed-test", action="store_true")
    p.add_argument("--min-multicast-size", type=parse_size, default=0)
    p.add_argument("--rate", type=parse_rate, default=100_000_000,
                   help="rate of a session this agent starts")  # fmt: skip
    p.add_argument("--linger", type=_positive_float, default=2.0,
                   help="a master serves this long after its last receiver")  # fmt: skip
    _discovery_args(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("sessions", help="list the multicast sessions live on the subnet")
    p.add_argument("--duration", type=_positive_float, help="stop after this many seconds")
    _discovery_args(p)
    p.set_defaults(func=cmd_sessions)

    sub.add_parser("demo", help="the whole flow on this machine: server, agents, multicast"
                   " (mcast demo --help)")  # fmt: skip
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["demo"]:  # the demo parses its own options (argparse's REMAINDER refuses them)
        from bench.demo import main as demo_main

        return int(demo_main(words[1:]))
    parser = build_parser()
    args = parser.parse_args(words)
    out = Output(getattr(args, "json", False))
    func: Callable[[argparse.Namespace, Output], int] = args.func
    try:
        return func(args, out)
    except CliError as exc:
        _error(out, str(exc), exc.code)
    except KeyboardInterrupt:
        _error(out, "interrupted", EXIT_INTERRUPTED)


def _error(out: Output, message: str, code: int) -> NoReturn:
    out.close()
    if out.as_json:
        out.event("error", error=message, code=code)
    print(f"mcast: error: {message}", file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":
    sys.exit(main())
