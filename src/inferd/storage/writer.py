"""The background writer: records go to the spool at once and to the database in batches.

`submit` never waits: it appends the record to the spool file and wakes the writer task. The
task copies spooled records into the database in batches; while the database is down or
locked it keeps them spooled and retries, and on the next start it replays what a previous
process left behind. Inserts skip rows already present, so nothing is written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from inferd.storage.records import MessageRecord, UsageRecord
from inferd.storage.repository import Repository
from inferd.storage.spool import Spool, SpoolItem

log = logging.getLogger(__name__)


class UsageWriter:
    def __init__(
        self,
        repository: Repository,
        spool_path: Path,
        *,
        batch_size: int = 500,
        interval: float = 0.25,
        retry_interval: float = 1.0,
        ready: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._repo = repository
        self._ready = ready  # checked before each write (the store migrates there)
        self._spool = Spool(spool_path)
        self._batch_size = batch_size
        self._interval = interval
        self._retry = retry_interval
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.healthy = True  # False while the database refuses writes
        self.written = 0  # records written to the database by this writer
        self.submitted = 0  # records handed to this writer
        self.write_errors = 0  # batches the database refused (kept spooled, retried)

    @property
    def spool_path(self) -> Path:
        return self._spool.path

    @property
    def spool_bytes(self) -> int:
        """Bytes of records in the spool that the database does not have yet."""
        return self._spool.pending

    @property
    def closed(self) -> bool:
        """Closed: records submitted now go to the spool only."""
        return self._closed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inferd-usage-writer")

    def submit(self, item: SpoolItem) -> None:
        """Hand over a record: durable in the spool when this returns, in the database soon."""
        self._spool.append(item)
        self.submitted += 1
        self._idle.clear()
        if not self._closed:
            self._wake.set()

    async def flush(self, wait: float = 5.0) -> bool:
        """Wait until every submitted record is in the database (False on timeout)."""
        if self._spool.pending == 0:
            return True
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), wait)
        except TimeoutError:
            return False
        return True

    async def close(self, wait: float = 5.0) -> None:
        """Write what is left (up to `wait` seconds); what cannot be written stays spooled.
        The writer is stopped between two batches, never in the middle of one."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), wait)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._spool.pending:
            log.warning(
                "%d bytes of usage records stay spooled in %s until the next start",
                self._spool.pending,
                self._spool.path,
            )
        self._spool.close()

    async def _run(self) -> None:
        while True:
            if not self._closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            while self._spool.pending:
                if await self._write_some():
                    continue
                if self._closed:
                    return  # the database is away: the rest stays spooled
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._retry)
                self._wake.clear()
            self._idle.set()
            if self._closed:
                return

    async def _write_some(self) -> bool:
        if self._ready is not None and not await self._ready():
            self.healthy = False
            return False
        items, end = self._spool.read(self._batch_size)
        usage = [i for i in items if isinstance(i, UsageRecord)]
        messages = [i for i in items if isinstance(i, MessageRecord)]
        try:
            await self._repo.write_batch(usage, messages)
        except Exception as exc:  # down, locked, unreachable: keep them spooled, retry
            self.write_errors += 1
            if self.healthy:
                log.warning("the database refused usage records, spooling them: %s", exc)
            self.healthy = False
            return False
        if not self.healthy:
            log.info("the database is back; spooled usage records written")
        self.healthy = True
        self.written += len(items)
        self._spool.confirm(end)
        return True
