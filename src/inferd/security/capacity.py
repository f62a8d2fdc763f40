"""The server's capacity: at most `max_concurrent` generation requests run, at most
`max_queue` more wait for a slot (first come, first served); beyond that, Overloaded (503)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from inferd.errors import Overloaded


class CapacityGate:
    def __init__(self, max_concurrent: int | None, max_queue: int = 0) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(max_concurrent) if max_concurrent else None
        self.waiting = 0
        self.running = 0

    async def enter(self) -> None:
        """Take a slot, waiting in the queue if there is room there."""
        if self._slots is None:
            self.running += 1
            return
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise Overloaded(
                f"The server is at capacity ({self.max_concurrent} requests running, "
                f"{self.waiting} waiting); retry shortly"
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        if self._slots is not None:
            self._slots.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.enter()
        try:
            yield
        finally:
            self.leave()
