"""Whether the receiver's session is still alive: the silence and END deadlines.

It owns two times: when the session last showed progress (a shard that fits its geometry, an
announce that differs from the last one; the receiver core decides what counts) and when an
END was heard. The session is dead once ``silence_timeout`` passes without progress, or
``end_grace`` passes after an END with no progress since. An END alone ends nothing: without
a session key anyone can send one, so genuine traffic after it keeps the session.
"""

from __future__ import annotations


class Liveness:
    def __init__(self, now: float, *, silence_timeout: float, end_grace: float) -> None:
        self.silence_timeout = silence_timeout
        self.end_grace = end_grace
        self.last_heard = now
        self.end_heard: float | None = None

    def progress(self, now: float) -> None:
        self.last_heard = now

    def end(self, now: float) -> None:
        self.end_heard = now

    def deadline(self) -> float:
        deadline = self.last_heard + self.silence_timeout
        if self.end_heard is not None:
            deadline = min(deadline, max(self.end_heard, self.last_heard) + self.end_grace)
        return deadline

    def dead(self, now: float, *, joined: bool) -> str | None:
        """Why the session is over at ``now``, or None while it lives."""
        if now < self.deadline():
            return None
        if self.end_heard is not None:
            return "sender ended the session"
        if not joined:
            return f"no session announced for {self.silence_timeout:g}s"
        return f"sender silent for {self.silence_timeout:g}s"
