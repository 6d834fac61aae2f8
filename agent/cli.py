"""``mcast-agent``: run the Software Delivery agent against a Notification Server.

::

    mcast-agent --server URL --guid G --state DIR --trust-key PUB --secret-file F
                [--ca-file CA.pem] [--enrol] [--ip A] [--interface 127.0.0.1|auto]
                [--rank wired] [--yield] [--discovery GROUP:PORT]
                [--once [--serve-cache-for SECONDS]] [--json] [--download-attempts N]
                [--interval SECONDS] [--command-timeout SECONDS]
                [--fetcher MODULE:FUNCTION] [-v]

Without ``--once`` it checks in on the policy's interval (or ``--interval``) until SIGINT or
SIGTERM, and serves its peer cache (packages it holds, to agents of its subnet that ask) all
along. ``--once --serve-cache-for SECONDS`` serves the peer cache during the run and that long
after it (or until SIGINT or SIGTERM; its exit code is still the run's); once the run is done
it says so with a ``peer-cache`` event, ``action="serving-for"``, whose ``rc`` is that code.
Whenever the peer cache served, its last event is ``peer-cache`` with ``action="stopped"`` and
what it did: ``solicits``, ``sessions`` (served), ``claims_lost``, ``failures``, ``error``
(empty unless the agent ended on an exception). ``--once``: one check-in, run what is due,
flush the outbox, then exit 0 if the check-in worked, no task failed and every status event was
acknowledged, else 1 (3 when the server's certificate does not verify against ``--ca-file``).

Every request is signed with the secret in ``--secret-file`` (``mcast-ns computer add GUID
--secret-file F`` makes it); with ``--enrol`` a missing file is created with a new secret and
the agent asks the server to enrol it (an ``enrol`` event gives its fingerprint, which the
administrator compares in ``mcast-ns computer list`` before ``mcast-ns computer approve``).
An https server is verified against ``--ca-file`` only (the server's ``DATA/tls/ca.pem``);
a plain http server gets a warning on stderr.

Every argument is checked when given, and every expected failure is one line on stderr with the
exit code of :mod:`mcast.errors`: 2 a bad argument, 3 a trust key, secret or CA file that is
not one, or a server certificate the CA did not sign, 4 a file or state directory that cannot
be used (a missing trust key, secret or CA file), 5 an interface the network safety rules
refuse (``--interface auto`` is the IPv4 address of the interface that routes to the server,
found once at start-up by a UDP ``connect()`` that sends nothing, and checked by the same
rules). ``--rank`` is what this machine weighs when the agents of a subnet elect a multicast
session's master; ``--yield`` makes the sessions it masters (and its peer cache serves) back
off when other traffic needs the link. ``--json`` prints one JSON object per line on stdout for
everything the agent does (a ``job`` event for a finished download also names the multicast
``session`` it joined or led); otherwise a short human line each. ``--fetcher`` picks the
download function (default ``mcast.fetch:fetch``; ``agent.httpfetch:fetch`` is HTTP only).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import trio

from mcast import argtypes
from mcast.argtypes import Parser, one_line
from mcast.discovery import Rank
from mcast.errors import McastError, NetworkError
from mcast.udp import DISCOVERY_GROUP, DISCOVERY_PORT, UnsafeAddress, resolve_interface

from .config import AgentConfig, ConfigError
from .core import Agent, Fetcher, TlsRefused
from .runas import DEFAULT_USER


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mcast-agent", description="Software Delivery agent (multicast-first downloads)"
    )
    p.add_argument(
        "--server", required=True, type=argtypes.http_url, help="Notification Server URL"
    )
    p.add_argument("--guid", required=True, type=argtypes.guid, help="this computer's GUID")
    p.add_argument("--state", required=True, type=Path, help="state directory (db + cache)")
    p.add_argument(
        "--trust-key",
        required=True,
        type=argtypes.trust_key,
        help="PEM public key of the snapshot signer (NS DATA/signing.pub)",
    )
    p.add_argument(
        "--secret-file",
        required=True,
        type=Path,
        help="this computer's secret (mcast-ns computer add GUID --secret-file F)",
    )
    p.add_argument(
        "--enrol",
        action="store_true",
        help="create the secret file if missing and ask the server to enrol it",
    )
    p.add_argument(
        "--ca-file",
        type=Path,
        help="PEM CA certificate that signs the server's certificate (NS DATA/tls/ca.pem); "
        "needed for an https server, the only CA trusted",
    )
    p.add_argument(
        "--ip",
        type=argtypes.ip_address,
        help="address sent to getPackageInfo (default: the route to the NS)",
    )
    p.add_argument(
        "--interface",
        default="127.0.0.1",
        type=argtypes.interface,
        help="multicast interface address, or 'auto': the interface that routes to the server, "
        "resolved at start-up (default 127.0.0.1)",
    )
    p.add_argument(
        "--rank",
        default=Rank.WIRED,
        type=argtypes.rank,
        help="what this machine weighs when the agents of a subnet elect a session's master: "
        "package-server, wired, laptop or wireless (default wired)",
    )
    p.add_argument(
        "--yield",
        dest="yield_bandwidth",
        action="store_true",
        help="bandwidth protection: a multicast session this agent masters backs off when "
        "other traffic needs the link (delay-based, LEDBAT)",
    )
    p.add_argument(
        "--discovery",
        default=f"{DISCOVERY_GROUP}:{DISCOVERY_PORT}",
        type=argtypes.group_port,
        help="multicast discovery group:port shared by the agents of a subnet "
        f"(default {DISCOVERY_GROUP}:{DISCOVERY_PORT})",
    )
    p.add_argument("--once", action="store_true", help="one check-in, then exit")
    p.add_argument(
        "--serve-cache-for",
        type=argtypes.positive_seconds,
        metavar="SECONDS",
        help="with --once: serve the peer cache from the start, and this long after the "
        "check-in's work is done (without --once the agent always serves it)",
    )
    p.add_argument(
        "--download-attempts",
        type=argtypes.at_least(1),
        default=8,
        help="failed download attempts (with back-off) before a task is reported failed "
        "(default 8)",
    )
    p.add_argument("--json", action="store_true", help="JSON lines on stdout")
    p.add_argument(
        "--interval", type=argtypes.positive_seconds, help="check-in interval in seconds (override)"
    )
    p.add_argument(
        "--command-timeout",
        type=argtypes.positive_seconds,
        default=3600.0,
        help="seconds a command may run before it is killed (default 3600)",
    )
    p.add_argument(
        "--run-as-default",
        default=DEFAULT_USER,
        type=argtypes.name,
        metavar="USER",
        help="the user a task's command runs as when the task names none (credentials "
        f"'system'); never root (default {DEFAULT_USER})",
    )
    p.add_argument(
        "--fetcher",
        default="mcast.fetch:fetch",
        type=_fetcher_arg,
        help="MODULE:FUNCTION to download",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def load_fetcher(spec: str) -> Fetcher:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"{spec!r} is not MODULE:FUNCTION")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{spec!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"{spec!r} is not callable")
    return cast(Fetcher, fn)


def _fetcher_arg(spec: str) -> Fetcher:
    try:
        return load_fetcher(spec)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _printer(as_json: bool) -> Any:
    def show(ev: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(ev, sort_keys=True), flush=True)
            return
        if ev["event"] == "progress":
            return
        rest = " ".join(
            f"{k}={v}" for k, v in ev.items() if k not in ("event", "time") and v not in (None, "")
        )
        print(f"{ev['event']}: {rest}", flush=True)

    return show


async def _main(agent: Agent, once: bool, serve_for: float | None) -> int:
    if once and serve_for is None:
        result = await agent.run_once()
        if isinstance(result.check_in_failure, TlsRefused):
            raise result.check_in_failure
        return 0 if result.ok else 1
    code = 0
    error = ""
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.cache.serve)
                if once:
                    assert serve_for is not None

                    async def once_then_serve() -> None:
                        nonlocal code
                        result = await agent.run_once()
                        code = 0 if result.ok else 1
                        # the run is over (rc is the exit code it decided); the cache goes on
                        agent.emit("peer-cache", action="serving-for", seconds=serve_for, rc=code)
                        await trio.sleep(serve_for)
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(once_then_serve)
                else:
                    nursery.start_soon(agent.run_forever)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        # what the peer cache did over this life of the agent, whichever way it ends
        st = agent.cache.stats
        agent.emit("peer-cache", action="stopped", solicits=st.solicits, sessions=st.sessions,
                   claims_lost=st.claims_lost, failures=st.failures, error=error)  # fmt: skip
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the agent; every expected failure is one line on stderr and its exit code."""
    agent: Agent | None = None
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
            stream=sys.stderr,
        )
        group, port = args.discovery
        server = urlsplit(args.server)
        if server.scheme == "https" and args.ca_file is None:
            raise ConfigError("an https server needs --ca-file (its CA: NS DATA/tls/ca.pem)")
        server_port = server.port or (443 if server.scheme == "https" else 80)
        try:
            interface = resolve_interface(
                args.interface, group, server.hostname or "127.0.0.1", server_port
            )
        except UnsafeAddress as exc:
            raise NetworkError(str(exc)) from None
        config = AgentConfig(
            server_url=args.server,
            guid=args.guid,
            state_dir=args.state,
            trust_key=args.trust_key,
            ip=args.ip,
            interface=interface,
            rank=args.rank,
            yield_bandwidth=args.yield_bandwidth,
            download_attempts=args.download_attempts,
            discovery_group=group,
            discovery_port=port,
            command_timeout_s=args.command_timeout,
            check_in_interval_s=args.interval,
            run_as_default=args.run_as_default,
            secret_file=args.secret_file,
            enrol=args.enrol,
            ca_file=args.ca_file,
        )
        show = _printer(args.json)
        agent = Agent(config, fetcher=args.fetcher, on_event=show)
        if server.scheme == "http":
            warning = "plain http: policies and package keys travel unencrypted"
            print(f"mcast-agent: warning: {warning}", file=sys.stderr)
        show({"event": "start", "guid": config.guid, "interface": config.interface,
              "rank": config.rank.name.lower().replace("_", "-"), "ip": agent.ip})  # fmt: skip
        return trio.run(_main, agent, args.once, args.serve_cache_for)
    except McastError as exc:
        print(f"mcast-agent: error: {one_line(exc)}", file=sys.stderr)
        return int(exc.exit_code)
    finally:
        if agent is not None:
            agent.close()


if __name__ == "__main__":
    sys.exit(main())
