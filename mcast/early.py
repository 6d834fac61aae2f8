"""Datagrams a receiver keeps from before it joins a session, to replay once it has.

Before the first announce nothing can be checked against a geometry, so the buffer is bounded
both by count and by bytes; when full, the oldest datagrams make room.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

MAX_BYTES = 4 * 1024 * 1024


class EarlyBuffer:
    def __init__(self, count: int, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._kept: deque[bytes] = deque(maxlen=count)
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._kept)

    @property
    def size(self) -> int:
        """Bytes kept."""
        return self._bytes

    def keep(self, data: bytes) -> None:
        if len(self._kept) == self._kept.maxlen:
            self._bytes -= len(self._kept[0])
        self._kept.append(data)
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            self._bytes -= len(self._kept.popleft())

    def drain(self) -> list[bytes]:
        """Everything kept, oldest first; the buffer is empty afterwards."""
        kept, self._bytes = list(self._kept), 0
        self._kept.clear()
        return kept
