"""Continuous batching policy: who runs in the next step, with how many tokens.

Pure bookkeeping, no backend calls: the core executes the plan, KV operations first.
Every step, each decoding sequence gets its one token first; the remaining token budget
goes to prompts being prefilled, in arrival order, in chunks; waiting requests join while
there are free sequence slots and KV cells, reusing the longest prefix of their tokens that
a running sequence holds (shared cells) or a finished one left saved in host memory
(restored into new cells). A finished sequence's state is saved and its cells freed at
once. When the KV cache cannot hold the next step, the newest running sequence is
preempted: it drops its cells and goes back to the front of the queue, to be recomputed
later (its sampler keeps its state, so the output continues unchanged).

With a split KV cache (one llama.cpp stream per slot) a sequence's room is its own stream,
so nothing is ever short of cells. llama.cpp then cuts a batch into one micro-batch (a full
pass over the weights) per run of consecutive sequence ids in batch order, so a step's chunks
go in slot order and the running slots are kept at 0..n-1: slots are handed out lowest
first, and when a sequence leaves a gap the one in the highest slot moves into it.
"""

from __future__ import annotations

import heapq
import sys
from collections import deque
from dataclasses import dataclass, field

from inferd.engine.prefix_cache import MIN_REUSE, KVLedger, PrefixStore, SavedPrefix, best_prefix
from inferd.engine.sequence import SeqState, Sequence

MIN_PREFILL_CHUNK = 8

# A finished sequence's saved state covers at most this many runs of KV cells. Without flash
# attention llama.cpp stores V transposed and copies it per run, layer and row: a 16-way
# interleaved 228-token sequence (128 runs) took 39 ms to save, blocking every stream, where
# the same tokens in one run took 4 ms. Beyond the limit only the prefix in the first runs
# (the prompt, usually) is saved.
MAX_SAVE_RUNS = 16


def _chunk(seq: Sequence, limit: int) -> int:
    """Tokens to feed a prefilling sequence this step, at most `limit`. The last token
    before sampling is always fed alone, in a step of its own: its logits are then computed
    the same way whether the prompt before it was computed now or reused from the prefix
    cache (llama.cpp's CPU kernels are not batch-invariant), so a seeded answer does not
    depend on what was cached."""
    pending = seq.n_pending
    return min(limit, pending - 1) if pending > 1 else min(limit, 1)


def _savable(seq: Sequence) -> int:
    """How many of a finishing sequence's computed tokens to save: all of them, or the
    prefix in its first MAX_SAVE_RUNS runs of cells."""
    starts = seq.run_starts
    if len(starts) <= MAX_SAVE_RUNS:
        return seq.n_computed
    return min(seq.n_computed, starts[MAX_SAVE_RUNS])


@dataclass(frozen=True, slots=True)
class KVOp:
    """A KV cache operation for the backend: `rm` a sequence id entirely, `cp` the first
    `n` cells of `seq_id` to `dst`, `save` the state of the first `n` positions of `seq_id`
    (a sequence about to be removed) into `prefix`, or `load` `prefix` into `seq_id` keeping
    its first `n` positions."""

    kind: str  # also `move`: `seq_id` with all its positions to the empty `dst`
    seq_id: int
    n: int = 0
    dst: int = -1
    prefix: SavedPrefix | None = None


@dataclass(slots=True)
class Chunk:
    seq: Sequence
    start: int
    end: int

    @property
    def samples(self) -> bool:
        """Whether this chunk feeds the sequence's last token, so a new one is sampled."""
        return self.end == len(self.seq.tokens)


@dataclass(slots=True)
class StepPlan:
    chunks: list[Chunk] = field(default_factory=list)
    ops: list[KVOp] = field(default_factory=list)  # applied in order, before the decode
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(c.end - c.start for c in self.chunks)


