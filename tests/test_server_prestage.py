"""Package servers pre-stage a package when it is added: real Notification Server and
package server processes on 127.0.0.1, and the bandwidth cap of pre-staging."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server_stub import repo
from server_stub.cli import main
from server_stub.replica import Throttle
from server_stub.store import Store
from server_stub.testing import Populated, ServerProcess, populate
from tests.harness import wait_for


@pytest.fixture
def pop(tmp_path: Path) -> Populated:
    return populate(tmp_path / "ns", computers=1, package_bytes=100_000)


@pytest.fixture
def servers(pop: Populated, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    ns = ServerProcess(pop.data_dir, "127.0.0.1:0", "--plain-http")
    ps = ServerProcess(tmp_path / "ps", "127.0.0.1:0")
    try:
        ns.start()
        ps.extra = ("--mode", "package-server", "--site", "lab", "--upstream", ns.url,
                    "--trust", str(pop.data_dir / repo.PUB_NAME), "--plain-http",
                    "--prestage-kbps", "4096")  # fmt: skip
        ps.start()
        yield ns, ps
    finally:
        ps.stop()
        ns.stop()


def test_a_package_server_has_a_new_package_before_any_agent_asks(
    pop: Populated,
    tmp_path: Path,
    servers: tuple[ServerProcess, ServerProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _ns, ps = servers
    Store(pop.data_dir).add_pkgserver("lab", ps.url + "/")
    src = tmp_path / "new-package"
    src.mkdir()
    (src / "setup.bin").write_bytes(os.urandom(300_000))
    (src / "readme.txt").write_bytes(b"new")
    assert main(["package", "add", str(src), "--name", "New", "--data", str(pop.data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"package server {ps.url}/: pre-staging (HTTP 202)" in out
    row = Store(pop.data_dir).latest_package(name="New")
    assert row is not None
    staged = repo.package_dir(tmp_path / "ps", row.hash)
    # the package server replicates it by itself: nobody asked it for the package
    wait_for(lambda: (staged / "snapshot.xml").exists(), "the package server to pre-stage it")
    for name in ("setup.bin", "readme.txt"):
        assert (staged / "files" / name).read_bytes() == (src / name).read_bytes()
    with httpx.Client() as client:
        # asked again: it has it
        assert client.post(f"{ps.url}/pkg/{row.hash}/prestage").status_code == 200
        body = client.get(f"{ps.url}/pkg/{row.hash}/content").content
        assert body == (src / "readme.txt").read_bytes() + (src / "setup.bin").read_bytes()
        # a hash the upstream does not have is never staged
        missing = "ab" * 32
        assert client.post(f"{ps.url}/pkg/{missing}/prestage").status_code == 202
        assert client.post(f"{ps.url}/pkg/ZZ/prestage").status_code == 400
    assert not repo.package_dir(tmp_path / "ps", missing).exists()


def test_a_package_server_that_cannot_be_told_is_only_a_warning(
    pop: Populated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Store(pop.data_dir).add_pkgserver("lab", "http://127.0.0.1:9/")  # nothing listens there
    (tmp_path / "p.bin").write_bytes(b"p" * 1000)
    code = main(["package", "add", str(tmp_path / "p.bin"), "--name", "P",
                 "--data", str(pop.data_dir)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and "added package 'P'" in out
    assert "warning: package server http://127.0.0.1:9/ not told to pre-stage" in err


def test_the_throttle_holds_the_byte_rate() -> None:
    """Reading 10 MB at 1 MB/s sleeps about 9 s (the first second is the burst), on a fake
    clock that the sleeps advance."""
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    throttle = Throttle(1_000_000, clock=lambda: now[0], sleep=sleep)
    for _ in range(100):
        throttle.take(100_000)
    assert 8.9 <= now[0] <= 9.1
    free = Throttle(0, clock=lambda: now[0], sleep=sleep)
    before = now[0]
    free.take(10**9)
    assert now[0] == before
