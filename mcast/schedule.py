"""When a downloaded package may run: the ``<Schedule when="...">`` of a task (step 7).

Three forms, all in the one ``when`` attribute of the policy:

- ``asap`` (or empty): run as soon as the package is downloaded;
- an ISO 8601 time, ``2025-11-26T03:00:00Z``: run at or after that time;
- a window, two ISO 8601 times joined by ``/`` (an ISO 8601 interval),
  ``2025-11-26T22:00:00Z/2025-11-27T04:00:00Z``: run only inside the window; a window that
  has ended before the package could run is *missed* and the task fails (it is not run late);
- a daily window, ``HH:MM/HH:MM`` (local time, may wrap past midnight): run inside the next
  occurrence of that window; never missed.

Times without a zone are local time, as an agent on a desktop would read them. The agent
decides with this module when a task runs; the server (``mcast-ns task add --schedule``) reads
it with the same parser so that it refuses a schedule the agent could not read. This module is
pure: every function takes ``now`` (seconds since the epoch).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import Enum

from .errors import UsageError

_DAILY = re.compile(r"(\d{1,2}):(\d{2})/(\d{1,2}):(\d{2})")


class ScheduleError(UsageError, ValueError):
    """The ``when`` text is not one of the accepted forms."""


class Kind(Enum):
    ASAP = "asap"
    AT = "at"
    WINDOW = "window"
    DAILY = "daily"


@dataclass(frozen=True)
class Schedule:
    kind: Kind
    start: float = 0.0  # AT, WINDOW: epoch seconds
    end: float = 0.0  # WINDOW
    daily: tuple[int, int] = (0, 0)  # DAILY: minutes after local midnight (start, end)

    def describe(self) -> str:
        if self.kind is Kind.ASAP:
            return "asap"
        if self.kind is Kind.AT:
            return f"at {_fmt(self.start)}"
        if self.kind is Kind.WINDOW:
            return f"in window {_fmt(self.start)} - {_fmt(self.end)}"
        (a, b) = self.daily
        return f"daily window {a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"


@dataclass(frozen=True)
class Decision:
    due: bool
    missed: bool = False
    next_check: float | None = None  # when to look again (if not due and not missed)


def _fmt(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(text: str) -> float:
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ScheduleError(f"{text[:60]!r} is not an ISO 8601 time") from None
    return when.timestamp()  # naive -> local time


def parse_schedule(when: str) -> Schedule:
    text = when.strip()
    if text.lower() in ("", "asap", "now"):
        return Schedule(Kind.ASAP)
    m = _DAILY.fullmatch(text)
    if m:
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
            raise ScheduleError(f"{text!r}: hours 0-23, minutes 0-59")
        a, b = h1 * 60 + m1, h2 * 60 + m2
        if a == b:
            raise ScheduleError(f"{text!r}: an empty daily window")
        return Schedule(Kind.DAILY, daily=(a, b))
    if "/" in text:
        first, _, second = text.partition("/")
        start, end = _iso(first), _iso(second)
        if end <= start:
            raise ScheduleError(f"{text!r}: the window ends before it starts")
        return Schedule(Kind.WINDOW, start=start, end=end)
    return Schedule(Kind.AT, start=_iso(text))


def decide(s: Schedule, now: float) -> Decision:
    """Is a task with schedule ``s`` due at ``now``?"""
    if s.kind is Kind.ASAP:
        return Decision(True)
    if s.kind is Kind.AT:
        return Decision(True) if now >= s.start else Decision(False, next_check=s.start)
    if s.kind is Kind.WINDOW:
        if now < s.start:
            return Decision(False, next_check=s.start)
        return Decision(True) if now < s.end else Decision(False, missed=True)
    local = dt.datetime.fromtimestamp(now).astimezone()
    minute = local.hour * 60 + local.minute
    a, b = s.daily
    inside = a <= minute < b if a < b else (minute >= a or minute < b)
    if inside:
        return Decision(True)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    start = midnight + dt.timedelta(minutes=a)
    if start.timestamp() <= now:
        start += dt.timedelta(days=1)
    return Decision(False, next_check=start.timestamp())
