"""The one error family of the project, and the exit codes its command lines share.

Every expected failure of the engine, the agent and the server derives from ``McastError``
and carries ``exit_code``: the exit status a command line should end with when the error
reaches it (the hint h11's ``ProtocolError`` carries as ``error_status_hint``). A command
line therefore maps every expected failure in one ``except McastError`` and prints one line.

Exit codes: 0 done, 1 incomplete (the session or download ended first), 2 bad arguments,
3 snapshot or task not trusted, 4 file or disk error, 5 network or safety refusal,
130 interrupted.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    OK = 0
    INCOMPLETE = 1
    USAGE = 2
    TRUST = 3
    IO = 4
    NET = 5
    INTERRUPTED = 130


class McastError(Exception):
    """Base of every expected failure; ``exit_code`` is the command line's exit status."""

    exit_code: ClassVar[ExitCode] = ExitCode.INCOMPLETE

    def __init__(self, message: str = "", *, exit_code: ExitCode | int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = ExitCode(exit_code)  # type: ignore[misc]  # per-instance hint


class UsageError(McastError):
    """A bad argument or setting: refused when given, before any work starts."""

    exit_code = ExitCode.USAGE


class TrustError(McastError):
    """A snapshot, signature or task that is not trusted or not well formed."""

    exit_code = ExitCode.TRUST


class StorageError(McastError):
    """A file or disk error: unreadable input, no space, a failed write."""

    exit_code = ExitCode.IO


class NetworkError(McastError):
    """A network failure, or an address the safety rules refuse."""

    exit_code = ExitCode.NET
