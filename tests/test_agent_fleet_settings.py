"""The agent hands the engine what the fleet-session policy says: the hold, the slow-session
floor, the site's discovery key (from the policy), its rank (``--rank``), and the interface
``--interface auto`` finds (the route to the server, checked by the safety rules)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from agent import Agent
from agent.httpfetch import fetch as http_fetch
from mcast.discovery import Rank
from mcast.errors import ExitCode, NetworkError, UsageError
from mcast.fetch import FetchProgress, FetchResult, FetchSettings
from mcast.snapshot import Snapshot
from mcast.udp import DISCOVERY_GROUP, UnsafeAddress, resolve_interface
from server_stub.store import Store
from tests.test_agent_support import NS, agent_config, make_ns

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ns(tmp_path: Path) -> NS:
    return make_ns(tmp_path, computers=1)


class Recording:
    """The HTTP stand-in fetcher, keeping the settings the agent gave it."""

    def __init__(self) -> None:
        self.settings: list[FetchSettings] = []

    async def __call__(
        self,
        snapshot: Snapshot,
        dest: Path,
        codebases: list[str],
        settings: FetchSettings | None = None,
        *,
        progress: Callable[[FetchProgress], None] | None = None,
    ) -> FetchResult:
        assert settings is not None
        self.settings.append(settings)
        return await http_fetch(snapshot, dest, codebases, settings, progress=progress)


async def test_policy_settings_rank_and_discovery_key_reach_the_engine(
    ns: NS, url: str, tmp_path: Path
) -> None:
    store = Store(ns.data)
    try:
        store.set_setting("multicastHoldSecs", "7")
        store.set_setting("minSessionKBps", "100")
        site_key = store.discovery_key("lab")  # make_ns: site "lab" owns 127.0.0.0/8
    finally:
        store.close()
    ns.add_task()
    rec = Recording()
    cfg = agent_config(ns, url, ns.guids[0], tmp_path / "a", rank=Rank.LAPTOP)
    with Agent(cfg, fetcher=rec) as agent:
        result = await agent.run_once()
        assert agent.discovery_key == site_key
    assert result.ok, result
    (s,) = rec.settings
    assert (s.hold_s, s.min_session_bps, s.rank) == (7.0, 100 * 1024, Rank.LAPTOP)
    assert s.discovery_key == site_key and s.session_key is not None
    assert s.discovery_key != s.session_key


async def test_no_floor_when_min_session_kbps_is_zero(ns: NS, url: str, tmp_path: Path) -> None:
    store = Store(ns.data)
    try:
        store.set_setting("minSessionKBps", "0")
        store.set_setting("multicastHoldSecs", "0")
    finally:
        store.close()
    ns.add_task()
    rec = Recording()
    with Agent(agent_config(ns, url, ns.guids[0], tmp_path / "a"), fetcher=rec) as agent:
        assert (await agent.run_once()).ok
    (s,) = rec.settings
    assert (s.min_session_bps, s.hold_s, s.rank) == (0.0, 0.0, Rank.WIRED)


def test_interface_auto_resolves_to_loopback_for_a_loopback_server() -> None:
    assert resolve_interface("auto", DISCOVERY_GROUP, "127.0.0.1", 8080) == "127.0.0.1"
    assert resolve_interface("127.0.0.1", DISCOVERY_GROUP, "127.0.0.1", 8080) == "127.0.0.1"


def test_interface_auto_on_a_real_lan_is_refused_and_says_how_to_allow_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mcast.udp

    monkeypatch.delenv("MCAST_ALLOW_ANY_INTERFACE", raising=False)
    monkeypatch.setattr(mcast.udp, "interface_towards", lambda host, port: "192.0.2.40")
    with pytest.raises(UnsafeAddress) as info:
        resolve_interface("auto", DISCOVERY_GROUP, "ns.example", 80)
    text = str(info.value)
    assert "192.0.2.40" in text and "MCAST_ALLOW_ANY_INTERFACE=1" in text
    assert info.value.exit_code == ExitCode.NET and isinstance(info.value, NetworkError)
    monkeypatch.setenv("MCAST_ALLOW_ANY_INTERFACE", "1")
    assert resolve_interface("auto", DISCOVERY_GROUP, "ns.example", 80) == "192.0.2.40"


async def test_agent_cli_interface_auto_and_rank(ns: NS, url: str, tmp_path: Path) -> None:
    ns.add_task()
    cmd = [
        sys.executable, "-m", "agent.cli", "--server", url, "--guid", ns.guids[0],
        "--state", str(tmp_path / "s"), "--trust-key", str(ns.pub), "--once", "--json",
        "--secret-file", str(ns.secret_file(ns.guids[0])),
        "--interface", "auto", "--rank", "package-server", "--fetcher", "agent.httpfetch:fetch",
    ]  # fmt: skip
    proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    start = lines[0]
    assert start["event"] == "start"
    assert (start["interface"], start["rank"], start["ip"]) == (
        "127.0.0.1", "package-server", "127.0.0.1",
    )  # fmt: skip


def test_mcast_fetch_interface_auto_routes_to_the_first_codebase() -> None:
    from mcast.cli import _channel

    args = argparse.Namespace(interface="auto", group=DISCOVERY_GROUP, port=47077)
    assert _channel(args, "http://127.0.0.1:8000/pkg/x/").interface == "127.0.0.1"
    with pytest.raises(UsageError, match="needs a --codebase"):
        _channel(args, None)
