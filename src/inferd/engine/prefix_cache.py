"""Which earlier token prefix a new sequence can reuse, and who owns shared KV cells.

Two places hold reusable prefixes:

- Running sequences, in the KV cache. llama.cpp's unified KV cache lets one cell belong to
  several sequence ids: copying a prefix (`seq_cp`) adds the new id to the cells, and
  removing a sequence (`seq_rm`) frees only cells no other id holds. Sharing is always of a
  prefix, so ownership forms a tree: a sequence borrows the first `borrowed` cells of its
  parent and owns the rest. The number of cells in use is the sum of what every holder
  owns. When a holder goes away, the child that borrowed the most of it inherits those
  cells, and its other children borrow from that heir instead, so the count stays exact.
- Finished sequences, in host memory (`PrefixStore`). Their KV state is saved when they
  finish and their cells are freed at once: with a unified cache every decode step's
  attention spans all occupied cells, so cells kept for later would slow every running
  sequence (measured: 12-15 % per step at 16 sequences). A new prompt that shares a saved
  prefix gets the state restored into its own cells, which costs a memory copy instead of
  the prefill.
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

    def add(self, entry: SavedPrefix, state: bytes | bytearray) -> None:
        entry.state = state
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


class KVLedger:
    """Keeps the borrow tree in step with what llama.cpp does to shared cells."""

    @staticmethod
    def share(src: Sequence, dst: Sequence, n: int) -> None:
        """`dst` now holds src's first n cells (after a seq_cp)."""
        dst.parent = src
        dst.borrowed = n
        dst.n_computed = n
        src.children.append(dst)

    @staticmethod
    def release(h: Sequence) -> None:
        """`h` gives up its cells (after a seq_rm of its id): hand shared ones to an heir."""
        parent = h.parent
        if parent is not None:
            parent.children.remove(h)
        if h.children:
            heir = max(h.children, key=lambda c: c.borrowed)
            for c in h.children:
                if c is not heir:
                    c.parent = heir
                    heir.children.append(c)
            heir.parent = parent
            heir.borrowed = min(h.borrowed, heir.borrowed)
            if parent is not None:
                parent.children.append(heir)
        h.children = []
        h.parent = None
        h.borrowed = 0
        h.n_computed = 0
