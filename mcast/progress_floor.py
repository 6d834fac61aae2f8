"""The slow-session floor: a session whose progress stays under a rate for a grace period is
left (for HTTP of the missing units), however alive its master looks.

Progress is the larger of two gains over the window: the receiver's own verified units, and
the units the master announces it holds verified (a master streaming its own download from a
slow server moves its receivers in whole FEC blocks, but its announces show every unit). A
rendezvous hold is not slowness: the window starts again when the hold ends. Each window is
``grace`` seconds long; one that gained less than ``min_bytes_per_s * grace`` ends the
session. This is also what bounds a replayed or forged announce that keeps a dead master
looking alive: it shows no progress.
"""

from __future__ import annotations


class ProgressFloor:
    def __init__(self, now: float, *, min_bytes_per_s: float, grace: float, unit_size: int) -> None:
        self.min_bytes_per_s = min_bytes_per_s
        self.grace = grace
        self.unit_size = unit_size
        self._start = now
        self._own0 = 0
        self._master0 = 0
        self._master = 0

    @property
    def enabled(self) -> bool:
        return self.min_bytes_per_s > 0

    def start(self, now: float, own_units: int) -> None:
        """The session was joined (or its hold ended): a new window from here."""
        self._start, self._own0, self._master0 = now, own_units, self._master

    @property
    def master_units(self) -> int:
        """The most verified units the master has announced."""
        return self._master

    def master_holds(self, verified_units: int) -> None:
        """The master announced it holds this many verified units."""
        self._master = max(self._master, verified_units)

    def hold(self, now: float, until: float, own_units: int) -> None:
        """The master is holding its first data until ``until``: not slowness."""
        self.start(max(now, until), own_units)
        self._master0 = self._master

    def deadline(self) -> float | None:
        return self._start + self.grace if self.enabled else None

    def check(self, now: float, own_units: int) -> str | None:
        """At the end of a window: why the session is too slow, or None (a new window)."""
        if not self.enabled or now < self._start + self.grace:
            return None
        gained = max(own_units - self._own0, self._master - self._master0) * self.unit_size
        rate = gained / max(now - self._start, 1e-9)
        if rate < self.min_bytes_per_s:
            return (f"session slower than {self.min_bytes_per_s / 1024:g} KiB/s for "
                    f"{self.grace:g}s ({rate / 1024:.1f} KiB/s)")  # fmt: skip
        self.start(now, own_units)
        return None
