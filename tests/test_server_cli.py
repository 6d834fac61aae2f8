"""The ``mcast-ns`` admin CLI, in-process, and ``serve`` as a subprocess that prints its URL."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import httpx
import pytest

from server_stub.cli import main
from server_stub.store import Store
from server_stub.testing import ServerProcess


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = tmp_path / "ns"
    assert run(capsys, "init", "--data", str(d))[0] == 0
    return d


def test_package_add_signs_and_a_change_gets_a_new_hash(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    src = tmp_path / "src"
    src.mkdir()
    (src / "setup.exe").write_bytes(os.urandom(5000))
    code, out, _ = run(capsys, "package", "add", str(src), "--name", "App", "--data", str(data))
    assert code == 0 and out.startswith("added") and "version 1" in out
    first = Store(data).latest_package(name="App")
    assert first is not None and (data / "packages" / first.hash / "snapshot.xml").exists()

    code, out, _ = run(capsys, "package", "add", str(src), "--name", "App", "--data", str(data))
    assert code == 0 and out.startswith("unchanged")

    (src / "setup.exe").write_bytes(os.urandom(5000))
    code, out, _ = run(capsys, "package", "add", str(src), "--name", "App", "--data", str(data))
    second = Store(data).latest_package(name="App")
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


def test_commands_refuse_an_uninitialised_data_dir(tmp_path: Path):
    with pytest.raises(SystemExit, match="not initialised"):
        main(["status", "--data", str(tmp_path / "nothing")])


def test_serve_prints_its_bound_url(data: Path):
    server = ServerProcess(data)
    url = server.start()
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        r = httpx.get(f"{url}/health", timeout=5)
        assert r.status_code == 200 and r.text.startswith("ok notification")
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0
