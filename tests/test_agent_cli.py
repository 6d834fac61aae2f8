"""``mcast-agent`` as a real process: --once --json, bad arguments, SIGKILL mid-download."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from agent.cli import main
from tests.harness import WAIT_S, within
from tests.test_agent_support import NS, make_ns

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ns(tmp_path: Path) -> NS:
    return make_ns(tmp_path, computers=2)


def argv(ns: NS, url: str, guid: str, state: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "agent.cli", "--server", url, "--guid", guid,
        "--state", str(state), "--trust-key", str(ns.pub), "--ip", "127.0.0.1",
        "--secret-file", str(ns.secret_file(guid)), *extra,
    ]  # fmt: skip


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


async def test_once_json(ns: NS, url: str, tmp_path: Path) -> None:
    guid = ns.guids[0]
    task = ns.add_task()
    cmd = argv(ns, url, guid, tmp_path / "s", "--once", "--json", "--fetcher",
               "agent.httpfetch:fetch")  # fmt: skip
    proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                                  env=env(), cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    states = [e["state"] for e in lines if e["event"] == "job"]
    assert states == ["received", "downloading", "downloaded", "scheduled", "running", "succeeded"]
    (downloaded,) = [e for e in lines if e["event"] == "job" and e["state"] == "downloaded"]
    assert downloaded["route"] == "http" and "session" not in downloaded  # no session: none
    assert downloaded["message"].startswith("downloaded via http")
    assert "in session" not in downloaded["message"]
    # without --serve-cache-for the peer cache never ran: it has nothing to say
    assert not [e for e in lines if e["event"] == "peer-cache"]
    assert sum(1 for e in lines if e["event"] == "posted") == 6
    assert len(ns.runs(guid)) == 1
    await ns.processed()
    assert ns.status_of(guid, task).state == "succeeded"
    # a second --once: nothing to do, still 0, nothing run again
    proc = await trio.run_process(cmd, capture_stdout=True, check=False, env=env(), cwd=ROOT)
    assert proc.returncode == 0 and len(ns.runs(guid)) == 1


async def test_once_exit_code_1_when_a_task_fails(ns: NS, url: str, tmp_path: Path) -> None:
    guid = ns.guids[0]
    ns.add_task(ns.command(exit_code=4))
    cmd = argv(ns, url, guid, tmp_path / "s", "--once", "--fetcher", "agent.httpfetch:fetch")
    proc = await trio.run_process(cmd, capture_stdout=True, check=False, env=env(), cwd=ROOT)
    assert proc.returncode == 1
    assert "failed" in proc.stdout.decode()


async def test_sigkill_during_download(ns: NS, url: str, tmp_path: Path) -> None:
    guid = ns.guids[0]
    task = ns.add_task()
    state = tmp_path / "s"
    slow = argv(ns, url, guid, state, "--json", "--interval", "3600", "--fetcher",
                "tests.test_agent_support:slow_fetch")  # fmt: skip
    proc = await trio.lowlevel.open_process(
        slow, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env(SLOW_FETCH_S="60"),
        cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = b""
    with within(WAIT_S, "the agent to start its download"):
        while b"FETCH-STARTED" not in seen:
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, "the agent exited before the download"
            seen += chunk
    proc.kill()  # SIGKILL
    await proc.wait()
    await proc.stdout.aclose()
    assert ns.runs(guid) == []
    cmd = argv(ns, url, guid, state, "--once", "--fetcher", "agent.httpfetch:fetch")
    done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                                  env=env(), cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert len(ns.runs(guid)) == 1
    await ns.processed()
    row = ns.status_of(guid, task)
    assert row.state == "succeeded" and row.events == 6  # "downloading" was not sent twice


# bad argument -> exit code -> a word of the one-line message; "{pem}" is a file that is not a
# key, "{file}" a regular file, "{dir}" a directory. Each is refused before any work starts.
BAD_ARGUMENTS = [
    (["--server", "ftp://x"], 2, "not an http(s) URL"),
    (["--server", "http://host:99999"], 2, "not an http(s) URL"),
    (["--guid", "nope"], 2, "is not a GUID"),
    (["--trust-key", "/nonexistent.pub"], 4, "cannot read trust key"),
    (["--trust-key", "{dir}"], 4, "cannot read trust key"),
    (["--trust-key", "{pem}"], 3, "is not an Ed25519 public key"),
    (["--state", "{file}"], 4, "cannot use state directory"),
    (["--secret-file", "/nonexistent.secret"], 4, "cannot read secret file"),
    (["--secret-file", "{file}"], 3, "is not a secret"),
    (["--ca-file", "/nonexistent.pem"], 4, "cannot read CA file"),
    (["--ca-file", "{file}"], 3, "holds no usable certificate"),
    (["--server", "https://127.0.0.1:9"], 2, "an https server needs --ca-file"),
    (["--interval", "nan"], 2, "finite number of seconds"),
    (["--interval", "inf"], 2, "finite number of seconds"),
    (["--interval", "-5"], 2, "finite number of seconds"),
    (["--interval", "0"], 2, "finite number of seconds"),
    (["--interval", "soon"], 2, "not a number of seconds"),
    (["--command-timeout", "0"], 2, "finite number of seconds"),
    (["--command-timeout=-inf"], 2, "finite number of seconds"),
    (["--interface", "notanip"], 2, "not an IPv4 address"),
    (["--interface", "::1"], 2, "not an IPv4 address"),
    (["--interface", "192.0.2.7"], 5, "neither loopback nor a lab address"),
    (["--interface", "automatic"], 2, "not an IPv4 address"),
    (["--rank", "fast"], 2, "is not a rank (package-server, wired, laptop, wireless)"),
    (["--rank", ""], 2, "is not a rank"),
    (["--ip", "1.2.3"], 2, "not an IP address"),
    (["--discovery", "239.255.1.1"], 2, "not GROUP:PORT"),
    (["--discovery", "239.255.1.1:0"], 2, "'0' is not a port (1..65535)"),
    (["--discovery", "224.0.0.1:5000"], 2, "is outside 239.255.0.0/16"),
    (["--fetcher", "nomodule"], 2, "MODULE:FUNCTION"),
    (["--fetcher", "agent.nothere:fetch"], 2, "--fetcher"),
    (["--no-such-option"], 2, "unrecognized arguments"),
]


@pytest.mark.parametrize(("extra", "code", "needle"), BAD_ARGUMENTS)
def test_bad_arguments(ns: NS, tmp_path: Path, extra: list[str], code: int, needle: str) -> None:
    (tmp_path / "bad.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n")
    (tmp_path / "a-file").write_text("x")
    places = {"{pem}": tmp_path / "bad.pem", "{file}": tmp_path / "a-file", "{dir}": tmp_path}
    extra = [str(places.get(x, x)) for x in extra]
    cmd = [*argv(ns, "http://127.0.0.1:9", ns.guids[0], tmp_path / "s"), "--once", *extra]
    environ = env()
    environ.pop("MCAST_ALLOW_ANY_INTERFACE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd=ROOT, timeout=60)
    assert (proc.returncode, proc.stdout) == (code, ""), proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcast-agent: error: ") and needle in lines[0]


def test_a_required_argument_missing_is_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "agent.cli", "--server", "http://127.0.0.1:9"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "required" in proc.stderr


def test_state_dir_in_use(ns: NS, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent import Agent
    from tests.test_agent_support import agent_config

    with Agent(agent_config(ns, "http://127.0.0.1:9", ns.guids[0], tmp_path / "s")):
        code = main(argv(ns, "http://127.0.0.1:9", ns.guids[0], tmp_path / "s", "--once")[3:])
    assert code == 2 and "in use by another agent" in capsys.readouterr().err
