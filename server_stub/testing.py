"""Fixtures for tests, the bench and the demo: a populated data directory and a live server.

This module owns the "lab in a box" of the server side: :func:`populate` makes a data
directory with a package, a site, computers and a task; :func:`running_server` serves an app
in-process on 127.0.0.1 and yields its URL; :class:`ServerProcess` runs ``mcast-ns serve`` as
a subprocess (which can be SIGKILLed and restarted) and reads its URL line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from starlette.applications import Starlette

from . import repo
from .serve import serve
from .store import PackageRow, TaskRow


@dataclass(frozen=True)
class Populated:
    data_dir: Path
    package: PackageRow
    task_id: str
    computers: tuple[str, ...]


def populate(
    data_dir: Path,
    *,
    computers: int = 2,
    package_bytes: int = 300_000,
    subnet: str = "127.0.0.0/8",
) -> Populated:
    """Init ``data_dir`` with one package of random bytes (two files), one site owning
    ``subnet`` and one task that targets ``computers`` fresh GUIDs."""
    data_dir = Path(data_dir)
    store = repo.init_data_dir(data_dir)
    src = data_dir.parent / f"{data_dir.name}-src"
    (src / "sub").mkdir(parents=True, exist_ok=True)
    (src / "big.bin").write_bytes(os.urandom(package_bytes))
    (src / "sub" / "small.txt").write_bytes(b"hello from a package\n")
    added = repo.add_package(store, src, "demo")
    store.add_site("lab", [subnet])
    guids = tuple(str(uuid.uuid4()) for _ in range(computers))
    task = TaskRow(
        str(uuid.uuid4()), added.row.package_id, "setup.exe /q", "asap", "system", "agent"
    )
    store.add_task(task, list(guids))
    store.close()
    return Populated(data_dir, added.row, task.task_id, guids)


@asynccontextmanager
async def running_server(app: Starlette) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) for the duration; yields the base URL."""
    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(serve, app, "127.0.0.1:0")
        try:
            yield url
        finally:
            nursery.cancel_scope.cancel()


class ServerProcess:
    """``python -m server_stub.cli serve`` as a child process that we may kill -9."""

    def __init__(self, data_dir: Path, bind: str = "127.0.0.1:0", *extra: str) -> None:
        self.data_dir = Path(data_dir)
        self.bind = bind
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        cmd = [sys.executable, "-m", "server_stub.cli", "serve", "--bind", self.bind]
        cmd += ["--data", str(self.data_dir), *self.extra]
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=root
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("http://"):  # it exited before binding
            self.proc.kill()
            raise RuntimeError(f"server did not print its URL (got {line!r})")
        self.url = line
        self.bind = line.removeprefix("http://")  # a restart reuses the same port
        return line

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
