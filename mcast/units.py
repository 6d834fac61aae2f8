"""Parsing of human quantities on command lines: sizes (64M, 1G) and rates (100mbit)."""

from __future__ import annotations

import argparse
import re

_SIZE = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_RATE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_size(text: str) -> int:
    """Bytes from '4096', '64k', '64M', '1G', '1GiB' (binary multiples)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 4096, 64M or 1G)")
    return int(m.group(1)) * _SIZE[m.group(2)]


def parse_rate(text: str) -> int:
    """Bits per second from '100mbit', '1gbit', '500k', '0' or 'none' (0 = unlimited)."""
    t = text.strip().lower()
    if t in ("0", "none", "unlimited"):
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps|b/s)?", t)
    if not m:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (try 100mbit or 1gbit)")
    return int(float(m.group(1)) * _RATE[m.group(2)])
