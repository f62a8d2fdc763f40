"""Speculative decoding: draft tokens guessed cheaply, verified in the engine's step.

Prompt lookup (`NgramDrafter`): when the last n tokens of a sequence (prompt + output)
occurred before in it, the tokens that followed that earlier occurrence are a guess at what
comes next: a model quoting, editing or extracting from a given text repeats long runs of
it. A draft model (a backend's `drafter`, for llama.cpp `backends.llamacpp.draft_model`)
guesses with a small model of the same vocabulary instead. The scheduler feeds a draft after
the sequence's last sampled token in the same step as everything else (`Chunk.draft`); the
backend computes logits at every position and samples them in order with the sequence's
own sampler, keeping drafts while they equal what it samples and stopping at the first
difference (that sample is the next token) or after the last draft (one token more).
Nothing is sampled past a difference, so sampling (a seeded one, penalties, grammars) goes
exactly as decoding token by token, on the logits the step computed (which on llama.cpp's
CPU kernels differ from a one-token step's by float noise: docs/architecture.md); rejected
drafts' KV is removed when the step is committed (`KVPool.commit`).

A draft costs compute: on a CPU a step's time grows with its tokens, so a draft pays only
when enough of it is accepted. Each draft is weighed: the engine keeps a running measure of
a decode step's time by its token count (`StepCosts`), each sequence a running estimate of
the chance that a draft token is accepted after the one before it was (`Acceptance`:
accepted tokens against rejections, recent drafts weighing most), and a sequence drafts the
length that gives the step the most expected tokens per second, only when that beats the
step without it (`DraftStep.choose`, `DraftState.decide`). A sequence whose estimate says
no still tries a short draft now and then (a probe, after 1, 2, 4 ... 64 steps after
failed ones or ones that could not pay), so a copying run later in a free answer starts
drafting again. Prompt lookup keeps two estimates: drafts after a match of LONG_MATCH
tokens or more (strong: a copied run) and after a shorter one (weak: in free text a two-
or three-token match is chance), and probes only after a long match. Free writing thus
stops drafting after a draft or two (unless it repeats itself); quoting drafts long.

A draft is at least MIN_DRAFT tokens: with llama.cpp's split KV cache a step is cut into
micro-batches of equal tokens per sequence, so a drafted sequence's tokens beyond the
others' one run in a micro-batch of their own (a pass over the weights), which one draft
token does not repay; and a micro-batch of one token is computed by llama.cpp's one-token
kernels, whose logits differ from a larger batch's.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from inferd.engine.sequence import Chunk, Sequence

MIN_DRAFT = 2
# Steps a sequence whose estimate says "do not draft" waits between probes: 1, 2, 4, ... up
# to this, doubling with each probe in a row.
MAX_PAUSE = 64
# A sequence's first estimate of the chance a draft token is accepted after the one before
# it, as if from PRIOR_WEIGHT tokens of evidence; each draft's evidence then counts for
# DECAY of itself at the next draft (about the last ten drafts weigh).
PRIOR_RATE = 0.75
PRIOR_WEIGHT = 2.0
DECAY = 0.9
# Until steps of two sizes are measured, a token more in a step costs this fraction of a
# one-token step.
PRIOR_TOKEN_COST = 0.25
# A prompt-lookup draft after a match of this many tokens or more is a strong one: weaker
# ones are never probes (in free text a match of two or three tokens is chance).
LONG_MATCH = 4
# How much a step's expected tokens per second must gain for a draft to be made.
MIN_GAIN = 1.05
# Weight of a new measurement in a step size's running mean (until it has 1/ALPHA of them,
# the plain mean).
ALPHA = 0.05


class StepCosts:
    """The running mean time of a decode step (every sequence decoding, no prompt chunk) by
    its number of tokens, as the engine measures it; sizes not measured are interpolated
    (beyond the largest measured: on at the mean slope from the smallest, which one dear
    last token does not tilt, so that longer drafts get tried and measured). Until two
    sizes are measured, a token more costs PRIOR_TOKEN_COST of a one-token step. Only
    relative costs are read: `ratio`."""

    __slots__ = ("_counts", "_means", "_sizes")

    def __init__(self) -> None:
        self._means: dict[int, float] = {}
        self._counts: dict[int, int] = {}
        self._sizes: list[int] = []  # measured sizes, ascending

    def observe(self, tokens: int, seconds: float) -> None:
        count = self._counts.get(tokens, 0) + 1
        self._counts[tokens] = count
        if count == 1:
            bisect.insort(self._sizes, tokens)
        mean = self._means.get(tokens, seconds)
        self._means[tokens] = mean + max(ALPHA, 1 / count) * (seconds - mean)

    def cost(self, tokens: int) -> float:
        """A step of `tokens`, in seconds (in one-token steps when nothing is measured)."""
        means, sizes = self._means, self._sizes
        if len(sizes) < 2:  # the prior's shape, through the one measured size if any
            scale = means[sizes[0]] / _prior(sizes[0]) if sizes else 1.0
            return scale * _prior(tokens)
        if tokens in means:
            return means[tokens]
        i = bisect.bisect(sizes, tokens)
        if i == len(sizes):  # beyond: the mean slope of all measured, not the last one's
            lo, hi = sizes[0], sizes[-1]
        else:  # between the two around `tokens`, or below: the two smallest
            lo, hi = sizes[max(i, 1) - 1], sizes[max(i, 1)]
        slope = max(0.0, (means[hi] - means[lo]) / (hi - lo))
        return max(means[lo] + slope * (tokens - lo), 1e-9)

    def ratio(self, tokens: int, more: int) -> float:
        """A step of `tokens` + `more` tokens, in steps of `tokens`."""
        return self.cost(tokens + more) / self.cost(tokens)


def _prior(tokens: int) -> float:
    return 1 + PRIOR_TOKEN_COST * (tokens - 1)


@dataclass(slots=True)
class DraftStep:
    """The step being planned, as drafts are added to it: its tokens and the tokens it is
    expected to give (one per sampling sequence, plus the drafts' expected accepted ones)."""

    costs: StepCosts
    tokens: int
    expected: float

    def choose(self, rate: float, most: int) -> tuple[int, float]:
        """The draft length (MIN_DRAFT to `most`) that gives the step the most expected
        tokens per second for a sequence whose draft tokens are each accepted with chance
        `rate` after the one before, and that gain: the step's expected tokens per second
        with it over without it."""
        costs, tokens, expected = self.costs, self.tokens, self.expected
        best, gain = MIN_DRAFT, 0.0
        accepted = sum(rate**i for i in range(1, MIN_DRAFT))  # expected accepted, k - 1 drafts
        term = rate ** (MIN_DRAFT - 1)
        for k in range(MIN_DRAFT, most + 1):
            term *= rate
            accepted += term
            g = (expected + accepted) / expected / costs.ratio(tokens, k)
            if g > gain:
                best, gain = k, g
        return best, gain

    def add(self, drafted: int, rate: float) -> None:
        self.tokens += drafted
        self.expected += sum(rate**i for i in range(1, drafted + 1))


@dataclass(slots=True)
class Acceptance:
    """A running estimate of the chance that a draft token is accepted after the one before
    it: accepted tokens against rejections, recent drafts weighing most."""

    hits: float = PRIOR_RATE * PRIOR_WEIGHT  # draft tokens accepted, decayed
    misses: float = (1 - PRIOR_RATE) * PRIOR_WEIGHT  # drafts cut by a rejection, decayed

    @property
    def rate(self) -> float:
        return self.hits / (self.hits + self.misses)

    def record(self, proposed: int, accepted: int) -> None:
        self.hits = self.hits * DECAY + accepted
        self.misses = self.misses * DECAY + (accepted < proposed)


@dataclass(slots=True)
class DraftState:
    """One sequence's drafting history: its estimates of acceptance, its probes, its counts
    (a drafter's own state for the sequence extends it). Drafts come in two kinds, each
    with its own estimate: strong ones (a draft model's; prompt lookup's after a match of
    LONG_MATCH tokens or more) and weak ones (prompt lookup's after a shorter match, which
    in free text is chance)."""

    strong: Acceptance = field(default_factory=Acceptance)
    weak: Acceptance = field(default_factory=Acceptance)
    verifying: Acceptance | None = None  # the estimate of the draft being verified
    pause: int = 0  # steps left before the next probe
    probes: int = 0  # probes in a row (drafts made although the estimate said no)
    probing: bool = False  # the draft being verified is a probe
    hopeless: bool = False  # ... that would not pay even if wholly accepted
    proposed: int = 0  # draft tokens fed, in all
    accepted: int = 0  # of them, accepted

    def paused(self) -> bool:
        """Whether this step is one of a pause between probes (counting it down)."""
        if self.pause:
            self.pause -= 1
            return True
        return False

    def decide(self, most: int, step: DraftStep, *, strong: bool = True) -> int:
        """How many tokens (MIN_DRAFT to `most`) to draft in `step`, added to it: the length
        worth most by the estimate of the draft's kind, or, when none is worth its cost, a
        probe of MIN_DRAFT if the draft is a strong one (the estimate is only as good as the
        last drafts, the costs of longer steps only as good as their last measure), else
        none (0)."""
        estimate = self.strong if strong else self.weak
        rate = estimate.rate
        k, gain = step.choose(rate, most)
        probing = gain < MIN_GAIN
        if probing and not strong:
            return 0
        self.probing, self.verifying = probing, estimate
        if probing:
            k = MIN_DRAFT
            # were it wholly accepted, would a probe pay? if not, wait after it in any case
            self.hopeless = step.choose(1.0, most)[1] < MIN_GAIN
        else:
            self.probes = 0
        step.add(k, rate)
        return k

    def _wait(self) -> None:
        """Pause before the next probe, twice as long as before the last."""
        self.pause = min(MAX_PAUSE, 1 << self.probes)
        self.probes += 1

    def record(self, proposed: int, accepted: int) -> None:
        """A draft of `proposed` tokens was verified, its first `accepted` kept."""
        self.proposed += proposed
        self.accepted += accepted
        if self.verifying is not None:
            self.verifying.record(proposed, accepted)
        if self.probing and (accepted < proposed or self.hopeless):
            self._wait()


@dataclass(slots=True)
class NgramState(DraftState):
    """A sequence's prompt-lookup index, beside its history."""

    # per n-gram size n: the n tokens -> the position after their latest occurrence
    index: dict[int, dict[tuple[int, ...], int]] = field(default_factory=dict)
    indexed: int = 0  # the n-grams followed by a token at or before this index are in


class Drafter(Protocol):
    """What drafts the tokens of the sequences that draft: prompt lookup (`NgramDrafter`)
    or a draft model (a backend's `drafter`)."""

    def start(self) -> DraftState:
        """A new sequence's drafting state."""
        ...

    def draft(self, chunks: list[Chunk], spare: int, step: DraftStep) -> None:
        """Set the `draft` of these decoding chunks, in order, each worth its cost (or a
        probe), of `spare` tokens in all (what the step's token budget and KV room leave),
        none reaching past its sequence's max_len."""
        ...

    def drop(self, seq: Sequence) -> None:
        """`seq` is finished: forget what is kept for it."""
        ...


def room_for(seq: Sequence, spare: int) -> int:
    """The most draft tokens `seq` may take of `spare`: its accepted ones and the token after
    them must fit in its max_len."""
    return min(spare, seq.max_len - len(seq.tokens) - 1)


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

    def start(self) -> NgramState:
        return NgramState(index={n: {} for n in self.sizes})

    def draft(self, chunks: list[Chunk], spare: int, step: DraftStep) -> None:
        for c in chunks:
            c.draft = self.propose(c.seq, room_for(c.seq, spare), step)
            spare -= len(c.draft)

    def drop(self, seq: Sequence) -> None:
        pass

    def propose(self, seq: Sequence, limit: int, step: DraftStep) -> tuple[int, ...]:
        """A draft of at most `limit` tokens to follow `seq.tokens` (empty: none), added to
        `step` when it is worth its cost (or is a probe)."""
        state = seq.drafting
        if not isinstance(state, NgramState) or limit < MIN_DRAFT or state.paused():
            return ()
        found, match = self.lookup(state, seq.tokens, min(limit, self.max_draft))
        if len(found) < MIN_DRAFT:
            return ()
        return found[: state.decide(len(found), step, strong=match >= LONG_MATCH)]

    def lookup(
        self, state: NgramState, tokens: list[int], most: int
    ) -> tuple[tuple[int, ...], int]:
        """The up to `most` tokens that followed the latest earlier occurrence of the
        longest n-gram ending `tokens`, and how long the match is: the tokens ending
        `tokens` that equal those before that occurrence (the n-gram's, and on up to
        LONG_MATCH)."""
        self._index(state, tokens)
        n_tokens = len(tokens)
        for n in self.sizes:
            if n_tokens <= n:
                continue
            after = state.index[n].get(tuple(tokens[-n:]))
            if after is not None and after + MIN_DRAFT <= n_tokens:
                match = n
                while (
                    match < LONG_MATCH
                    and match < after
                    and tokens[after - match - 1] == tokens[n_tokens - match - 1]
                ):
                    match += 1
                return tuple(tokens[after : after + most]), match
        return (), 0

    def _index(self, state: NgramState, tokens: list[int]) -> None:
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
