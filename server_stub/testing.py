"""Fixtures for tests, the bench and the demo: a populated data directory and a live server.

This module owns the "lab in a box" of the server side: :func:`populate` makes a data
directory with a package, a site, computers (each with its secret) and a task, and the TLS CA
and certificate; :func:`running_server` serves an app in-process on 127.0.0.1 (HTTPS when
given the certificate) and yields its URL; :func:`agent_client` is an httpx client that signs
as one computer; :class:`ServerProcess` runs ``mcast-ns serve`` as a subprocess (which can be
SIGKILLed and restarted) and reads its URL line.
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
from functools import partial
from pathlib import Path

import httpx
import trio
from starlette.applications import Starlette

from mcast.fleet_auth import HmacAuth, new_secret
from mcast.pinned_tls import pinned_context

from . import repo, tls
from .serve import serve
from .store import PackageRow, TaskRow


@dataclass(frozen=True)
class Populated:
    data_dir: Path
    package: PackageRow
    task_id: str
    computers: tuple[str, ...]
    secrets: dict[str, bytes]  # computer GUID -> its secret

    @property
    def ca_file(self) -> Path:
        return tls.tls_dir(self.data_dir) / tls.CA_CERT

    @property
    def cert(self) -> tls.CertFiles:
        return tls.server_files(tls.tls_dir(self.data_dir))

    def client(self, url: str, index: int = 0, **kw: object) -> httpx.AsyncClient:
        """An httpx client for ``url`` that signs as computer ``index``."""
        guid = self.computers[index]
        return agent_client(url, guid, self.secrets[guid], self.ca_file, **kw)


def populate(
    data_dir: Path,
    *,
    computers: int = 2,
    package_bytes: int = 300_000,
    subnet: str = "127.0.0.0/8",
    database: str | None = None,
) -> Populated:
    """Init ``data_dir`` with one package of random bytes (two files), one site owning
    ``subnet`` and one task that targets ``computers`` fresh GUIDs, each with a secret; and
    the CA and server certificate of ``DATA/tls``. ``database``: a PostgreSQL URL for the
    store (default SQLite in the data directory)."""
    data_dir = Path(data_dir)
    store = repo.init_data_dir(data_dir, database)
    tls.init_tls(data_dir)
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
    secrets = {g: new_secret() for g in guids}
    for guid, secret in secrets.items():
        store.set_secret(guid, secret)
    store.close()
    return Populated(data_dir, added.row, task.task_id, guids, secrets)


def agent_client(
    url: str, guid: str, secret: bytes, ca_file: Path | None = None, **kw: object
) -> httpx.AsyncClient:
    """An httpx client for base ``url`` whose requests are signed as computer ``guid``;
    over https it trusts ``ca_file`` only."""
    verify = pinned_context(ca_file) if ca_file is not None else True
    return httpx.AsyncClient(
        base_url=url,
        auth=HmacAuth(guid, secret),
        verify=verify,
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def running_server(app: Starlette, cert: tls.CertFiles | None = None) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) for the duration, over HTTPS with ``cert``;
    yields the base URL."""
    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(partial(serve, app, "127.0.0.1:0", tls=cert))
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
        if not line.startswith(("http://", "https://")):  # it exited before binding
            self.proc.kill()
            raise RuntimeError(f"server did not print its URL (got {line!r})")
        self.url = line
        self.bind = line.split("://", 1)[1]  # a restart reuses the same port
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
