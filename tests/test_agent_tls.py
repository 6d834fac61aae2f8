"""The agent over HTTPS: it trusts the fleet's CA only (``--ca-file``), downloads from https
codebases with the same pinned context, refuses a server whose certificate another CA signed
with one clear line and exit 3, and an enrolling agent waits for the administrator's approval.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from agent import Agent
from mcast.errors import ExitCode
from mcast.fetch import FetchError, FetchSettings, fetch
from mcast.fleet_auth import fingerprint, load_secret
from mcast.pinned_tls import pinned_context
from server_stub import repo, tls
from server_stub.app import create_app
from server_stub.cli import main as ns_main
from server_stub.testing import running_server
from tests.test_agent_support import NS, CountingFetcher, agent_config, make_ns

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ns(tmp_path: Path) -> NS:
    ns = make_ns(tmp_path, computers=2)
    tls.init_tls(ns.data)
    return ns


@pytest.fixture
async def https_url(ns: NS) -> AsyncIterator[str]:
    cert = tls.server_files(tls.tls_dir(ns.data))
    async with running_server(create_app(ns.data), cert) as base:
        yield base


def ca_of(ns: NS) -> Path:
    return tls.tls_dir(ns.data) / tls.CA_CERT


async def test_an_agent_pinning_the_ca_runs_a_task_over_https(
    ns: NS, https_url: str, tmp_path: Path
) -> None:
    assert https_url.startswith("https://127.0.0.1:")
    guid = ns.guids[0]
    task = ns.add_task()
    fetcher = CountingFetcher(results=[])
    cfg = agent_config(ns, https_url, guid, tmp_path / "a", ca_file=ca_of(ns))
    with Agent(cfg, fetcher=fetcher) as a:
        result = await a.run_once()
    assert result.ok and result.finished == {task: "succeeded"}, result
    # the codebase was the server itself, over https: the engine used the pinned context
    assert fetcher.results is not None and fetcher.results[0].bytes_http > 0
    assert fetcher.results[0].codebase is not None
    assert fetcher.results[0].codebase.startswith("https://")
    await ns.processed()
    assert ns.status_of(guid, task).state == "succeeded"


async def test_an_agent_with_another_ca_refuses_the_server(
    ns: NS, https_url: str, tmp_path: Path
) -> None:
    tls.make_ca(tmp_path / "rogue")  # a CA that did not sign the server's certificate
    ns.add_task()
    cmd = [
        sys.executable, "-m", "agent.cli", "--server", https_url, "--guid", ns.guids[0],
        "--state", str(tmp_path / "s"), "--trust-key", str(ns.pub), "--ip", "127.0.0.1",
        "--secret-file", str(ns.secret_file(ns.guids[0])),
        "--ca-file", str(tmp_path / "rogue" / tls.CA_CERT), "--once",
    ]  # fmt: skip
    proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == ExitCode.TRUST, err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("mcast-agent: error: ")]
    assert "does not verify against the pinned CA" in line
    assert ns.queue()["events"] == 0  # nothing was sent to the impostor


async def test_the_engine_downloads_https_codebases_only_with_the_pinned_ca(
    ns: NS, tmp_path: Path
) -> None:
    """A package server with a certificate from `mcast-ns cert issue` serves https; the
    engine's HTTP download verifies it with the pinned context and refuses it without."""
    pkg_dir = tmp_path / "pkgserver"
    code = ns_main(["cert", "issue", "--data", str(ns.data), "--hostname", "127.0.0.1",
                    "--out", str(pkg_dir / "tls")])  # fmt: skip
    assert code == 0
    assert stat.S_IMODE((pkg_dir / "tls" / tls.KEY).stat().st_mode) == 0o600
    app = create_app(ns.data, mode="package-server", site="lab")
    snap = repo.load_snapshot(ns.data, ns.package_hash)
    async with running_server(app, tls.server_files(pkg_dir / "tls")) as url:
        codebase = f"{url}/pkg/{ns.package_hash}/"
        with pytest.raises(FetchError):  # the system's CAs do not know our CA
            await fetch(snap, tmp_path / "no", [codebase], FetchSettings(multicast_enabled=False))
        ctx = pinned_context(ca_of(ns))
        got = await fetch(
            snap, tmp_path / "yes", [codebase], FetchSettings(multicast_enabled=False, tls=ctx)
        )
    assert got.complete and got.bytes_http == snap.total_size


async def test_an_enrolling_agent_waits_for_approval_then_runs(
    ns: NS, https_url: str, tmp_path: Path
) -> None:
    import uuid

    guid = str(uuid.uuid4())
    secret_file = ns.secret_file(guid)
    assert not secret_file.exists()
    events: list[dict[str, object]] = []
    cfg = agent_config(ns, https_url, guid, tmp_path / "a", ca_file=ca_of(ns), enrol=True)
    assert cfg.secret_file == secret_file
    with Agent(cfg, fetcher=CountingFetcher(), on_event=events.append) as a:
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        result = await a.run_once()
        assert not result.checked_in and "waiting for approval" in result.check_in_error
        (enrol,) = [e for e in events if e["event"] == "enrol"]
        assert enrol["state"] == "pending"
        assert enrol["fingerprint"] == fingerprint(load_secret(secret_file))
        assert ns_main(["computer", "approve", guid, "--data", str(ns.data)]) == 0
        task = ns.add_task(guids=(guid,))
        result = await a.run_once()
    assert result.ok and result.finished == {task: "succeeded"}, result
