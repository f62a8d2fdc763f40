"""Continuous batching policy: who runs in the next step, with how many tokens.

Every step, each decoding sequence gets its one token first; the remaining token budget
goes to prompts being prefilled, in arrival order, in chunks; waiting requests join while
there are free sequences and KV room, reusing the longest prefix of their tokens that a
running sequence holds (shared through the KV pool) or a finished one left kept (restored
from host memory). A finished sequence's prefix is kept and its place given back at once.
When the KV cache cannot hold the next step, the newest running sequence is preempted: it
drops its KV and goes back to the front of the queue, to be recomputed later (its sampler
keeps its state, so the output continues unchanged). With speculative decoding, a decoding
sequence may add draft tokens to its chunk (`engine.speculative`) with what is left of the
step's token budget and KV room after the prompts: drafts never delay a prompt nor preempt.

Where a sequence's KV lives, how much room is left and how the runtime wants a step laid
out are the backend's `KVPool`'s (see `backends.base`); this module decides only order,
budgets, chunking, preemption and which prefix to reuse.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from inferd.engine.backends.base import KVPool
from inferd.engine.prefix_cache import MIN_REUSE, PrefixStore, SavedPrefix, best_prefix
from inferd.engine.sequence import Chunk, SeqState, Sequence
from inferd.engine.speculative import Drafter, DraftStep, StepCosts

MIN_PREFILL_CHUNK = 8


@dataclass(slots=True)
class StepPlan:
    chunks: list[Chunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(c.end - c.start + len(c.draft) for c in self.chunks)


class Scheduler:
    """Plans steps over a backend's KV pool. Core thread only. `prefix_cache` False: no
    reuse of any kind (neither running prefixes nor kept ones). `drafter`: decoding sequences
    that have a `drafting` state draft tokens with it."""

    def __init__(
        self,
        pool: KVPool,
        *,
        max_seqs: int,
        max_batch_tokens: int,
        prefix_cache: bool = True,
        prefix_cache_bytes: int = 0,
        prefill_per_decode: int = 0,
        drafter: Drafter | None = None,
    ) -> None:
        if max_batch_tokens < max_seqs:
            raise ValueError("the step token budget must be at least the number of slots")
        self.pool = pool
        self.max_seqs = max_seqs
        self.max_batch_tokens = max_batch_tokens
        # In a step where sequences decode, prompts may add at most this many tokens per
        # decoding sequence (at least MIN_PREFILL_CHUNK), so a long prompt arriving under load
        # is spread over many steps instead of stalling every stream. 0: no limit.
        self.prefill_per_decode = prefill_per_decode
        self.prefix_cache = prefix_cache
        self.saved = PrefixStore(prefix_cache_bytes if prefix_cache else 0)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.preemptions = 0
        self.restore_failures = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.reused_tokens = 0
        self.drafter = drafter
        self.step_costs = StepCosts()  # what drafts cost, measured (speculative.py)
        self.draft_tokens = 0  # draft tokens verified, in all
        self.draft_accepted = 0  # of them, accepted

    # ---- queue changes -------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        seq.state = SeqState.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence, *, keep_prefix: bool) -> None:
        """Take a sequence out (finished, aborted or failed). With `keep_prefix` its prefix
        is kept for later requests (saved when the pool settles, after the outputs go)."""
        if seq.state is SeqState.WAITING:
            self.waiting.remove(seq)
        elif seq.state is SeqState.RUNNING:
            self.running.remove(seq)
            keep = None
            if keep_prefix and self.saved.budget > 0:
                n = self.pool.keepable(seq)
                if n >= MIN_REUSE:
                    keep = SavedPrefix(seq.tokens[:n])
            self.pool.release(seq, keep)
        seq.state = SeqState.FINISHED

    def settle(self) -> None:
        """Let the pool finish the releases of the last step; keep what it saved."""
        for prefix in self.pool.settle():
            self.saved.add(prefix)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # ---- the plan ------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        pool = self.pool
        pool.arrange()
        decoding = [s for s in self.running if s.decoding]
        while len(decoding) > pool.room(0) and self.running:
            victim = self._preempt_newest(plan)
            if victim in decoding:
                decoding.remove(victim)
        budget = self.max_batch_tokens - len(decoding)
        if decoding and self.prefill_per_decode > 0:
            budget = min(budget, max(MIN_PREFILL_CHUNK, self.prefill_per_decode * len(decoding)))
        claimed = len(decoding)  # KV this step will fill, beyond what is in use
        for s in decoding:
            plan.chunks.append(Chunk(s, s.n_computed, s.n_computed + 1))
        for s in self.running:
            if budget <= 0:
                break
            if not s.decoding:
                n = pool.chunk(s, min(budget, pool.room(claimed)))
                if n <= 0:
                    break
                plan.chunks.append(Chunk(s, s.n_computed, s.n_computed + n))
                budget -= n
                claimed += n
        while self.waiting and len(self.running) < self.max_seqs and budget > 0:
            s = self.waiting[0]
            if not self._admit(s, claimed):
                break
            self.waiting.popleft()
            n = pool.chunk(s, budget)
            plan.chunks.append(Chunk(s, s.n_computed, s.n_computed + n))
            budget -= n
            claimed += s.n_pending  # the whole rest of the prompt is spoken for
        if self.drafter is not None:
            self._draft(plan, len(decoding), claimed)
        pool.order(plan.chunks)
        return plan

    def commit(self, plan: StepPlan) -> None:
        """The step ran: the fed tokens, and the drafts the backend accepted, now have KV
        (the pool removes the rejected drafts')."""
        for c in plan.chunks:
            c.seq.n_computed = c.end + c.accepted
            state = c.seq.drafting
            if c.draft and state is not None:
                state.record(len(c.draft), c.accepted)
                self.draft_tokens += len(c.draft)
                self.draft_accepted += c.accepted
        self.pool.commit(plan.chunks)

    def timed(self, plan: StepPlan, seconds: float) -> None:
        """The step took `seconds` (planned, run, its outputs made): a decode step (one
        token per sequence, and drafts) is what drafting weighs its cost against."""
        if self.drafter is not None and all(c.end - c.start == 1 for c in plan.chunks):
            self.step_costs.observe(plan.n_tokens, seconds)

    def drop_cache(self) -> None:
        """Forget every kept prefix."""
        self.saved.clear()

    def relieve_pressure(self) -> Sequence | None:
        """The backend found no room for a step: preempt the newest running sequence (None
        when only one is left)."""
        if len(self.running) > 1:
            return self._preempt_newest(StepPlan())
        return None

    # ---- internals -----------------------------------------------------------------------

    def _draft(self, plan: StepPlan, n_decoding: int, claimed: int) -> None:
        """Drafts for the plan's first `n_decoding` chunks (the decoding ones) with what is
        left of the step's token budget and of the pool's room beyond `claimed` positions."""
        assert self.drafter is not None
        spare = min(self.max_batch_tokens - plan.n_tokens, self.pool.room(claimed))
        step = DraftStep(self.step_costs, plan.n_tokens, sum(c.samples for c in plan.chunks))
        self.drafter.draft(plan.chunks[:n_decoding], spare, step)

    def _admit(self, seq: Sequence, claimed: int) -> bool:
        """Give `seq` a place and any reusable prefix, if its prompt fits: a kept prefix
        restored when it is the longer one, else a running sequence's shared."""
        pool = self.pool
        holder, n = (None, 0)
        saved, m = (None, 0)
        # a prompt whose log probabilities are wanted is computed whole
        if self.prefix_cache and seq.prompt_logprobs is None:
            self.prefix_queries += 1
            holder, n = best_prefix(seq.tokens, self.running)
            saved, m = self.saved.best(seq.tokens)
        # leave every running sequence room for its next token
        room = pool.room(claimed) - len(self.running)
        if saved is not None and (m <= n or max(saved.n, len(seq.tokens)) > room):
            saved, m = None, 0  # sharing is free; a restore briefly needs all its room
        if len(seq.tokens) - n > room or not pool.acquire(seq):
            return False
        reused = 0
        if saved is not None:
            if pool.restore(seq, saved, m):
                self.saved.touch(saved)
                reused = m
            else:  # no room of the right shape: compute the prompt instead
                self.restore_failures += 1
        elif holder is not None and pool.share(holder, seq, n):
            reused = n
        seq.n_computed = reused
        if reused:
            self.prefix_hits += 1
            self.reused_tokens += reused
        if seq.first_scheduled is None:  # not a preempted sequence coming back
            seq.first_scheduled = time.monotonic()
            seq.cached_tokens = reused
        seq.state = SeqState.RUNNING
        self.running.append(seq)
        return True

    def _preempt_newest(self, plan: StepPlan) -> Sequence:
        victim = self.running.pop()
        self.pool.release(victim)
        victim.state = SeqState.WAITING
        self.waiting.appendleft(victim)
        self.preemptions += 1
        plan.preempted.append(victim)
        return victim
