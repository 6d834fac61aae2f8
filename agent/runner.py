"""Running a task's command line (step 8): as its run-as user, a timeout, the exit code, a
bounded output tail.

The command line is a string written for a shell (``python3 setup.py --quiet && rm -f x``;
administrators and existing tasks use ``&&``, ``;`` and redirections), so it runs as
``/bin/sh -c COMMAND`` rather than split with :mod:`shlex`. That hands the shell only text the
server signed: the agent refuses a task whose signature does not verify before it stores it
(:mod:`mcast.task_sig`), so no one between the server and the agent can add to the command.
It runs as the task's run-as user (:mod:`agent.runas`: uid, primary group and supplementary
groups set in the child, with ``HOME``, ``USER`` and ``LOGNAME`` of that user), in the
package's cache directory (entered before the user changes, so the directories above it need
not be open to that user), with stdin closed and stdout and stderr merged into one pipe of
which only the last ``tail_bytes`` are kept. On timeout the whole process group is killed (the
shell and anything it started).
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

from .runas import RunAs

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
    run_as: RunAs | None = None,
) -> RunResult:
    """Run ``command`` via ``/bin/sh -c`` in ``cwd`` as ``run_as`` (None or the agent's own
    user: unchanged); never raises for a failing command."""
    start = trio.current_time()
    tail = _Tail(tail_bytes)
    full_env = dict(os.environ)
    full_env.update(env or {})
    switch = run_as if run_as is not None and not run_as.is_self else None
    if switch is not None:
        full_env.update(HOME=switch.home, USER=switch.name, LOGNAME=switch.name)
    try:
        proc = await trio.lowlevel.open_process(
            ["/bin/sh", "-c", command],
            cwd=str(cwd),
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout kills it all
            user=None if switch is None else switch.uid,
            group=None if switch is None else switch.gid,
            extra_groups=None if switch is None else list(switch.groups),
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
