"""Which cached token prefix a new sequence can reuse, and who owns shared KV cells.

llama.cpp's unified KV cache lets one cell belong to several sequence ids: copying a
prefix (`seq_cp`) adds the new id to the cells, and removing a sequence (`seq_rm`) frees
only cells no other id holds. Sharing is always of a prefix, so ownership forms a tree:
a sequence borrows the first `borrowed` cells of its parent and owns the rest. The number
of cells in use is the sum of what every holder owns. When a holder goes away, the child
that borrowed the most of it inherits those cells, and its other children borrow from
that heir instead, so the count stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable

from inferd.engine.sequence import Sequence

# Reusing fewer tokens than this is not worth a sequence id.
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
    """The holder sharing the longest computed prefix with `tokens`, leaving at least one
    token to feed (a step must sample from something). Ties prefer a holder nobody
    borrows from (it can be adopted without a copy)."""
    best: Sequence | None = None
    best_len = 0
    limit = len(tokens) - 1
    for h in holders:
        if h.n_computed < MIN_REUSE:
            continue
        n = common_prefix(tokens, h.tokens, min(limit, h.n_computed))
        if n > best_len or (
            n == best_len and best is not None and best.children and not h.children
        ):
            best, best_len = h, n
    if best_len < MIN_REUSE:
        return None, 0
    return best, best_len


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
    def adopt(old: Sequence, new: Sequence, n: int) -> None:
        """`new` takes over `old`'s sequence id, trimmed to n cells (old has no children)."""
        assert not old.children
        new.slot, old.slot = old.slot, -1
        new.n_computed = n
        new.parent = old.parent
        new.borrowed = min(old.borrowed, n)
        if old.parent is not None:
            siblings = old.parent.children
            siblings[siblings.index(old)] = new
        old.parent = None
        old.n_computed = 0
        old.borrowed = 0

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
