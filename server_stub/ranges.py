"""HTTP byte ranges: parsing one ``Range: bytes=...`` header against a resource size.

Only single ranges are supported (what the engine's HTTP fallback sends). A syntactically
malformed header or a multi-range request is a 400 with a message; a well-formed range that
does not overlap the resource is a 416 (RFC 9110 section 14).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mcast.errors import UsageError

_RANGE_RE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


class RangeError(UsageError, ValueError):
    """A Range header the server cannot honour; ``status`` is 400 or 416."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """None for "the whole resource"; a ByteRange; or RangeError(400 or 416)."""
    if header is None:
        return None
    text = header.strip().replace(" ", "")
    if "," in text:
        raise RangeError("multiple byte ranges are not supported; ask for one range", 400)
    m = _RANGE_RE.fullmatch(text)
    if m is None or (m.group(1) == "" and m.group(2) == ""):
        raise RangeError(f"malformed Range header {header[:80]!r}; expected bytes=a-b", 400)
    first, last = m.group(1), m.group(2)
    if first == "":  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeError(f"range {header[:80]!r} is not satisfiable for size {size}", 416)
        return ByteRange(max(0, size - n), size)
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        raise RangeError(f"malformed Range header {header[:80]!r}: last byte before first", 400)
    if start >= size:
        raise RangeError(f"range {header[:80]!r} is not satisfiable for size {size}", 416)
    return ByteRange(start, end)
