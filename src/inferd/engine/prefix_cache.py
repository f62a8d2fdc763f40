"""Which earlier token prefix a new sequence can reuse.

Two places hold reusable prefixes:

- Running sequences, in the KV cache: a new sequence whose prompt starts like a running
  one's computed tokens gets them through the backend's KV pool (`KVPool.share`: shared
  cells in llama.cpp's unified cache, a copy between its split streams).
- Finished sequences, in host memory (`PrefixStore`). Their KV state is saved when they
  finish and their place freed at once: with llama.cpp's unified cache every decode step's
  attention spans all occupied cells, so cells kept for later would slow every running
  sequence (measured: 12-15 % per step at 16 sequences). A new prompt that shares a saved
  prefix gets the state restored into its own place (`KVPool.restore`), which costs a
  memory copy instead of the prefill.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from inferd.engine.sequence import Sequence

# Reusing fewer tokens than this is not worth a sequence id or a restore.
MIN_REUSE = 4


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of a[:limit] and b[:limit] (binary search on slices,
    so the comparisons run in C)."""
    hi = min(len(a), len(b), limit)
    if hi == 0 or a[0] != b[0]:
        return 0
    if a[:hi] == b[:hi]:
        return hi
    lo = 1  # a[:lo] == b[:lo] holds; a[:hi] == b[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def best_prefix(tokens: list[int], holders: Iterable[Sequence]) -> tuple[Sequence | None, int]:
    """The running sequence sharing the longest computed prefix with `tokens`, leaving at
    least one token to feed (a step must sample from something)."""
    best: Sequence | None = None
    best_len = 0
    limit = len(tokens) - 1
    for h in holders:
        if h.n_computed < MIN_REUSE:
            continue
        n = common_prefix(tokens, h.tokens, min(limit, h.n_computed))
        if n > best_len:
            best, best_len = h, n
    if best_len < MIN_REUSE:
        return None, 0
    return best, best_len


@dataclass(eq=False, slots=True)
class SavedPrefix:
    """The KV state of a finished sequence's first `len(tokens)` positions, as the
    backend saved it (opaque bytes)."""

    tokens: list[int]
    state: bytes | bytearray = b""

    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return len(self.state)


class PrefixStore:
    """Saved prefixes in host memory, least recently used evicted first past `budget`
    bytes. A prefix that a newer one extends is dropped (a conversation keeps only its
    latest turn)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[SavedPrefix, None] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: SavedPrefix) -> None:
        """Keep `entry` (its state saved)."""
        if entry.nbytes > self.budget:
            return
        for old in [e for e in self._entries if common_prefix(e.tokens, entry.tokens, e.n) == e.n]:
            self._remove(old)
        self._entries[entry] = None
        self.nbytes += entry.nbytes
        while self.nbytes > self.budget:
            self._remove(next(iter(self._entries)))

    def best(self, tokens: list[int]) -> tuple[SavedPrefix | None, int]:
        """The saved prefix sharing the most tokens with `tokens` (leaving one to feed)."""
        best: SavedPrefix | None = None
        best_len = 0
        limit = len(tokens) - 1
        for e in self._entries:
            n = common_prefix(tokens, e.tokens, limit)
            if n > best_len:
                best, best_len = e, n
        if best_len < MIN_REUSE:
            return None, 0
        return best, best_len

    def touch(self, entry: SavedPrefix) -> None:
        if entry in self._entries:
            self._entries.move_to_end(entry)

    def discard(self, entry: SavedPrefix) -> None:
        if entry in self._entries:
            self._remove(entry)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def _remove(self, entry: SavedPrefix) -> None:
        del self._entries[entry]
        self.nbytes -= entry.nbytes