class Scheduler:
    def __init__(
        self,
        *,
        max_seqs: int,
        kv_cells: int,
        max_batch_tokens: int,
        prefix_cache: bool = True,
        prefix_cache_bytes: int = 0,
        prefill_per_decode: int = 0,
        kv_split: bool = False,
    ) -> None:
        if max_batch_tokens < max_seqs:
            raise ValueError("the step token budget must be at least the number of slots")
        self.max_seqs = max_seqs
        self.kv_cells = kv_cells
        self.max_batch_tokens = max_batch_tokens
        # In a step where sequences decode, prompts may add at most this many tokens per
        # decoding sequence (at least MIN_PREFILL_CHUNK), so a long prompt arriving under load
        # is spread over many steps instead of stalling every stream. 0: no limit.
        self.prefill_per_decode = prefill_per_decode
        self.kv_split = kv_split
        self.prefix_cache = prefix_cache
        self.saved = PrefixStore(prefix_cache_bytes if prefix_cache else 0)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self._free_ids = list(range(max_seqs))  # a heap: the lowest free id first
        self.preemptions = 0
        self.moves = 0
        self.restore_failures = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.reused_tokens = 0

    # ---- queue changes -------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        seq.state = SeqState.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence, *, keep_prefix: bool) -> list[KVOp]:
        """Take a sequence out (finished, aborted or failed). With `keep_prefix` its state
        is saved for later requests. Returns the KV operations to apply now."""
        ops: list[KVOp] = []
        if seq.state is SeqState.WAITING:
            self.waiting.remove(seq)
            seq.state = SeqState.FINISHED
            return ops
        if seq.state is not SeqState.RUNNING:
            return ops
        self.running.remove(seq)
        n = seq.n_computed if self.kv_split else _savable(seq)  # a stream is one run
        if keep_prefix and self.saved.budget > 0 and n >= MIN_REUSE:
            ops.append(KVOp("save", seq.slot, n, prefix=SavedPrefix(seq.tokens[:n])))
        self._drop(seq, ops)
        seq.state = SeqState.FINISHED
        return ops

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def kv_used(self) -> int:
        return sum(s.owned_cells for s in self.running)

    # ---- the plan ------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        if self.kv_split:
            self._compact(plan.ops)
        decoding = [s for s in self.running if s.decoding]
        while len(decoding) > self._room(0) and self.running:
            victim = self._preempt_newest(plan)
            if victim in decoding:
                decoding.remove(victim)
        budget = self.max_batch_tokens - len(decoding)
        if decoding and self.prefill_per_decode > 0:
            budget = min(budget, max(MIN_PREFILL_CHUNK, self.prefill_per_decode * len(decoding)))
        claimed = len(decoding)  # cells this step will fill, beyond those in use
        for s in decoding:
            plan.chunks.append(Chunk(s, s.n_computed, s.n_computed + 1))
        for s in self.running:
            if budget <= 0:
                break
            if not s.decoding:
                n = _chunk(s, min(budget, self._room(claimed)))
                if n <= 0:
                    break
                plan.chunks.append(Chunk(s, s.n_computed, s.n_computed + n))
                budget -= n
                claimed += n
        while self.waiting and len(self.running) < self.max_seqs and budget > 0:
            s = self.waiting[0]
            if not self._admit(s, plan, claimed):
                break
            self.waiting.popleft()
            n = _chunk(s, budget)
            plan.chunks.append(Chunk(s, s.n_computed, s.n_computed + n))
            budget -= n
            claimed += s.n_pending  # the whole rest of the prompt is spoken for
        if self.kv_split:
            plan.chunks.sort(key=lambda c: c.seq.slot)
        return plan

    def _room(self, claimed: int) -> int:
        """KV cells free for this step, after the `claimed` ones (split: every sequence has
        its own stream, as long as its context may grow)."""
        if self.kv_split:
            return sys.maxsize
        return self.kv_cells - self.kv_used - claimed

    def commit(self, plan: StepPlan) -> None:
        """The step ran: the fed tokens now have KV cells."""
        shared = len(plan.chunks) > 1
        for c in plan.chunks:
            c.seq.n_computed = c.end
            if shared:
                c.seq.run_starts.append(c.start)

    def drop_cache(self) -> None:
        """Forget every saved prefix."""
        self.saved.clear()

    def restore_failed(self, plan: StepPlan, slot: int) -> None:
        """The backend could not load a saved prefix into `slot` (its cells are free):
        that sequence computes its prompt from the start instead."""
        self.restore_failures += 1
        for i, c in enumerate(plan.chunks):
            seq = c.seq
            if seq.slot == slot:
                self.reused_tokens -= seq.n_computed
                self.prefix_hits -= 1
                seq.n_computed = 0
                seq.cached_tokens = 0
                plan.chunks[i] = Chunk(seq, 0, _chunk(seq, c.end - c.start))
                return

    def relieve_pressure(self) -> tuple[list[KVOp], Sequence | None]:
        """The backend found no room for a batch: preempt the newest running sequence.
        Returns the KV operations and the preempted sequence."""
        plan = StepPlan()
        if len(self.running) > 1:
            return plan.ops, self._preempt_newest(plan)
        return plan.ops, None

    # ---- internals -----------------------------------------------------------------------

    def _admit(self, seq: Sequence, plan: StepPlan, claimed: int) -> bool:
        """Give `seq` a sequence id and any reusable prefix, if its prompt fits: cells shared
        with a running sequence, else a saved prefix restored (when it is longer)."""
        holder, n = (None, 0)
        saved, m = (None, 0)
        if self.prefix_cache:
            self.prefix_queries += 1
            holder, n = best_prefix(seq.tokens, self.running)
            saved, m = self.saved.best(seq.tokens)
        # leave every running sequence a cell for its next token
        room = self._room(claimed) - len(self.running)
        if saved is not None and (m <= n or max(saved.n, len(seq.tokens)) > room):
            saved, m = None, 0  # sharing is free; a restore briefly needs all its cells
        if len(seq.tokens) - n > room or not self._free_ids:
            return False
        seq.slot = heapq.heappop(self._free_ids)
        seq.n_computed = 0
        del seq.run_starts[:]
        reused = 0
        if saved is not None:
            plan.ops.append(KVOp("load", seq.slot, m, prefix=saved))
            self.saved.touch(saved)
            seq.n_computed = reused = m
        elif holder is not None:
            plan.ops.append(KVOp("cp", holder.slot, n, seq.slot))
            if self.kv_split:  # a copy: no cells shared
                seq.n_computed = n
            else:
                KVLedger.share(holder, seq, n)
            reused = n
        if reused:
            self.prefix_hits += 1
            self.reused_tokens += reused
            if seq.first_scheduled is None:
                seq.cached_tokens = reused
        seq.state = SeqState.RUNNING
        self.running.append(seq)
        return True

    def _preempt_newest(self, plan: StepPlan) -> Sequence:
        victim = self.running.pop()
        self._drop(victim, plan.ops)
        victim.state = SeqState.WAITING
        self.waiting.appendleft(victim)
        self.preemptions += 1
        plan.preempted.append(victim)
        return victim

    def _drop(self, seq: Sequence, ops: list[KVOp]) -> None:
        if seq.slot >= 0:
            ops.append(KVOp("rm", seq.slot))
            heapq.heappush(self._free_ids, seq.slot)
            seq.slot = -1
        KVLedger.release(seq)

    def _compact(self, ops: list[KVOp]) -> None:
        """Move the sequences in the highest slots into lower free ones, so the running
        slots are 0..n-1 again (see the module docstring). Done when a step is planned, after
        every sequence that finished in the last one has left."""
        while self._free_ids and self.running:
            top = max(self.running, key=lambda s: s.slot)
            if self._free_ids[0] > top.slot:
                return
            low = heapq.heappop(self._free_ids)
            ops.append(KVOp("move", top.slot, dst=low))
            heapq.heappush(self._free_ids, top.slot)
            top.slot = low
            self.moves += 1
