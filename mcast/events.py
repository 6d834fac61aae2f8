"""Events that the sans-I/O cores hand up to their drivers (pulled with ``next_event()``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mcast.wire import Announce


@dataclass(frozen=True, slots=True)
class SessionJoined:
    """The receiver adopted a session that sends its snapshot."""

    announce: Announce


@dataclass(frozen=True, slots=True)
class UnitVerified:
    """A hash unit matched the snapshot: the driver may write ``data`` at ``offset``."""

    unit: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Completed:
    """Every unit of the package is verified (decided by the receiver's own map alone)."""


class FailureKind(Enum):
    """Why a session ended for a receiver: what the caller does next depends on it."""

    NO_SESSION = "no_session"  # no announce of a session for the package was heard
    SILENT = "silent"  # the master went silent: dead, so a receiver may take over
    ENDED = "ended"  # the master sent END and nothing followed
    SLOW = "slow"  # under the slow-session floor: leave it for HTTP
    VERIFY = "verify"  # too many units failed verification


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """The session ended for this receiver before completion; the caller retries or falls
    back. ``take_over`` says this receiver is the one that should master the session now
    (its master went silent and it holds the most verified units of those it heard)."""

    reason: str
    kind: FailureKind = FailureKind.SILENT
    take_over: bool = False


@dataclass(frozen=True, slots=True)
class SenderFinished:
    """The sender stopped: every receiver it heard is done or gone, or it was closed."""

    reason: str
    receivers_done: int
    receivers_lost: int


Event = SessionJoined | UnitVerified | Completed | SessionFailed | SenderFinished
