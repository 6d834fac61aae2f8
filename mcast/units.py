"""Human quantities on command lines: sizes (64M, 1G) and rates (100mbit), both ways.

The one parser of each for the whole project (the engine's CLI, the agent, the benchmarks):

* sizes are bytes in binary multiples: ``4096``, ``512K``, ``64M``, ``1.5G``, ``64MiB``;
* rates are bits per second in decimal multiples, as ``tc`` counts them: ``100mbit``,
  ``1gbit``, ``500k``, ``2500000``; **0 means no limit**, also spelt ``none``,
  ``unlimited``, ``off`` or ``inf``: a sender with no cap finds its receivers' pace from
  their feedback, and a lab link with no limit is not shaped.

A bad quantity raises :class:`BadQuantity`, which is at once a ``UsageError`` (exit 2), a
``ValueError`` and an ``argparse.ArgumentTypeError``, so these functions serve as argparse
``type=`` callables whose message argparse prints as it is.
"""

from __future__ import annotations

import argparse
import re

from mcast.errors import UsageError

_SIZE = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_RATE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_NO_LIMIT = ("0", "none", "unlimited", "off", "inf")


class BadQuantity(UsageError, ValueError, argparse.ArgumentTypeError):
    """A size or rate that does not parse: a bad argument (exit 2)."""


def parse_size(text: str) -> int:
    """Bytes from '4096', '64k', '64M', '1.5G', '1GiB' (binary multiples)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise BadQuantity(f"{text!r} is not a size (try 4096, 64M or 1G)")
    return int(float(m.group(1)) * _SIZE[m.group(2)])


def parse_rate(text: str) -> int:
    """Bits per second from '100mbit', '1gbit', '500k'; 0 (or 'none') means no limit."""
    t = text.strip().lower()
    if t in _NO_LIMIT:
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps|b/s)?", t)
    if not m:
        raise BadQuantity(f"{text!r} is not a rate (try 100mbit, 1gbit, or 0 for no limit)")
    return int(float(m.group(1)) * _RATE[m.group(2)])


def format_rate(bps: int) -> str:
    """The shortest text :func:`parse_rate` reads back as ``bps`` ('100mbit'; 0 is '0')."""
    for div, unit in ((10**9, "gbit"), (10**6, "mbit"), (10**3, "kbit")):
        if bps and bps % div == 0:
            return f"{bps // div}{unit}"
    return f"{bps}bit" if bps else "0"
