"""The durable spool: records as JSON lines in a local file, written before the database.

Every record is appended (one write, flushed to the OS) the moment it is handed over, so a
crash of the process loses nothing that was handed over; the writer then copies the file's
records into the database and empties the file once all of them are there.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from inferd.storage.records import MessageRecord, UsageRecord, UsageStatus

log = logging.getLogger(__name__)

SpoolItem = UsageRecord | MessageRecord


def encode(item: SpoolItem) -> bytes:
    row: dict[str, Any] = asdict(item)
    row["created_at"] = item.created_at.isoformat()
    row["kind"] = "usage" if isinstance(item, UsageRecord) else "message"
    return json.dumps(row, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def decode(line: bytes) -> SpoolItem:
    row = json.loads(line)
    kind = row.pop("kind")
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    if kind == "usage":
        row["status"] = UsageStatus(row["status"])
        return UsageRecord(**row)
    if kind == "message":
        return MessageRecord(**row)
    raise ValueError(f"unknown spool record kind {kind!r}")


class Spool:
    """An append-only file of records and how far into it the database has them."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # unbuffered: each record reaches the OS in one write() before `append` returns
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - held open for its life
        if self._file.tell() and not _ends_with_newline(path):
            self._file.write(b"\n")  # end a line torn by a crash, so the next one stays whole
        self._offset = 0  # bytes of the file already in the database

    @property
    def pending(self) -> int:
        """Bytes not yet in the database."""
        if self._file.closed:
            return self.path.stat().st_size - self._offset if self.path.exists() else 0
        return self._file.tell() - self._offset

    def append(self, item: SpoolItem) -> None:
        if self._file.closed:  # handed over after the store closed: kept for the next start
            with open(self.path, "ab", buffering=0) as f:
                f.write(encode(item))
            return
        self._file.write(encode(item))

    def read(self, max_items: int) -> tuple[list[SpoolItem], int]:
        """Up to `max_items` records after the confirmed offset, and the offset after them.
        A torn or unreadable line (a crash mid-write) is skipped with a warning."""
        items: list[SpoolItem] = []
        end = self._offset
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            while len(items) < max_items:
                line = f.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    break  # being written right now? never: appends are whole lines
                end += len(line)
                try:
                    items.append(decode(line))
                except (ValueError, TypeError, KeyError) as exc:
                    log.warning("skipping an unreadable spool line: %s", exc)
        return items, end

    def confirm(self, offset: int) -> None:
        """Records up to `offset` are in the database; empty the file once all are."""
        self._offset = offset
        if self._offset >= self._file.tell():
            self._file.truncate(0)
            self._file.seek(0)
            self._offset = 0

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
