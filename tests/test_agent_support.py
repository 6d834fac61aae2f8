"""Helpers of the agent tests (no tests here): a Notification Server data directory with a
runnable package, agent configs, fetchers that fail or die on cue, status polling."""

from __future__ import annotations

import os
import pwd
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from agent import AgentConfig
from agent.httpfetch import fetch as http_fetch
from mcast.fetch import FetchProgress, FetchResult, FetchSettings
from mcast.fleet_auth import new_secret, write_secret
from mcast.snapshot import Snapshot
from server_stub import repo
from server_stub.store import StatusRow, Store, TaskRow
from tests.harness import WAIT_S, await_for

SETUP_PY = """\
import os, pathlib, sys
marker = pathlib.Path(sys.argv[1])
marker.mkdir(parents=True, exist_ok=True)
with open(marker / (os.environ["MCAST_AGENT_GUID"] + ".runs"), "a") as fh:
    fh.write(os.environ["MCAST_TASK_ID"] + " " + os.environ["MCAST_PACKAGE_HASH"] + "\\n")
print("installing", pathlib.Path("payload.bin").stat().st_size, "bytes")
code = int(sys.argv[2]) if len(sys.argv) > 2 else 0
if code:
    print("error: installer failed", file=sys.stderr)
sys.exit(code)
"""
# the tests' tasks run as the user running the tests (the agent in the test runs as that user
# too); tests of the run-as rules name their users themselves
ME = pwd.getpwuid(os.geteuid()).pw_name


@dataclass
class NS:
    data: Path
    package_id: str
    package_name: str
    package_hash: str
    marker: Path
    guids: tuple[str, ...]
    src: Path

    @property
    def pub(self) -> Path:
        return self.data / repo.PUB_NAME

    def secret_file(self, guid: str) -> Path:
        """Where the secret of computer ``guid`` is (``make_ns`` gives each one)."""
        return self.data.parent / "secrets" / f"{guid}.secret"

    def command(self, exit_code: int = 0) -> str:
        return f"{sys.executable} setup.py {self.marker} {exit_code}"

    def add_task(
        self,
        command: str | None = None,
        *,
        schedule: str = "asap",
        guids: tuple[str, ...] | None = None,
        run_from: str = "agent",
        run_as: str = ME,
    ) -> str:
        store = Store(self.data)
        try:
            task_id = str(uuid.uuid4())
            store.add_task(
                TaskRow(
                    task_id,
                    self.package_id,
                    command or self.command(),
                    schedule,
                    run_as,
                    run_from,
                ),
                list(guids or self.guids),
            )
        finally:
            store.close()
        return task_id

    def new_version(self) -> str:
        """Change the package: a new version, a new hash."""
        (self.src / "payload.bin").write_bytes(os.urandom(150_000))
        store = Store(self.data)
        try:
            added = repo.add_package(store, self.src, self.package_name)
        finally:
            store.close()
        assert added.changed
        self.package_hash = added.row.hash
        return added.row.hash

    def runs(self, guid: str) -> list[str]:
        path = self.marker / f"{guid}.runs"
        return path.read_text().splitlines() if path.exists() else []

    def status(self) -> list[StatusRow]:
        store = Store(self.data)
        try:
            return store.task_status()
        finally:
            store.close()

    def status_of(self, guid: str, task_id: str) -> StatusRow:
        (row,) = [r for r in self.status() if r.computer == guid and r.task_id == task_id]
        return row

    def queue(self) -> dict[str, int]:
        store = Store(self.data)
        try:
            return store.queue_counts()
        finally:
            store.close()

    async def processed(self) -> None:
        """Wait until the server's event processor has folded every stored event."""
        await wait_until(lambda: not self.queue()["pending"],
                         what="the server's processor to fold every stored event")  # fmt: skip


async def wait_until(
    pred: Callable[[], object], *, limit: float = WAIT_S, what: str = "the awaited state"
) -> None:
    """Poll ``pred`` (state on disk, in another process) until it is true; fail with ``what``
    at the (generous) limit."""
    await await_for(pred, what, limit, interval=0.03)


def make_ns(tmp: Path, computers: int = 3, payload: int = 200_000) -> NS:
    data = tmp / "ns"
    store = repo.init_data_dir(data)
    src = tmp / "pkg-src"
    src.mkdir()
    (src / "setup.py").write_text(SETUP_PY)
    (src / "payload.bin").write_bytes(os.urandom(payload))
    added = repo.add_package(store, src, "app")
    store.add_site("lab", ["127.0.0.0/8"])
    guids = tuple(str(uuid.uuid4()) for _ in range(computers))
    (tmp / "secrets").mkdir()
    for g in guids:
        secret = new_secret()
        store.set_secret(g, secret)
        write_secret(tmp / "secrets" / f"{g}.secret", secret)
    store.close()
    return NS(data, added.row.package_id, "app", added.row.hash, tmp / "marker", guids, src)


def agent_config(ns: NS, url: str, guid: str, state: Path, **kw: object) -> AgentConfig:
    return AgentConfig(
        server_url=url,
        guid=guid,
        state_dir=state,
        trust_key=ns.pub,
        secret_file=ns.secret_file(guid),
        ip="127.0.0.1",
        retry_base_s=0.05,
        retry_cap_s=0.5,
        download_retry_base_s=0.05,
        http_timeout_s=5.0,
        **kw,  # type: ignore[arg-type]
    )


class Killed(BaseException):
    """Stands for SIGKILL in in-process tests: nothing below it gets to clean up nicely."""


@dataclass
class CountingFetcher:
    """The HTTP stand-in fetcher, counting calls; ``die_after`` bytes -> raise Killed."""

    calls: int = 0
    die_after: int | None = None
    results: list[FetchResult] | None = None

    async def __call__(
        self,
        snapshot: Snapshot,
        dest: Path,
        codebases: list[str],
        settings: FetchSettings | None = None,
        *,
        progress: Callable[[FetchProgress], None] | None = None,
    ) -> FetchResult:
        self.calls += 1
        limit = self.die_after

        def watch(p: FetchProgress) -> None:
            if progress is not None:
                progress(p)
            if limit is not None and p.bytes_http >= limit:
                raise Killed(f"killed after {p.bytes_http} bytes")

        result = await http_fetch(snapshot, dest, codebases, settings, progress=watch)
        if self.results is not None:
            self.results.append(result)
        return result


async def slow_fetch(
    snapshot: Snapshot,
    dest: Path,
    codebases: list[str],
    settings: FetchSettings | None = None,
    *,
    progress: Callable[[FetchProgress], None] | None = None,
) -> FetchResult:
    """For the SIGKILL test of the CLI: announce the download on stdout, then take a while."""
    print("FETCH-STARTED", flush=True)
    await trio.sleep(float(os.environ.get("SLOW_FETCH_S", "30")))
    return await http_fetch(snapshot, dest, codebases, settings, progress=progress)
