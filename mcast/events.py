"""Events that the sans-I/O cores hand up to their drivers (pulled with ``next_event()``)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """The session ended for this receiver before completion; the caller retries or falls back."""

    reason: str


@dataclass(frozen=True, slots=True)
class SenderFinished:
    """The sender stopped: every receiver it heard is done or gone, or it was closed."""

    reason: str
    receivers_done: int
    receivers_lost: int


Event = SessionJoined | UnitVerified | Completed | SessionFailed | SenderFinished
