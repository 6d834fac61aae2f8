"""A private PostgreSQL server for the tests and the bench: ``initdb`` and ``pg_ctl`` in a
temporary directory, listening only on a unix socket in that directory (no TCP at all).

PostgreSQL refuses to run as root, so when we are root the server runs as the ``postgres``
user (else ``nobody``) through ``runuser``, with the directory given to that user. Clients
connect over the socket as the database superuser ``mcast`` (trust authentication: only
processes that can reach the socket's directory can connect). :meth:`LocalPostgres.stop`
(also on leaving the ``with`` block, whatever happened) stops the server and removes the
directory. :func:`unavailable` says why a server cannot be started here, or None.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

SUPERUSER = "mcast"
PORT = 5432  # only names the socket file inside our own directory


def _bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    for d in reversed(dirs):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def _run_as() -> str | None:
    """The unprivileged user the server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run as")


def unavailable() -> str | None:
    """Why no private PostgreSQL can be started here (None: it can)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        return f"psycopg not installed ({exc.name})"
    if _bin_dir() is None:
        return "initdb not found (install Debian's postgresql package)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root and runuser not found"
    try:
        _run_as()
    except RuntimeError as exc:
        return str(exc)
    return None


class LocalPostgres:
    """One private PostgreSQL server; ``durable=False`` turns fsync off (tests only)."""

    def __init__(self, *, durable: bool = True) -> None:
        self.durable = durable
        self.dir: Path | None = None
        self.bin = _bin_dir()
        self.user = _run_as()
        self.started = False

    @property
    def socket_dir(self) -> Path:
        assert self.dir is not None
        return self.dir / "sock"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.socket_dir}&port={PORT}"

    def _cmd(self, *args: str) -> list[str]:
        assert self.bin is not None
        cmd = [str(self.bin / args[0]), *args[1:]]
        return ["runuser", "-u", self.user, "--", *cmd] if self.user else cmd

    def _run(self, *args: str) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"]
            raise RuntimeError(f"{args[0]} failed: {lines[-1]}")

    def start(self) -> LocalPostgres:
        if self.bin is None:
            raise RuntimeError("initdb not found")
        self.dir = Path(tempfile.mkdtemp(prefix="mcast-pg-"))
        try:
            self.socket_dir.mkdir()
            if self.user:
                info = pwd.getpwnam(self.user)
                for p in (self.dir, self.socket_dir):
                    os.chown(p, info.pw_uid, info.pw_gid)
            pgdata = self.dir / "data"
            self._run("initdb", "-D", str(pgdata), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                      "--no-instructions", "--no-locale")  # fmt: skip
            opts = [
                "-c listen_addresses=''",
                f"-c unix_socket_directories='{self.socket_dir}'",
                f"-p {PORT}",
                "-c max_connections=200",
                "-c shared_buffers=32MB",
            ]
            if not self.durable:
                opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            self._run("pg_ctl", "-D", str(pgdata), "-w", "-t", "60", "-l",
                      str(self.dir / "server.log"), "-o", " ".join(opts), "start")  # fmt: skip
            self.started = True
        except BaseException:
            self.stop()
            raise
        return self

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.dir is None:
            return
        if self.started:
            subprocess.run(
                self._cmd("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"),
                capture_output=True,
                check=False,
            )
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
