"""Speculative decoding by prompt lookup: draft tokens copied from the sequence itself.

When the last n tokens of a sequence (prompt + output) occurred before in it, the tokens
that followed that earlier occurrence are a guess at what comes next: a model quoting,
editing or extracting from a given text repeats long runs of it. The scheduler feeds such a
draft after the sequence's last sampled token in the same step as everything else
(`Chunk.draft`); the backend computes logits at every position and samples them in order
with the sequence's own sampler, keeping drafts while they equal what it samples and
stopping at the first difference (that sample is the next token) or after the last draft
(one token more). Nothing is sampled past a difference, so sampling (a seeded one, penalties,
grammars) goes exactly as decoding token by token, on the logits the step computed (which on
llama.cpp's CPU kernels differ from a one-token step's by float noise: docs/architecture.md);
rejected drafts' KV is removed when the step is committed (`KVPool.commit`).

A draft costs compute (on a CPU a step costs about its token count), so a sequence drafts
only when an n-gram matches, drafts fewer tokens after a partial acceptance, and after a
draft of which nothing was accepted pauses for a number of steps that doubles with every
such failure (free writing soon stops drafting). A draft is at least MIN_DRAFT tokens: with
llama.cpp's split KV cache a step is cut into micro-batches of equal tokens per sequence, so a
drafted sequence's tokens beyond the others' one run in a micro-batch of their own (a pass over
the weights), which one draft token does not repay; and a micro-batch of one token is computed
by llama.cpp's one-token kernels, whose logits differ from a larger batch's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferd.engine.sequence import Sequence

MIN_DRAFT = 2
# Steps a sequence skips drafting after its nth draft in a row with nothing accepted: 1, 2,
# 4, ... up to this (a run of quoting later in the answer still gets drafts again).
MAX_PAUSE = 64


@dataclass(slots=True)
class DraftState:
    """One sequence's lookup index and drafting history."""

    # per n-gram size n: the n tokens -> the position after their latest occurrence
    index: dict[int, dict[tuple[int, ...], int]]
    max_draft: int
    indexed: int = 0  # the n-grams followed by a token at or before this index are in
    length: int = 0  # the most tokens the next draft may have (up to max_draft)
    pause: int = 0  # steps left without drafting
    failures: int = 0  # drafts in a row with nothing accepted
    proposed: int = 0  # draft tokens fed, in all
    accepted: int = 0  # of them, accepted

    def record(self, proposed: int, accepted: int) -> None:
        """A draft of `proposed` tokens was verified, its first `accepted` kept."""
        self.proposed += proposed
        self.accepted += accepted
        if accepted == proposed:
            self.length = min(self.max_draft, 2 * self.length)
            self.failures = 0
        elif accepted:
            self.length = max(MIN_DRAFT, accepted + 1)
            self.failures = 0
        else:
            self.length = MIN_DRAFT
            self.pause = min(MAX_PAUSE, 1 << self.failures)
            self.failures += 1


@dataclass(frozen=True, slots=True)
class NgramDrafter:
    """Prompt-lookup drafts of at most `max_draft` tokens, after the longest matching
    n-gram of `ngram_max` down to `ngram_min` tokens."""

    max_draft: int = 8
    ngram_min: int = 2
    ngram_max: int = 4
    sizes: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.ngram_min <= self.ngram_max or self.max_draft < MIN_DRAFT:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max and max_draft >= {MIN_DRAFT}")
        object.__setattr__(self, "sizes", tuple(range(self.ngram_max, self.ngram_min - 1, -1)))

    def start(self) -> DraftState:
        return DraftState({n: {} for n in self.sizes}, self.max_draft, length=self.max_draft)

    def propose(self, seq: Sequence, limit: int) -> tuple[int, ...]:
        """A draft of at most `limit` tokens to follow `seq.tokens` (empty: none)."""
        state = seq.drafting
        if state is None or limit < MIN_DRAFT:
            return ()
        if state.pause:
            state.pause -= 1
            return ()
        tokens = seq.tokens
        self._index(state, tokens)
        n_tokens = len(tokens)
        for n in self.sizes:
            if n_tokens <= n:
                continue
            after = state.index[n].get(tuple(tokens[-n:]))
            if after is not None and after + MIN_DRAFT <= n_tokens:
                return tuple(tokens[after : after + min(limit, state.length)])
        return ()

    def _index(self, state: DraftState, tokens: list[int]) -> None:
        """Add the n-grams that gained a successor since the last call (a whole prompt at
        once: one dict built from zipped slices, ~0.1 us a token)."""
        end = len(tokens) - 1  # the last token has no successor yet
        if end <= state.indexed:
            return
        for n, index in state.index.items():
            lo = max(0, state.indexed - n + 1)  # first start of an n-gram not yet indexed
            hi = end - n + 1  # n-grams starting before hi end before the last token
            if hi > lo:
                cols = [tokens[lo + k : hi + k] for k in range(n)]
                index.update(zip(zip(*cols, strict=True), range(lo + n, hi + n), strict=True))
        state.indexed = end
