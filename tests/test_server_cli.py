"""The ``mcast-ns`` admin CLI, in-process, and ``serve`` as a subprocess that prints its URL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from server_stub.cli import main
from server_stub.store import Store
from server_stub.testing import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _with_store(data: Path, fn: Callable[[Store], T]) -> T:
    store = Store(data)
    try:
        return fn(store)
    finally:
        store.close()


@pytest.fixture
def data(tmp_path: Path, capsys: pytest.CaptureFixture[str], ns_database: str | None) -> Path:
    d = tmp_path / "ns"
    db = ["--database", ns_database] if ns_database else []
    assert run(capsys, "init", "--data", str(d), *db)[0] == 0
    return d


def test_package_add_signs_and_a_change_gets_a_new_hash(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    src = tmp_path / "src"
    src.mkdir()
    (src / "setup.exe").write_bytes(os.urandom(5000))
    code, out, _ = run(capsys, "package", "add", str(src), "--name", "App", "--data", str(data))
    assert code == 0 and out.startswith("added") and "version 1" in out
    first = _with_store(data, lambda s: s.latest_package(name="App"))
    assert first is not None and (data / "packages" / first.hash / "snapshot.xml").exists()

    code, out, _ = run(capsys, "package", "add", str(src), "--name", "App", "--data", str(data))
    assert code == 0 and out.startswith("unchanged")

    (src / "setup.exe").write_bytes(os.urandom(5000))
    code, out, _ = run(capsys, "package", "add", str(src), "--name", "App", "--data", str(data))
    second = _with_store(data, lambda s: s.latest_package(name="App"))
    assert second is not None
    assert code == 0 and "version 2" in out
    assert second.hash != first.hash and second.package_id == first.package_id
    assert second.session_key != first.session_key
    # the old version stays servable for agents still fetching it
    assert (data / "packages" / first.hash / "files" / "setup.exe").exists()


def test_sites_servers_tasks_and_status(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    d = ["--data", str(data)]
    (tmp_path / "one.msi").write_bytes(b"x" * 100)
    assert run(capsys, "package", "add", str(tmp_path / "one.msi"), "--name", "One", *d)[0] == 0
    assert run(capsys, "site", "add", "branch", "--subnet", "198.18.1.0/24", *d)[0] == 0
    code, _, err = run(capsys, "site", "add", "other", "--subnet", "198.18.1.0/24", *d)
    assert code == 2 and "already belongs" in err
    code, _, err = run(capsys, "site", "add", "bad", "--subnet", "198.18.1.0/33", *d)
    assert code == 2 and "CIDR" in err
    code, _, err = run(
        capsys, "pkgserver", "add", "--site", "nowhere", "--url", "http://127.0.0.1:1/", *d
    )
    assert code == 2 and "unknown site" in err
    assert (
        run(capsys, "pkgserver", "add", "--site", "branch", "--url", "http://127.0.0.1:1", *d)[0]
        == 0
    )
    g1, g2 = str(uuid.uuid4()), str(uuid.uuid4())
    code, out, _ = run(capsys, "task", "add", "--package", "One", "--command", "msiexec /i one.msi",
                       "--targets", f"{g1},{{{g2.upper()}}}", *d)  # fmt: skip
    assert code == 0 and "2 computer(s)" in out
    code, _, err = run(
        capsys, "task", "add", "--package", "Nope", "--command", "x", "--targets", g1, *d
    )
    assert code == 2 and "unknown package" in err
    code, _, err = run(
        capsys, "task", "add", "--package", "One", "--command", "x", "--targets", "zz", *d
    )
    assert code == 2 and "GUID" in err
    code, _, err = run(capsys, "settings", "set", "NoSuchKey", "1", *d)
    assert code == 2 and "unknown setting" in err
    assert run(capsys, "settings", "set", "maxSessionsPerSubnet", "3", *d)[0] == 0

    code, out, _ = run(capsys, "status", "--json", *d)
    status = json.loads(out)
    assert status["queue"]["events"] == 0
    assert sorted(r["computer"] for r in status["status"]) == sorted([g1, g2])
    assert {r["state"] for r in status["status"]} == {"pending"}
    code, out, _ = run(capsys, "status", *d)
    assert code == 0 and "pending" in out and "One" in out


def test_commands_refuse_an_uninitialised_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    code, _, err = run(capsys, "status", "--data", str(tmp_path / "nothing"))
    assert code == 4 and "not initialised" in err


def test_settings_are_stored_normalised(data: Path, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "settings", "set", "multicastEnabled", "NO", "--data", str(data))
    assert code == 0 and out.strip() == "multicastEnabled = false"
    assert _with_store(data, Store.settings)["multicastEnabled"] == "false"


def test_settings_show_marks_a_stored_value_it_refuses(
    data: Path, capsys: pytest.CaptureFixture[str]
):
    store = Store(data)
    with store._write() as db:  # behind the CLI's back, as an older version might have
        db.execute("UPDATE settings SET value = 'two' WHERE key = 'maxSessionsPerSubnet'")
    store.close()
    code, out, _ = run(capsys, "settings", "show", "--data", str(data))
    (line,) = [x for x in out.splitlines() if x.startswith("maxSessionsPerSubnet")]
    assert code == 0 and "refused" in line and "not an integer" in line and "'2'" in line
    assert "refused" not in out.replace(line, "")
    assert run(capsys, "site", "add", "hq", "--data", str(data))[0] == 0
    assert run(capsys, "settings", "set", "serverSite", "hq", "--data", str(data))[0] == 0
    assert Store(data).settings()["serverSite"] == "hq"


G = "12345678-1234-5678-1234-567812345678"
TASK = ["task", "add", "--package", "One", "--command", "run.cmd", "--targets", G]
# bad argument -> exit code -> a word of the one-line message. "{data}" is an initialised data
# directory holding package "One", "{empty}" a directory that is not one, "{pem}" a file that
# is not a key, "{file}" a regular file. Each is refused before anything is changed.
BAD_ARGUMENTS = [
    ([], 2, "required: COMMAND"),
    (["frob"], 2, "invalid choice"),
    (["task"], 2, "SUBCOMMAND"),
    (["init", "--data", "{file}/sub"], 4, "cannot create data directory"),
    (["status", "--data", "{empty}"], 4, "not initialised"),
    (["package", "add", "{empty}/missing", "--name", "A"], 4, "does not exist"),
    (["package", "add", "{file}", "--name", " "], 2, "must not be empty"),
    (["site", "add", "branch", "--subnet", "198.18.1.0/33"], 2, "CIDR"),
    (["pkgserver", "add", "--site", "s", "--url", "ftp://x"], 2, "http(s) URL"),
    (["pkgserver", "add", "--site", "nowhere", "--url", "http://127.0.0.1:1"], 2, "unknown site"),
    (["computer", "add", "nope"], 2, "is not a GUID"),
    ([*TASK[:-1], "zz"], 2, "is not a GUID"),
    ([*TASK[:-1], ","], 2, "at least one computer GUID"),
    ([*TASK, "--schedule", "next tuesday"], 2, "not an ISO 8601 time"),
    ([*TASK, "--schedule", "25:00/01:00"], 2, "hours 0-23"),
    ([*TASK, "--schedule", "2030-01-02T00:00:00Z/2030-01-01T00:00:00Z"], 2, "ends before"),
    ([*TASK, "--run-from", "moon"], 2, "invalid choice"),
    ([*TASK[:5], "", *TASK[6:]], 2, "must not be empty"),
    ([*TASK[:5], "a\x01b", *TASK[6:]], 2, "character XML cannot carry"),
    (["task", "add", "--package", "Nope", "--command", "x", "--targets", G], 2, "unknown package"),
    (["settings", "set", "NoSuchKey", "1"], 2, "unknown setting"),
    (["settings", "set", "maxSessionsPerSubnet", "abc"], 2, "is not an integer"),
    (["settings", "set", "maxSessionsPerSubnet", "0"], 2, "at least 1"),
    (["settings", "set", "minMulticastSize", "-1"], 2, "is not an integer"),
    (["settings", "set", "multicastEnabled", "maybe"], 2, "not a boolean"),
    (["settings", "set", "checkInIntervalMins", "1e3", "--data", "{empty}"], 2, "not an integer"),
    (["settings", "set", "checkInIntervalMins", "10081"], 2, "at most 10080"),
    (["settings", "set", "peerCacheHours", "9000"], 2, "at most 8784"),
    (["settings", "set", "maxSessionsPerSubnet", "two"], 2, "is not an integer"),
    (["settings", "set", "serverSite", "nowhere"], 2, "unknown site"),
    (["settings", "set", "serverSite", "a\x01b"], 2, "serverSite"),
    (["serve", "--bind", "nohostport"], 2, "expected HOST:PORT"),
    (["serve", "--bind", "127.0.0.1:99999"], 2, "expected HOST:PORT"),
    (["serve", "--mode", "package-server"], 2, "needs --site"),
    (["serve", "--upstream", "http://127.0.0.1:9"], 2, "is for --mode package-server"),
    (["serve", "--upstream", "ftp://x"], 2, "http(s) URL"),
    (["serve", "--public-url", "nope"], 2, "http(s) URL"),
    (["serve", "--trust", "/nonexistent.pub"], 4, "cannot read trust key"),
    (["serve", "--trust", "{pem}"], 3, "is not an Ed25519 public key"),
]


@pytest.fixture
def one_package(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    (tmp_path / "one.msi").write_bytes(b"x" * 100)
    assert run(capsys, "package", "add", str(tmp_path / "one.msi"), "--name", "One",
               "--data", str(data))[0] == 0  # fmt: skip
    return data


def _subprocess(*argv: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "server_stub.cli", *argv]
    environ = dict(os.environ, PYTHONPATH=str(ROOT))
    environ.pop("MCAST_NS_DATA", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd=ROOT, timeout=60)


@pytest.mark.parametrize(("argv", "code", "needle"), BAD_ARGUMENTS)
def test_bad_arguments(
    one_package: Path, tmp_path: Path, argv: list[str], code: int, needle: str
) -> None:
    (tmp_path / "bad.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty").mkdir()
    places = {"{data}": one_package, "{empty}": tmp_path / "empty", "{pem}": tmp_path / "bad.pem",
              "{file}": tmp_path / "a-file"}  # fmt: skip
    args = [a.format_map({k[1:-1]: v for k, v in places.items()}) for a in argv]
    if argv and "--data" not in args and argv[0] != "frob":
        args += ["--data", str(one_package)]
    before = _with_store(one_package, lambda s: (s.settings(), s.task_status()))
    proc = _subprocess(*args)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcast-ns: error: ") and needle in lines[0]
    assert _with_store(one_package, lambda s: (s.settings(), s.task_status())) == before


def test_serve_on_a_busy_port_is_a_network_error(data: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _subprocess("serve", "--bind", f"127.0.0.1:{port}", "--data", str(data))
    assert proc.returncode == 5 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "cannot serve on" in proc.stderr


@pytest.mark.parametrize("plain", [False, True], ids=["https", "plain-http"])
def test_serve_prints_its_bound_url(data: Path, plain: bool):
    """HTTPS with the certificate `init` made (verified against its CA only); plain HTTP
    only when asked for."""
    from mcast.pinned_tls import pinned_context

    server = ServerProcess(data, "127.0.0.1:0", *(["--plain-http"] if plain else []))
    url = server.start()
    try:
        scheme = "http" if plain else "https"
        assert url.startswith(f"{scheme}://127.0.0.1:") and not url.endswith(":0")
        r = httpx.get(f"{url}/health", timeout=5, verify=pinned_context(data / "tls" / "ca.pem"))
        assert r.status_code == 200 and r.text.startswith("ok notification")
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0


def test_serve_without_a_certificate_is_a_file_error(tmp_path: Path) -> None:
    pkg = tmp_path / "pkgserver"
    proc = _subprocess("serve", "--mode", "package-server", "--site", "lab", "--data", str(pkg))
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "no TLS certificate" in proc.stderr
