"""The status event queue processor (step 10 of the seed: "processed through the Event queue").

Posted events are first stored durably by the HTTP handler (``Store.record_event``); this
module owns the background task that drains them into the ``task_status`` table. Each batch is
one SQLite transaction that both folds the events in and marks them processed, so a crash at
any instant leaves every event either counted once and marked, or unmarked and pending: on
restart the processor simply drains what is still pending. Nothing is lost or counted twice.
"""

from __future__ import annotations

import logging

import anyio
import anyio.to_thread

from .store import Store

log = logging.getLogger("server_stub.events")


class EventProcessor:
    """Drains the queue whenever woken by a new event, and every ``poll_s`` regardless."""

    def __init__(self, store: Store, *, batch: int = 500, poll_s: float = 0.5) -> None:
        self.store = store
        self.batch = batch
        self.poll_s = poll_s
        self.processed = 0
        self._wakeup = anyio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def drain(self) -> int:
        """Process until the queue is empty; returns how many events this call processed."""
        total = 0
        while True:
            n = await anyio.to_thread.run_sync(self.store.process_events, self.batch)
            total += n
            if n < self.batch:
                break
        self.processed += total
        return total

    async def run(self) -> None:
        while True:
            self._wakeup = anyio.Event()
            try:
                n = await self.drain()
                if n:
                    log.debug("processed %d status events", n)
            except Exception:  # a failing batch is retried at the next poll, never lost
                log.exception("status event processing failed; will retry")
            with anyio.move_on_after(self.poll_s):
                await self._wakeup.wait()
