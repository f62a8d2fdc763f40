"""The paged KV cache's block bookkeeping (`engine/backends/torch/blocks.py`) over a store
that records what it is asked to do: no model, no tensors."""

from __future__ import annotations

from collections.abc import Sequence as Seq

import pytest

pytest.importorskip("torch", reason="needs the hf extra: pip install 'inferd[hf]'")

from inferd.engine.backends.torch.blocks import BlockPool
from inferd.engine.detokenizer import Detokenizer
from inferd.engine.prefix_cache import SavedPrefix
from inferd.engine.sequence import Chunk, Sequence
from inferd.engine.types import GenerateRequest


class Store:
    block_size = 4

    def __init__(self) -> None:
        self.copies: list[tuple[int, int, int]] = []
        self.saved: list[tuple[list[int], int]] = []
        self.loaded: list[tuple[list[int], int]] = []

    def copy(self, src: int, dst: int, n: int) -> None:
        self.copies.append((src, dst, n))

    def save(self, blocks: Seq[int], n: int) -> bytes:
        self.saved.append((list(blocks), n))
        return bytes(n)

    def load(self, blocks: Seq[int], state: bytes | bytearray, n: int) -> None:
        self.loaded.append((list(blocks), n))


def seq(n: int, rid: str = "s") -> Sequence:
    tokens = list(range(1, n + 1))
    return Sequence(
        GenerateRequest(rid, tuple(tokens)), Detokenizer(lambda t: b""), n + 8, tokens, n
    )


def run(pool: BlockPool, s: Sequence, end: int) -> None:
    """A step that feeds `s` up to `end` (as the backend and the scheduler do)."""
    chunk = Chunk(s, s.n_computed, end)
    assert pool.grow([chunk])
    s.n_computed = end
    pool.commit([chunk])


def test_blocks_are_taken_as_positions_are_written_and_given_back() -> None:
    pool = BlockPool(Store(), blocks=8, slots=2)
    a = seq(6)
    assert pool.acquire(a) and a.slot == 0
    run(pool, a, 6)
    assert len(pool.table(a)) == 2 and pool.used == 6 and pool.free_blocks == 6
    assert pool.room(3) == 32 - 6 - 3
    pool.release(a)
    assert pool.free_blocks == 8 and pool.used == 0 and a.slot == -1 and a.n_computed == 0


def test_a_shared_prefix_shares_full_blocks_and_copies_the_partial_one() -> None:
    store = Store()
    pool = BlockPool(store, blocks=8, slots=3)
    holder, sharer = seq(10, "h"), seq(12, "s")
    assert pool.acquire(holder)
    run(pool, holder, 10)  # blocks for positions 0-3, 4-7, 8-9
    assert pool.acquire(sharer) and pool.share(holder, sharer, 9)
    sharer.n_computed = 9
    h, s = pool.table(holder), pool.table(sharer)
    assert s[:2] == h[:2] and s[2] not in h
    assert store.copies == [(h[2], s[2], 1)]
    assert pool.used == 10 + 1  # shared positions counted once, the copied one twice
    pool.release(holder)
    assert pool.free_blocks == 8 - 3  # the shared blocks stay with the sharer
    pool.release(sharer)
    assert pool.free_blocks == 8


def test_a_step_without_blocks_changes_nothing_and_admission_counts_blocks() -> None:
    pool = BlockPool(Store(), blocks=4, slots=3)
    a, b = seq(8, "a"), seq(5, "b")
    assert pool.acquire(a)
    run(pool, a, 8)
    assert pool.acquire(b)  # 2 blocks for its 5 tokens: exactly what is free
    assert not pool.acquire(seq(1, "c"))  # b's blocks are spoken for
    a.tokens.append(99)  # a decodes: its next position needs a third block
    chunks = [Chunk(a, 8, 9), Chunk(b, 0, 5)]
    assert pool.missing(chunks) == 3
    assert not pool.grow(chunks)
    assert len(pool.table(a)) == 2 and pool.table(b) == [] and pool.free_blocks == 2


def test_a_kept_prefix_is_saved_on_settle_then_freed_and_restores() -> None:
    store = Store()
    pool = BlockPool(store, blocks=8, slots=2)
    a = seq(9)
    assert pool.acquire(a)
    run(pool, a, 9)
    keep = SavedPrefix(a.tokens[:9])
    table = list(pool.table(a))
    pool.release(a, keep)
    assert pool.used == 0 and pool.free_blocks == 5  # freed at settle
    assert pool.settle() == [keep] and store.saved == [(table, 9)] and pool.free_blocks == 8
    b = seq(12)
    assert pool.acquire(b) and pool.restore(b, keep, 7)
    assert store.loaded == [(pool.table(b), 7)] and len(pool.table(b)) == 2
