"""Continuous batching policy: who runs in the next step, with how many tokens.

Pure bookkeeping, no backend calls: the core executes the plan. Every step, each decoding
sequence gets its one token first; the remaining token budget goes to prompts being
prefilled, in arrival order, in chunks; waiting requests join while there are free sequence
slots and KV cells. When the KV cache cannot hold the next step, the newest running
sequence is preempted: it drops its cells and goes back to the front of the queue, to be
recomputed later (its sampler keeps its state, so the output continues unchanged).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from inferd.engine.sequence import SeqState, Sequence


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
    preempted: list[tuple[Sequence, int]] = field(default_factory=list)  # (seq, freed slot)

    @property
    def n_tokens(self) -> int:
        return sum(c.end - c.start for c in self.chunks)


class Scheduler:
    def __init__(self, *, max_seqs: int, kv_cells: int, max_batch_tokens: int) -> None:
        if max_batch_tokens < max_seqs:
            raise ValueError("the step token budget must be at least the number of slots")
        self.max_seqs = max_seqs
        self.kv_cells = kv_cells
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self._free_slots = list(range(max_seqs - 1, -1, -1))
        self.preemptions = 0

    # ---- queue changes -------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        seq.state = SeqState.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> int:
        """Take a sequence out (finished or aborted). Returns the slot it held, or -1."""
        slot = seq.slot
        if seq.state is SeqState.RUNNING:
            self.running.remove(seq)
            self._release(seq)
        elif seq.state is SeqState.WAITING:
            self.waiting.remove(seq)
        seq.state = SeqState.FINISHED
        return slot

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def kv_used(self) -> int:
        return sum(s.n_computed for s in self.running)

    # ---- the plan ------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        free = self.kv_cells - self.kv_used
        decoding = [s for s in self.running if s.decoding]
        while len(decoding) > free and self.running:
            free += self.running[-1].n_computed
            victim, slot = self.preempt_newest()
            plan.preempted.append((victim, slot))
            if victim in decoding:
                decoding.remove(victim)
        budget = self.max_batch_tokens
        for s in decoding:
            plan.chunks.append(Chunk(s, s.n_computed, s.n_computed + 1))
        budget -= len(decoding)
        free -= len(decoding)
        for s in self.running:
            if budget <= 0 or free <= 0:
                break
            if not s.decoding:
                n = min(s.n_pending, budget, free)
                plan.chunks.append(Chunk(s, s.n_computed, s.n_computed + n))
                budget -= n
                free -= n
        while self.waiting and self._free_slots and budget > 0:
            s = self.waiting[0]
            # admit only when the whole prompt fits, leaving every running sequence a cell
            if s.n_pending > free - len(self.running):
                break
            self.waiting.popleft()
            self._admit(s)
            n = min(s.n_pending, budget)
            plan.chunks.append(Chunk(s, 0, n))
            budget -= n
            free -= n
        return plan

    def commit(self, plan: StepPlan) -> None:
        """The step ran: the fed tokens now have KV cells."""
        for c in plan.chunks:
            c.seq.n_computed = c.end

    def preempt_newest(self) -> tuple[Sequence, int]:
        """Send the newest running sequence back to the queue. Returns it and its old slot."""
        victim = self.running[-1]
        return victim, self._preempt(victim)

    # ---- internals -----------------------------------------------------------------------

    def _admit(self, seq: Sequence) -> None:
        seq.slot = self._free_slots.pop()
        seq.state = SeqState.RUNNING
        seq.n_computed = 0
        self.running.append(seq)

    def _release(self, seq: Sequence) -> None:
        if seq.slot >= 0:
            self._free_slots.append(seq.slot)
        seq.slot = -1

    def _preempt(self, seq: Sequence) -> int:
        slot = seq.slot
        self.running.remove(seq)
        self._release(seq)
        seq.n_computed = 0
        seq.state = SeqState.WAITING
        self.waiting.appendleft(seq)
        self.preemptions += 1
        return slot
