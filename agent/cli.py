"""``mcast-agent``: run the Software Delivery agent against a Notification Server.

::

    mcast-agent --server URL --guid G --state DIR --trust-key PUB
                [--ip A] [--interface 127.0.0.1] [--discovery GROUP:PORT] [--once] [--json]
                [--interval SECONDS] [--command-timeout SECONDS]
                [--fetcher MODULE:FUNCTION] [-v]

Without ``--once`` it checks in on the policy's interval (or ``--interval``) until SIGINT or
SIGTERM. ``--once``: one check-in, run what is due, flush the outbox, then exit 0 if the
check-in worked, no task failed and every status event was acknowledged, else 1. Bad
arguments exit 2 with a message. ``--json`` prints one JSON object per line on stdout for
everything the agent does; otherwise a short human line each. ``--fetcher`` picks the
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

import trio

from mcast.udp import DISCOVERY_GROUP, DISCOVERY_PORT

from .config import AgentConfig, ConfigError
from .core import Agent, Fetcher


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcast-agent", description="Software Delivery agent (multicast-first downloads)"
    )
    p.add_argument("--server", required=True, help="Notification Server URL, http://HOST:PORT")
    p.add_argument("--guid", required=True, help="this computer's GUID")
    p.add_argument("--state", required=True, type=Path, help="state directory (db + cache)")
    p.add_argument(
        "--trust-key",
        required=True,
        type=Path,
        help="PEM public key of the snapshot signer (NS DATA/signing.pub)",
    )
    p.add_argument("--ip", help="address sent to getPackageInfo (default: the route to the NS)")
    p.add_argument("--interface", default="127.0.0.1", help="multicast interface address")
    p.add_argument(
        "--discovery",
        default=f"{DISCOVERY_GROUP}:{DISCOVERY_PORT}",
        help="multicast discovery group:port shared by the agents of a subnet "
        f"(default {DISCOVERY_GROUP}:{DISCOVERY_PORT})",
    )
    p.add_argument("--once", action="store_true", help="one check-in, then exit")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout")
    p.add_argument("--interval", type=float, help="check-in interval in seconds (override)")
    p.add_argument(
        "--command-timeout",
        type=float,
        default=3600.0,
        help="seconds a command may run before it is killed (default 3600)",
    )
    p.add_argument("--fetcher", default="mcast.fetch:fetch", help="MODULE:FUNCTION to download")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def load_fetcher(spec: str) -> Fetcher:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"--fetcher {spec!r} is not MODULE:FUNCTION")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--fetcher {spec!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"--fetcher {spec!r} is not callable")
    return cast(Fetcher, fn)


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


async def _main(agent: Agent, once: bool) -> int:
    if once:
        result = await agent.run_once()
        return 0 if result.ok else 1
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.run_forever)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    group, _, port = args.discovery.rpartition(":")
    if not group or not port.isdigit():
        print(f"mcast-agent: --discovery {args.discovery!r} is not GROUP:PORT", file=sys.stderr)
        return 2
    try:
        config = AgentConfig(
            server_url=args.server,
            guid=args.guid,
            state_dir=args.state,
            trust_key=args.trust_key,
            ip=args.ip,
            interface=args.interface,
            discovery_group=group,
            discovery_port=int(port),
            command_timeout_s=args.command_timeout,
            check_in_interval_s=args.interval,
        )
        agent = Agent(config, fetcher=load_fetcher(args.fetcher), on_event=_printer(args.json))
    except ConfigError as exc:
        print(f"mcast-agent: {exc}", file=sys.stderr)
        return 2
    try:
        return trio.run(_main, agent, args.once)
    finally:
        agent.close()


if __name__ == "__main__":
    sys.exit(main())
