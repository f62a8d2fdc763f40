"""Continuous batching policy: who runs in the next step, with how many tokens.

Pure bookkeeping, no backend calls: the core executes the plan, KV operations first.
Every step, each decoding sequence gets its one token first; the remaining token budget
goes to prompts being prefilled, in arrival order, in chunks; waiting requests join while
there are free sequence slots and KV cells, reusing the longest cached or running prefix of
their tokens. Finished sequences stay cached (their KV cells are a reusable prefix) until
the cells or the sequence ids are needed, least recently used first. When the KV cache
cannot hold the next step even then, the newest running sequence is preempted: it drops its
cells and goes back to the front of the queue, to be recomputed later (its sampler keeps its
state, so the output continues unchanged).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from inferd.engine.prefix_cache import KVLedger, best_prefix
from inferd.engine.sequence import SeqState, Sequence

MIN_PREFILL_CHUNK = 16


def _chunk(seq: Sequence, limit: int) -> int:
    """Tokens to feed a prefilling sequence this step, at most `limit`. The last token
    before sampling is always fed alone, in a step of its own: its logits are then computed
    the same way whether the prompt before it was computed now or reused from the prefix
    cache (llama.cpp's CPU kernels are not batch-invariant), so a seeded answer does not
    depend on what was cached."""
    pending = seq.n_pending
    return min(limit, pending - 1) if pending > 1 else min(limit, 1)


@dataclass(frozen=True, slots=True)
class KVOp:
    """A KV cache operation for the backend: `rm` a sequence id entirely, `trim` it to its
    first `n` cells, or `cp` the first `n` cells of `seq_id` to `dst`."""

    kind: str
    seq_id: int
    n: int = 0
    dst: int = -1


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
        n_seq_ids: int | None = None,
        prefix_cache: bool = True,
        prefill_per_decode: int = 0,
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
        n_ids = max(n_seq_ids or max_seqs, max_seqs)
        self.prefix_cache = prefix_cache
        self.max_cached = n_ids - max_seqs if prefix_cache else 0
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.cached: OrderedDict[Sequence, None] = OrderedDict()  # least recently used first
        self._free_ids = list(range(n_ids - 1, -1, -1))
        self.preemptions = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.reused_tokens = 0

    # ---- queue changes -------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        seq.state = SeqState.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence, *, keep_prefix: bool) -> list[KVOp]:
        """Take a sequence out (finished, aborted or failed). With `keep_prefix` its cells
        stay cached for later requests. Returns the KV operations to apply now."""
        ops: list[KVOp] = []
        if seq.state is SeqState.WAITING:
            self.waiting.remove(seq)
            seq.state = SeqState.FINISHED
            return ops
        if seq.state is not SeqState.RUNNING:
            return ops
        self.running.remove(seq)
        if keep_prefix and self.max_cached > 0 and seq.n_computed > 0:
            seq.state = SeqState.CACHED
            self.cached[seq] = None
            while len(self.cached) > self.max_cached:
                self._evict_lru(ops)
        else:
            self._drop(seq, ops)
            seq.state = SeqState.FINISHED
        return ops

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def kv_used(self) -> int:
        return sum(s.owned_cells for s in itertools.chain(self.running, self.cached))

    @property
    def kv_cached(self) -> int:
        """Cells held only by cached prefixes (evictable at any time)."""
        return sum(s.owned_cells for s in self.cached)

    # ---- the plan ------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        decoding = [s for s in self.running if s.decoding]
        while len(decoding) > self._room(0) and (self.cached or self.running):
            if not self._evict_lru(plan.ops):
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
                while s.n_pending > self._room(claimed) and self._evict_lru(plan.ops):
                    pass
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
        return plan

    def _room(self, claimed: int) -> int:
        """KV cells free for this step, after the `claimed` ones."""
        return self.kv_cells - self.kv_used - claimed

    def commit(self, plan: StepPlan) -> None:
        """The step ran: the fed tokens now have KV cells."""
        for c in plan.chunks:
            c.seq.n_computed = c.end

    def drop_cache(self) -> list[KVOp]:
        """Evict every cached prefix."""
        ops: list[KVOp] = []
        while self._evict_lru(ops):
            pass
        return ops

    def relieve_pressure(self) -> tuple[list[KVOp], Sequence | None]:
        """The backend found no room for a batch: evict a cached prefix, else preempt the
        newest running sequence. Returns the KV operations and the preempted sequence."""
        plan = StepPlan()
        if self.cached:
            self._evict_lru(plan.ops)
            return plan.ops, None
        if len(self.running) > 1:
            return plan.ops, self._preempt_newest(plan)
        return plan.ops, None

    # ---- internals -----------------------------------------------------------------------

    def _admit(self, seq: Sequence, plan: StepPlan, claimed: int) -> bool:
        """Give `seq` a sequence id and any reusable prefix, if its prompt fits."""
        holder, n = (None, 0)
        if self.prefix_cache:
            self.prefix_queries += 1
            holder, n = best_prefix(seq.tokens, itertools.chain(self.running, self.cached))
        need = len(seq.tokens) - n
        # leave every running sequence a cell for its next token
        while need > self._room(claimed) - len(self.running):
            if not self._evict_lru(plan.ops, keep=holder):
                return False
        # Take over a cached holder's id when it is wholly reused (or ids are short);
        # otherwise share its cells under a new id, so its own suffix stays cached too.
        adopt = (
            holder is not None
            and holder.state is SeqState.CACHED
            and not holder.children
            and (n == holder.n_computed or not self._free_ids)
        )
        if adopt:
            assert holder is not None
            del self.cached[holder]
            plan.ops.append(KVOp("trim", holder.slot, n))
            KVLedger.adopt(holder, seq, n)
            holder.state = SeqState.FINISHED
        else:
            if not self._free_ids and not self._evict_lru(plan.ops, keep=holder):
                return False
            seq.slot = self._free_ids.pop()
            seq.n_computed = 0
            if holder is not None:
                plan.ops.append(KVOp("cp", holder.slot, n, seq.slot))
                KVLedger.share(holder, seq, n)
                if holder.state is SeqState.CACHED:
                    self.cached.move_to_end(holder)
        if holder is not None:
            self.prefix_hits += 1
            self.reused_tokens += n
            if seq.first_scheduled is None:
                seq.cached_tokens = n
        seq.state = SeqState.RUNNING
        self.running.append(seq)
        return True

    def _evict_lru(self, ops: list[KVOp], keep: Sequence | None = None) -> bool:
        for victim in self.cached:
            if victim is not keep:
                del self.cached[victim]
                self._drop(victim, ops)
                victim.state = SeqState.FINISHED
                return True
        return False

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
            self._free_ids.append(seq.slot)
            seq.slot = -1
        KVLedger.release(seq)
