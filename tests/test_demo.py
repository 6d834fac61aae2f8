"""``mcast demo`` end to end, as a user runs it: a subprocess, the JSON summary, the exit code.

Each run starts the server stub and real agent processes on loopback (or on the namespace
lab, as root); the summary's per-agent rows must agree with what the server recorded, HTTP
bytes across all agents stay near one package (one master downloads, the rest join its
multicast session, or a later agent joins a session served from a peer's cache), a master
killed mid-session is reported as killed while a receiver takes over, and nothing the demo
made is left in its temp dir. Runs go through ``mcast demo`` when the project is installed
(its entry point), else ``python -m bench.demo``, the same function.
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
_PLUGINS = plugin_commands()
DEMO = ["mcast.cli", "demo"] if "demo" in _PLUGINS else ["bench.demo"]
SERVED_FROM = {"http", "master", "session", "peer-cache", "cache"}


def run_demo(tmp_path: Path, *args: str, timeout: float = 180) -> tuple[int, dict[str, Any]]:
    """``mcast demo ARGS --json`` with TMPDIR in ``tmp_path``; (rc, summary)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", *DEMO, *args, "--json"],
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
    assert s["http_ratio"] <= 1.1 and s["wan_copies"] == s["http_ratio"], s
    assert s["killed"] == [] and s["failed"] == [], s
    # heard on the discovery group by the demo's observer, not inferred from the routes
    assert s["sessions"] == 1 and len(s["session_ids"]) == 1, s
    assert len(s["masters"]) == 1, s
    routes = sorted(a["route"] for a in s["per_agent"])
    assert routes == ["joined"] * (agents - 1) + ["master"], routes
    # each agent names the session it was in, the one the observer heard
    assert {a["session"] for a in s["per_agent"]} == set(s["session_ids"]), s
    assert sorted(a["served_from"] for a in s["per_agent"]) == ["master"] + ["session"] * (
        agents - 1
    )


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


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--agents", "0"], "--agents must be 1..64"),
        (["--spread", "-1"], "--spread must be 0..3600 seconds"),
        (["--kill-master-at", "1.5"], "--kill-master-at must be a fraction between 0 and 1"),
        (["--kill-master-at", "0"], "--kill-master-at must be a fraction between 0 and 1"),
        (["--agents", "1", "--kill-master-at", "0.5"], "--kill-master-at needs --agents 2"),
        (["--wan-rate", "fast"], "--wan-rate"),
    ],
)
def test_demo_bad_arguments_exit_2_with_one_line(args: list[str], says: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", *DEMO, *args, "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""  # nothing started, no summary


def test_demo_spread_one_copy_over_the_wan(tmp_path: Path) -> None:
    # released a second apart: each later agent finds the session already announced and joins
    # it (the WAN is slow enough that the first pass outlasts the releases)
    rc, s = run_demo(tmp_path, "--agents", "4", "--spread", "1", "--size", "8M",
                     "--wan-rate", "10mbit")  # fmt: skip
    assert rc == 0 and s["all_ok"] is True, s
    assert s["spread_s"] == 1.0 and s["wan_copies"] <= 1.1, s
    released = [a["released_s"] for a in s["per_agent"]]
    assert released == sorted(released) and released[-1] - released[0] >= 2.9, released
    for a in s["per_agent"]:
        assert a["ok"] and a["verified"] and a["server_status"] == "succeeded", a
        assert a["served_from"] in SERVED_FROM, a
        # what the agent reported is what the server recorded
        assert a["server_bytes_http"] == a["bytes_http"], a
    assert [a["served_from"] for a in s["per_agent"]].count("master") == 1, s


def test_demo_later_agent_is_served_from_a_peer_cache(tmp_path: Path) -> None:
    # agent 2 starts long after agent 1's session has ended: agent 1, which keeps serving its
    # cache, answers agent 2's solicit with a session of its own, and nothing crosses the WAN
    rc, s = run_demo(tmp_path, "--agents", "2", "--spread", "12", "--size", "1M")
    assert rc == 0 and s["all_ok"] is True, s
    first, later = s["per_agent"]
    assert first["served_from"] == "master" and first["bytes_http"] >= s["package_size"], first
    assert later["served_from"] == "peer-cache", later
    assert later["bytes_http"] == 0 and later["bytes_multicast"] >= s["package_size"], later
    assert later["session"] != first["session"], s
    assert s["cache_sessions"] == 1 and s["cache_sessions_served"] == 1, s
    assert first["cache"]["sessions"] == 1 and first["cache"]["error"] == "", first
    assert s["wan_copies"] == 1.0, s


def check_kill(rc: int, s: dict[str, Any], agents: int) -> None:
    assert rc == 0 and s["all_ok"] is True, s
    assert len(s["killed"]) == 1 and s["failed"] == [], s
    kill = s["kill"]
    victim = s["per_agent"][kill["agent"] - 1]
    assert kill["agent"] == s["killed"][0] and not kill["missed"], kill
    assert kill["sent"] >= s["kill_master_at"], kill
    # reported as killed, not as failed, and not dropped from the rows
    assert victim["killed"] is True and victim["served_from"] is None, victim
    assert victim["agent_rc"] != 0 and victim["server_status"] != "succeeded", victim
    assert len(s["per_agent"]) == agents
    survivors = [a for a in s["per_agent"] if not a["killed"]]
    for a in survivors:
        assert a["ok"] and a["verified"] and a["server_status"] == "succeeded", a
        assert a["served_from"] in SERVED_FROM, a
    # a receiver took over: a second session, led by an agent whose notes say so
    assert s["sessions"] == 2 and kill["session"] in s["session_ids"], s
    heirs = [a for a in survivors if a["route"] == "master"]
    assert len(heirs) == 1 and "took over" in heirs[0]["download_note"], survivors
    assert heirs[0]["session"] != kill["session"], s
    assert s["takeover_s"] is not None and 0 < s["takeover_s"] < 15, s
    # the killed master's HTTP bytes count: they crossed the WAN
    assert s["bytes_http_total"] == sum(a["bytes_http"] for a in s["per_agent"]), s
    assert victim["bytes_http"] > 0, victim


def test_demo_kill_master_a_receiver_takes_over(tmp_path: Path) -> None:
    rc, s = run_demo(tmp_path, "--agents", "4", "--kill-master-at", "0.4", "--size", "4M",
                     "--wan-rate", "8mbit")  # fmt: skip
    check_kill(rc, s, 4)
    assert s["wan_copies"] <= 1.3, s


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
def test_demo_spread_on_the_lab(tmp_path: Path) -> None:
    rc, s = run_demo(tmp_path, "--lab", "--agents", "3", "--spread", "1", "--size", "8M",
                     "--wan-rate", "10mbit")  # fmt: skip
    assert rc == 0 and s["all_ok"] is True and s["mode"] == "lab", s
    assert s["wan_copies"] <= 1.1, s
    assert all(a["served_from"] in SERVED_FROM for a in s["per_agent"]), s


@pytest.mark.skipif(not _LAB_OK, reason=f"lab unavailable: {_LAB_WHY}")
def test_demo_kill_master_on_the_lab(tmp_path: Path) -> None:
    rc, s = run_demo(tmp_path, "--lab", "--agents", "3", "--kill-master-at", "0.4",
                     "--size", "4M", "--wan-rate", "8mbit")  # fmt: skip
    check_kill(rc, s, 3)
    assert s["mode"] == "lab" and s["wan_copies"] <= 1.3, s


@pytest.mark.skipif(not _LAB_OK, reason=f"lab unavailable: {_LAB_WHY}")
def test_demo_on_the_lab(tmp_path: Path) -> None:
    rc, s = run_demo(tmp_path, "--lab", "--agents", "3", "--size", "2M")
    check_success(rc, s, 3)
    assert s["mode"] == "lab"
    assert sorted(a["addr"] for a in s["per_agent"]) == ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
    assert s["server_url"].startswith("https://198.18.0.1:")
