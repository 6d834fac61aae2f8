"""``mcast demo`` end to end, as a user runs it: a subprocess, the JSON summary, the exit code.

Each run starts the server stub and real agent processes on loopback (or on the namespace
lab, as root); the summary's per-agent rows must agree with what the server recorded, HTTP
bytes across all agents stay near one package (one master downloads, the rest join its
multicast session), and nothing the demo made is left in its temp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.labnet import lab_available
from mcast.cli import plugin_commands

ROOT = Path(__file__).resolve().parent.parent


def run_demo(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    """``python -m bench.demo ARGS --json`` with TMPDIR in ``tmp_path``; (rc, summary).

    (``mcast demo`` is the same function reached through its entry point: tested below.)
    """
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.demo", *args, "--json"],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, f"no output; stderr: {proc.stderr[-2000:]}"
    summary = json.loads(lines[-1])  # the LAST line is the summary object
    leftovers = [p.name for p in tmp.iterdir() if p.name.startswith("mcast-demo-")]
    assert leftovers == [], f"the demo left {leftovers}"
    return proc.returncode, summary


def check_success(rc: int, s: dict[str, Any], agents: int) -> None:
    assert rc == 0, s
    assert s["event"] == "summary" and s["all_ok"] is True
    assert len(s["per_agent"]) == agents
    for a in s["per_agent"]:
        assert a["verified"] is True, a
        assert a["exit_code"] == 0 and a["agent_rc"] == 0, a
        assert a["server_status"] == "succeeded" and a["server_exit_code"] == 0, a
        # what the server recorded is what the agent measured
        assert (a["server_bytes_multicast"], a["server_bytes_http"]) == (
            a["bytes_multicast"],
            a["bytes_http"],
        ), a
        assert a["bytes_multicast"] + a["bytes_http"] >= s["package_size"], a
    assert s["http_ratio"] <= 1.1, s
    # heard on the discovery group by the demo's observer, not inferred from the routes
    assert s["sessions"] == 1 and len(s["session_ids"]) == 1, s
    assert len(s["masters"]) == 1, s
    routes = sorted(a["route"] for a in s["per_agent"])
    assert routes == ["joined"] * (agents - 1) + ["master"], routes


def test_demo_loopback_one_session(tmp_path: Path) -> None:
    rc, s = run_demo(tmp_path, "--agents", "3", "--size", "4M")
    check_success(rc, s, 3)
    assert s["mode"] == "loopback" and s["workdir"] is None


def test_demo_failing_command_exits_nonzero_and_says_which(tmp_path: Path) -> None:
    rc, s = run_demo(tmp_path, "--agents", "3", "--size", "2M", "--fail-agents", "1")
    assert rc == 1
    assert s["all_ok"] is False
    failed = [a for a in s["per_agent"] if not a["ok"]]
    assert [a["index"] for a in failed] == [1]
    bad = failed[0]
    assert bad["exit_code"] == 3 and bad["server_status"] == "failed"
    assert "command exit 3" in bad["problem"] and "server recorded failed" in bad["problem"]
    assert "failing on purpose" in bad["output"]
    for a in s["per_agent"][1:]:
        assert a["ok"] and a["server_status"] == "succeeded", a


def test_demo_human_table_names_the_failure(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.demo", "--agents", "2", "--size", "1M", "--fail-agents", "2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "FAILED" in proc.stdout and "command exit 3" in proc.stdout
    assert "server recorded" in proc.stdout  # (rich may wrap the rest of the cell)
    assert not list(tmp_path.glob("mcast-demo-*"))


def test_demo_bad_arguments_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.demo", "--agents", "0"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--agents" in proc.stderr


_PLUGINS = plugin_commands()


@pytest.mark.skipif(
    "demo" not in _PLUGINS, reason="the project is not installed: pip install -e '.[test]'"
)
def test_mcast_demo_is_the_installed_plug_in_and_passes_options_through(tmp_path: Path) -> None:
    assert _PLUGINS["demo"].value == "bench.demo:main"
    proc = subprocess.run(
        [sys.executable, "-m", "mcast.cli", "demo", "--agents", "0"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--agents must be 1..64" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "mcast.cli", "--help"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert "demo" in listed.stdout


_LAB_OK, _LAB_WHY = lab_available()


@pytest.mark.skipif(not _LAB_OK, reason=f"lab unavailable: {_LAB_WHY}")
def test_demo_on_the_lab(tmp_path: Path) -> None:
    rc, s = run_demo(tmp_path, "--lab", "--agents", "3", "--size", "2M")
    check_success(rc, s, 3)
    assert s["mode"] == "lab"
    assert sorted(a["addr"] for a in s["per_agent"]) == ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
    assert s["server_url"].startswith("http://198.18.0.1:")
