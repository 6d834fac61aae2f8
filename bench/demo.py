"""``mcast demo``: the seed flow end to end on this machine (being built)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("mcast demo: not built yet")
