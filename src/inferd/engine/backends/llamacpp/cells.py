"""llama.cpp's KV cache as a `KVPool`: sequence ids (slots) and cells, unified or split.

This module holds llama.cpp's layout rules; it imports nothing of llama.cpp itself and runs
over any `CellCache` (the real context, or the fake backend's model of one).

Unified cache: one pool of cells. A cell may belong to several sequence ids: copying a
prefix (`seq_cp`) adds the new id to the cells, and removing a sequence (`seq_rm`) frees
only cells no other id holds. Sharing is always of a prefix, so ownership forms a tree
(`KVLedger`): a sequence borrows the first `borrowed` cells of its `parent` and owns the
rest; the cells in use are the sum of what every holder owns. A step places its tokens in
consecutive cells, so a sequence fed in steps shared with others has its cells in many runs,
and saving its state costs a copy per run and layer: the kept prefix is bounded
(`MAX_SAVE_RUNS`).

Split cache (one stream per slot): a sequence's room is its own stream, so nothing is ever
short of cells, a prefix "share" is a state copy between streams, and a stream is one run.
llama.cpp cuts a batch into one micro-batch (a full pass over the weights) per run of
consecutive sequence ids in batch order, so a step's chunks go in slot order and the
running slots are kept at 0..n-1: slots are handed out lowest first, and when a sequence
leaves a gap the one in the highest slot moves into it.

Either way the last prompt token is fed alone (`chunk`): llama.cpp's CPU kernels are not
batch-invariant, and this way a seeded answer does not depend on what was reused.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Sequence as Seq
from typing import Protocol

from inferd.engine.prefix_cache import SavedPrefix
from inferd.engine.sequence import Chunk, Sequence

# A finished sequence's saved state covers at most this many runs of KV cells. Without flash
# attention llama.cpp stores V transposed and copies it per run, layer and row: a 16-way
# interleaved 228-token sequence (128 runs) took 39 ms to save, blocking every stream, where
# the same tokens in one run took 4 ms. Beyond the limit only the prefix in the first runs
# (the prompt, usually) is saved.
MAX_SAVE_RUNS = 16


class CellCache(Protocol):
    """The cell-level operations of a llama.cpp context, by sequence id."""

    def free_seq(self, seq_id: int) -> None: ...

    def trim_seq(self, seq_id: int, keep: int) -> None: ...

    def copy_prefix(self, src: int, dst: int, n: int) -> bool:
        """Give the empty `dst` the first `n` positions of `src` (False: nothing changed)."""
        ...

    def move_seq(self, src: int, dst: int) -> None: ...

    def save_seq(self, seq_id: int) -> bytes | bytearray | None: ...

    def restore_seq(self, seq_id: int, state: bytes | bytearray) -> bool:
        """Load a saved state into the empty `seq_id` (False: nothing changed)."""
        ...


class KVLedger:
    """Keeps the borrow tree of a unified cache in step with what llama.cpp does to shared
    cells. When a holder goes away, the child that borrowed the most of it inherits those
    cells and its other children borrow from that heir instead, so the count stays exact."""

    @staticmethod
    def share(src: Sequence, dst: Sequence, n: int) -> None:
        """`dst` now holds src's first n cells (after a seq_cp)."""
        dst.parent = src
        dst.borrowed = n
        src.children.append(dst)

    @staticmethod
    def release(h: Sequence) -> None:
        """`h` gives up its cells (a seq_rm of its id): hand shared ones to an heir."""
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


class CellPool:
    """A llama.cpp context's sequence ids and cells (see the module docstring)."""

    def __init__(self, cache: CellCache, *, slots: int, cells: int, split: bool) -> None:
        self._cache = cache
        self.capacity = cells
        self.split = split
        self.moves = 0
        self._free = list(range(slots))  # a heap: the lowest free id first
        self._held: dict[Sequence, None] = {}  # sequences holding an id, in acquisition order
        self._pending: list[tuple[int, SavedPrefix]] = []  # (slot, prefix) to save, then free

    @property
    def used(self) -> int:
        if self.split:
            return sum(s.n_computed for s in self._held)
        return sum(s.n_computed - s.borrowed for s in self._held)

    def room(self, claimed: int) -> int:
        if self.split:
            return sys.maxsize
        return self.capacity - self.used - claimed

    def chunk(self, seq: Sequence, limit: int) -> int:
        """At most `limit` tokens; the last one before sampling always alone, in a step of
        its own (see the module docstring)."""
        pending = seq.n_pending
        return min(limit, pending - 1) if pending > 1 else min(limit, 1)

    def acquire(self, seq: Sequence) -> bool:
        if not self._free:
            return False
        seq.slot = heapq.heappop(self._free)
        del seq.run_starts[:]
        self._held[seq] = None
        return True

    def share(self, holder: Sequence, seq: Sequence, n: int) -> bool:
        # the cells first, the ledger after: a copy that fails leaves the count untouched
        if not self._cache.copy_prefix(holder.slot, seq.slot, n):
            return False
        if not self.split:  # split: a copy into seq's own stream, nothing shared
            KVLedger.share(holder, seq, n)
        return True

    def restore(self, seq: Sequence, prefix: SavedPrefix, n: int) -> bool:
        if not self._cache.restore_seq(seq.slot, prefix.state):
            return False
        self._cache.trim_seq(seq.slot, n)
        return True

    def keepable(self, seq: Sequence) -> int:
        """All computed positions, or (unified) the prefix in its first MAX_SAVE_RUNS runs
        of cells."""
        starts = seq.run_starts
        if self.split or len(starts) <= MAX_SAVE_RUNS:
            return seq.n_computed
        return min(seq.n_computed, starts[MAX_SAVE_RUNS])

    def release(self, seq: Sequence, keep: SavedPrefix | None = None) -> None:
        if seq in self._held:
            del self._held[seq]
            slot, seq.slot = seq.slot, -1
            if keep is not None:
                self._pending.append((slot, keep))
            else:
                self._cache.free_seq(slot)
                heapq.heappush(self._free, slot)
        if not self.split:
            KVLedger.release(seq)
        seq.n_computed = 0

    def settle(self) -> list[SavedPrefix]:
        kept: list[SavedPrefix] = []
        pending, self._pending = self._pending, []
        cache = self._cache
        for slot, prefix in pending:
            cache.trim_seq(slot, prefix.n)  # it is freed next anyway
            state = cache.save_seq(slot)
            cache.free_seq(slot)
            heapq.heappush(self._free, slot)
            if state is not None:
                prefix.state = state
                kept.append(prefix)
        return kept

    def arrange(self) -> None:
        """Split: move the sequences in the highest slots into lower free ones, so the
        running slots are 0..n-1 again."""
        if not self.split:
            return
        free = self._free
        while free and self._held:
            top = max(self._held, key=lambda s: s.slot)
            if free[0] > top.slot:
                return
            low = heapq.heappop(free)
            self._cache.move_seq(top.slot, low)
            heapq.heappush(free, top.slot)
            top.slot = low
            self.moves += 1

    def order(self, chunks: list[Chunk]) -> None:
        if self.split:
            chunks.sort(key=lambda c: c.seq.slot)

    def commit(self, chunks: Seq[Chunk]) -> None:
        """Rejected draft tokens leave their cells (llama_memory_seq_rm from the first
        one). Unified: a step shared with others starts a new run of each sequence's cells."""
        for c in chunks:
            if c.accepted < len(c.draft):
                self._cache.trim_seq(c.seq.slot, c.seq.n_computed)
        if len(chunks) > 1 and not self.split:
            for c in chunks:
                c.seq.run_starts.append(c.start)
