"""The paged KV cache as the scheduler's `KVPool`: fixed-size blocks and a block table per
sequence. Pure bookkeeping: the tensors are behind `BlockStore` (`cache.PagedKV`).

A sequence's position p lives in block `table[p // BLOCK_SIZE]` at offset `p % BLOCK_SIZE`.
Blocks are taken when a step writes into them (`grow`), so a sequence holds at most one
partly filled block, its last. Sharing a running prefix of n positions (`share`) hands the new
sequence the holder's full blocks by reference (a count per block; nobody writes into a full
block again) and a copy of the partly filled one; a block goes back to the free list when
its last holder lets go. Sequence places (`slot`) are just ids, up to `max_seqs`.

Positions, not blocks, are what the scheduler counts: `used` is the positions written
(a shared block counted once), and `room` is what is left of the capacity. Blocks are
checked where they are taken: a sequence gets a place (`acquire`) only when the free blocks
hold all its tokens besides what every running sequence still has to write; and a step's
tokens may need one more block per sequence than the positions say (the free space in other
sequences' last blocks is theirs): `grow` then finds no block, and the backend reports no
room, as the seam allows for a fragmented cache (the newest sequence is preempted).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence as Seq
from typing import Protocol

from inferd.engine.prefix_cache import SavedPrefix
from inferd.engine.sequence import Chunk, Sequence


class BlockStore(Protocol):
    """The KV tensors behind the blocks."""

    block_size: int

    def copy(self, src: int, dst: int, n: int) -> None:
        """Copy the first n positions of block src into block dst."""
        ...

    def save(self, blocks: Seq[int], n: int) -> bytes:
        """The first n positions held in `blocks` (in order), as bytes."""
        ...

    def load(self, blocks: Seq[int], state: bytes | bytearray, n: int) -> None:
        """Write the first n positions of a saved state into `blocks`."""
        ...


class BlockPool:
    """The blocks of one paged KV cache and the sequences holding them (core thread only)."""

    def __init__(self, store: BlockStore, *, blocks: int, slots: int) -> None:
        self._store = store
        self.block_size = store.block_size
        self.capacity = blocks * self.block_size
        self.moves = 0  # nothing ever moves
        self._free = list(range(blocks - 1, -1, -1))  # a stack: block 0 first
        self._refs = [0] * blocks
        self._slots = list(range(slots))  # a heap: the lowest free id first
        self._tables: dict[Sequence, list[int]] = {}
        self._pending: list[tuple[list[int], SavedPrefix]] = []

    # ---- accounting ---------------------------------------------------------------------

    @property
    def used(self) -> int:
        seen: set[int] = set()
        n = 0
        bs = self.block_size
        for seq, table in self._tables.items():
            for i, block in enumerate(table):
                if block not in seen:
                    seen.add(block)
                    n += min(bs, max(0, seq.n_computed - i * bs))
        return n

    def room(self, claimed: int) -> int:
        return self.capacity - self.used - claimed

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def table(self, seq: Sequence) -> list[int]:
        return self._tables[seq]

    # ---- the KVPool seam ----------------------------------------------------------------

    def chunk(self, seq: Sequence, limit: int) -> int:
        return min(limit, seq.n_pending)

    def acquire(self, seq: Sequence) -> bool:
        """A place, when the free blocks hold what every holder still has to write (its
        pending tokens) and all of `seq`'s tokens besides: a sequence admitted on positions
        alone could need blocks that a step never finds, be preempted, and come back into
        the same step, for ever."""
        if not self._slots:
            return False
        committed = sum(self._missing(s, len(s.tokens)) for s in self._tables)
        if committed + self._blocks_for(len(seq.tokens)) > len(self._free):
            return False
        seq.slot = heapq.heappop(self._slots)
        self._tables[seq] = []
        return True

    def share(self, holder: Sequence, seq: Sequence, n: int) -> bool:
        bs = self.block_size
        full, rest = divmod(n, bs)
        source = self._tables[holder]
        if rest and not self._free:
            return False
        table = self._tables[seq]
        for block in source[:full]:
            self._refs[block] += 1
            table.append(block)
        if rest:
            block = self._take()
            self._store.copy(source[full], block, rest)
            table.append(block)
        return True

    def restore(self, seq: Sequence, prefix: SavedPrefix, n: int) -> bool:
        need = self._blocks_for(n)
        if need > len(self._free):
            return False
        table = self._tables[seq]
        table.extend(self._take() for _ in range(need))
        self._store.load(table, prefix.state, n)
        return True

    def keepable(self, seq: Sequence) -> int:
        return seq.n_computed

    def release(self, seq: Sequence, keep: SavedPrefix | None = None) -> None:
        table = self._tables.pop(seq, None)
        if table is not None:
            heapq.heappush(self._slots, seq.slot)
            seq.slot = -1
            if keep is not None:
                self._pending.append((table, keep))
            else:
                self._drop(table)
        seq.n_computed = 0

    def settle(self) -> list[SavedPrefix]:
        kept: list[SavedPrefix] = []
        pending, self._pending = self._pending, []
        for table, prefix in pending:
            prefix.state = self._store.save(table, prefix.n)
            self._drop(table)
            kept.append(prefix)
        return kept

    def arrange(self) -> None:
        pass

    def order(self, chunks: list[Chunk]) -> None:
        pass

    def commit(self, chunks: Seq[Chunk]) -> None:
        pass

    # ---- blocks for a step --------------------------------------------------------------

    def _blocks_for(self, n: int) -> int:
        return -(-n // self.block_size)

    def _missing(self, seq: Sequence, end: int) -> int:
        """Blocks `seq` needs beyond those it holds to hold positions up to `end`."""
        return max(0, self._blocks_for(end) - len(self._tables[seq]))

    def missing(self, chunks: Seq[Chunk]) -> int:
        """Blocks the step's chunks need beyond those their sequences hold."""
        return sum(self._missing(c.seq, c.end) for c in chunks)

    def grow(self, chunks: Seq[Chunk]) -> bool:
        """Give each chunk's sequence the blocks its new positions fall in. False: not enough
        free blocks (nothing changed)."""
        if self.missing(chunks) > len(self._free):
            return False
        bs = self.block_size
        for c in chunks:
            table = self._tables[c.seq]
            while len(table) * bs < c.end:
                table.append(self._take())
        return True

    def _take(self) -> int:
        block = self._free.pop()
        self._refs[block] = 1
        return block

    def _drop(self, table: list[int]) -> None:
        for block in table:
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free.append(block)
