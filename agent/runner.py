"""Running a task's command line (step 8): a timeout, the exit code, a bounded output tail.

The command line is a string written for a shell (``msiexec /i app.msi /qn``,
``python3 setup.py --quiet``), so on POSIX it runs as ``/bin/sh -c COMMAND`` (acceptable for
this stub agent; a production agent would split it and run it under the task's credentials).
It runs in the package's cache directory, with stdin closed and stdout and stderr merged into
one pipe of which only the last ``tail_bytes`` are kept. On timeout the whole process group is
killed (the shell and anything it started).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

DEFAULT_TAIL_BYTES = 2048


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None  # None: it could not be started, or it was killed on timeout
    output_tail: str
    timed_out: bool
    duration_s: float
    error: str = ""  # why it could not be started

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.error


class _Tail:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()

    def add(self, data: bytes | bytearray) -> None:
        self.buf += data
        if len(self.buf) > 2 * self.limit:
            del self.buf[: len(self.buf) - self.limit]

    def text(self) -> str:
        return bytes(self.buf[-self.limit :]).decode("utf-8", "replace")


async def run_command(
    command: str,
    cwd: Path,
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    tail_bytes: int = DEFAULT_TAIL_BYTES,
) -> RunResult:
    """Run ``command`` via ``/bin/sh -c`` in ``cwd``; never raises for a failing command."""
    start = trio.current_time()
    tail = _Tail(tail_bytes)
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = await trio.lowlevel.open_process(
            ["/bin/sh", "-c", command],
            cwd=str(cwd),
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout kills it all
        )
    except OSError as exc:
        return RunResult(None, "", False, 0.0, f"cannot start {command!r}: {exc.strerror}")
    timed_out = False
    try:
        with trio.move_on_after(timeout_s) as scope:
            assert proc.stdout is not None
            async with proc.stdout:
                while data := await proc.stdout.receive_some(65536):
                    tail.add(data)
            await proc.wait()
        if scope.cancelled_caught:
            timed_out = True
    finally:
        if proc.returncode is None:
            _kill_group(proc.pid)
            with trio.CancelScope(shield=True):
                await proc.wait()
    code = None if timed_out else proc.returncode
    return RunResult(code, tail.text(), timed_out, trio.current_time() - start)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
