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
a decode step's time by its token count (`StepCosts`), each sequence an estimate of the
chance that each draft token is accepted once the ones before it were, and a sequence
drafts the length that gives the step the most expected tokens per second, only when that
beats the step without it (`DraftStep.take`).

Prompt lookup learns from every token, drafted or not (`NgramState`): the sequence keeps
its alignment with the earlier text it matched (`source`, the position whose token is the
guess of the next one, and `match`, how many tokens before that equal the sequence's last
ones), follows it through each new token, and counts whether the guess was right by the
length of the match behind it (`GuessRates`: a two-token match in free text is chance, a
run of twenty copied tokens goes on). A guess not drafted costs nothing and teaches as much
as a drafted one, so free writing, whose matches are short and wrong, never drafts (no
probes), and a copied run drafts as soon as its guesses come true, longer as its match
grows; where the copy breaks (the model paraphrasing) the alignment is lost and looked up
afresh. A draft model's guesses cost its run, so its sequences learn from their drafts only
and, while their estimate says no, probe with a short draft now and then (`ProbingState`).

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
# A draft model's sequence's first estimate of the chance a draft token is accepted after
# the one before it, as if from PRIOR_WEIGHT tokens of evidence; each draft's evidence then
# counts for DECAY of itself at the next draft (about the last ten drafts weigh).
PRIOR_RATE = 0.75
PRIOR_WEIGHT = 2.0
DECAY = 0.9
# Prompt lookup's first estimate of the chance a guess is right, for the shortest matches
# (longer ones start from the estimate of the next shorter class), as if from GUESS_WEIGHT
# guesses; each guess's evidence counts for GUESS_DECAY of itself at the next guess of its
# class (about the last twenty weigh). Even odds: nothing is drafted on the first estimate
# where a token more in a step costs half a step (a CPU), the guesses decide.
GUESS_PRIOR = 0.5
GUESS_WEIGHT = 2.0
GUESS_DECAY = 0.95
# Classes of match length, each twice as long as the one before: 1, 2-3, 4-7, 8-15, 16-31
# and 32 tokens or more (`match_class`).
MATCH_CLASSES = 6
MATCH_CAP = 1 << (MATCH_CLASSES - 1)  # the least match of the longest class
# Until steps of two sizes are measured, a token more in a step costs this fraction of a
# one-token step.
PRIOR_TOKEN_COST = 0.25
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

    def choose(self, chances: list[float]) -> tuple[int, float]:
        """The draft length (MIN_DRAFT to len(chances)) that gives the step the most expected
        tokens per second, where draft token i is accepted with chance `chances[i]` once the
        ones before it were, and that gain: the step's expected tokens per second with it
        over without it (0 when chances are too few for a draft)."""
        costs, tokens, expected = self.costs, self.tokens, self.expected
        best, gain = MIN_DRAFT, 0.0
        accepted, term = 0.0, 1.0  # expected accepted tokens of a draft of k
        for k, chance in enumerate(chances, 1):
            term *= chance
            accepted += term
            if k >= MIN_DRAFT:
                g = (expected + accepted) / expected / costs.ratio(tokens, k)
                if g > gain:
                    best, gain = k, g
        return best, gain

    def add(self, drafted: int, chances: list[float]) -> None:
        self.tokens += drafted
        term = 1.0
        for chance in chances[:drafted]:
            term *= chance
            self.expected += term

    def take(self, chances: list[float]) -> int:
        """The draft length worth most by `chances`, added to the step, when it is worth
        its cost (else 0, and the step is unchanged)."""
        k, gain = self.choose(chances)
        if gain < MIN_GAIN:
            return 0
        self.add(k, chances)
        return k


@dataclass(slots=True)
class DraftState:
    """A sequence's drafting counts (a drafter's own state for the sequence extends it)."""

    proposed: int = 0  # draft tokens fed, in all
    accepted: int = 0  # of them, accepted

    def record(self, proposed: int, accepted: int) -> None:
        """A draft of `proposed` tokens was verified, its first `accepted` kept."""
        self.proposed += proposed
        self.accepted += accepted


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
class ProbingState(DraftState):
    """The drafting state of a sequence whose guesses are learnt only by drafting them (a
    draft model's: each guess costs its run): its estimate of acceptance, and its probes.
    While the estimate says that no draft is worth its cost, the sequence still drafts
    MIN_DRAFT tokens now and then (the estimate is only as good as the last drafts, the
    costs of longer steps only as good as their last measure), after 1, 2, 4 ... MAX_PAUSE
    steps while probes fail or could not pay even wholly accepted."""

    estimate: Acceptance = field(default_factory=Acceptance)
    pause: int = 0  # steps left before the next probe
    probes: int = 0  # probes in a row (drafts made although the estimate said no)
    probing: bool = False  # the draft being verified is a probe
    hopeless: bool = False  # ... that would not pay even if wholly accepted

    def paused(self) -> bool:
        """Whether this step is one of a pause between probes (counting it down)."""
        if self.pause:
            self.pause -= 1
            return True
        return False

    def decide(self, most: int, step: DraftStep) -> int:
        """How many tokens (MIN_DRAFT to `most`) to draft in `step`, added to it: the length
        worth most by the estimate, or a probe of MIN_DRAFT when none is worth its cost."""
        chances = [self.estimate.rate] * most
        k = step.take(chances)
        self.probing = not k
        if self.probing:
            k = MIN_DRAFT
            # were it wholly accepted, would a probe pay? if not, wait after it in any case
            self.hopeless = step.choose([1.0] * most)[1] < MIN_GAIN
            step.add(k, chances)
        else:
            self.probes = 0
        return k

    def record(self, proposed: int, accepted: int) -> None:
        DraftState.record(self, proposed, accepted)
        self.estimate.record(proposed, accepted)
        if self.probing and (accepted < proposed or self.hopeless):
            # pause before the next probe, twice as long as before the last
            self.pause = min(MAX_PAUSE, 1 << self.probes)
            self.probes += 1


def match_class(match: int) -> int:
    """The class of a match of `match` tokens (>= 1): 0 for 1, 1 for 2-3, 2 for 4-7 ..."""
    return min(match.bit_length(), MATCH_CLASSES) - 1


@dataclass(slots=True)
class GuessRates:
    """Prompt lookup's running estimate of the chance that its guess of a sequence's next
    token is right, by the class of the match length behind the guess: right guesses
    against wrong ones, recent ones weighing most. A class's estimate starts from the next
    shorter class's (a longer match is at least as good a guide until shown otherwise)."""

    hits: list[float] = field(default_factory=lambda: [0.0] * MATCH_CLASSES)
    misses: list[float] = field(default_factory=lambda: [0.0] * MATCH_CLASSES)

    def observe(self, match: int, hit: bool) -> None:
        c = match_class(match)
        self.hits[c] = self.hits[c] * GUESS_DECAY + hit
        self.misses[c] = self.misses[c] * GUESS_DECAY + (not hit)

    def chances(self, match: int, most: int) -> list[float]:
        """The chance of each of `most` draft tokens after a match of `match` tokens (each
        one's match is a token longer than the one before's)."""
        rates, rate = [], GUESS_PRIOR
        for hits, misses in zip(self.hits, self.misses, strict=True):
            rate = (hits + GUESS_WEIGHT * rate) / (hits + misses + GUESS_WEIGHT)
            rates.append(rate)
        return [rates[match_class(m)] for m in range(match, match + most)]


@dataclass(slots=True)
class NgramState(DraftState):
    """A sequence's prompt-lookup index, its alignment with the text it matched, and its
    estimates of the alignment's guesses."""

    # per n-gram size n: the n tokens -> the position after their latest occurrence
    index: dict[int, dict[tuple[int, ...], int]] = field(default_factory=dict)
    indexed: int = 0  # the n-grams followed by a token at or before this index are in
    source: int = -1  # the earlier position whose token is the guess of the next (-1: none)
    match: int = 0  # the sequence's last tokens that equal those before `source`
    followed: int = 0  # the tokens the alignment has been followed through
    guesses: GuessRates = field(default_factory=GuessRates)


class Drafter(Protocol):
    """What drafts the tokens of the sequences that draft: prompt lookup (`NgramDrafter`)
    or a draft model (a backend's `drafter`)."""

    def start(self) -> DraftState:
        """A new sequence's drafting state."""
        ...

    def draft(self, chunks: list[Chunk], spare: int, step: DraftStep) -> None:
        """Set the `draft` of these decoding chunks, in order, each worth its cost (or a
        draft model's probe), of `spare` tokens in all (what the step's token budget and KV
        room leave), none reaching past its sequence's max_len."""
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
        `step` when it is worth its cost; the alignment is followed first."""
        state = seq.drafting
        if not isinstance(state, NgramState):
            return ()
        tokens = seq.tokens
        self.follow(state, tokens)
        source = state.source
        if source < 0:
            return ()
        most = min(limit, self.max_draft, len(tokens) - source)
        if most < MIN_DRAFT:
            return ()
        k = step.take(state.guesses.chances(state.match, most))
        return tuple(tokens[source : source + k])

    def follow(self, state: NgramState, tokens: list[int]) -> None:
        """Follow the alignment through the tokens added since the last call, counting its
        guesses right or wrong, and look it up afresh where it broke (or there was none)."""
        source, match = state.source, state.match
        for token in tokens[state.followed :]:
            if source < 0:
                break
            hit = tokens[source] == token
            state.guesses.observe(match, hit)
            source, match = (source + 1, match + 1) if hit else (-1, 0)
        state.followed = len(tokens)
        if source < 0:
            source, match = self.lookup(state, tokens)
        state.source, state.match = source, match

    def lookup(self, state: NgramState, tokens: list[int]) -> tuple[int, int]:
        """The position after the latest earlier occurrence of the longest n-gram ending
        `tokens` that is followed by MIN_DRAFT tokens or more, and how long the match is:
        the tokens ending `tokens` that equal those before that position (the n-gram's, and
        on, counted up to the longest class's least); (-1, 0) when there is none."""
        self._index(state, tokens)
        n_tokens = len(tokens)
        for n in self.sizes:
            if n_tokens <= n:
                continue
            after = state.index[n].get(tuple(tokens[-n:]))
            if after is not None and after + MIN_DRAFT <= n_tokens:
                match = n
                while (
                    match < MATCH_CAP
                    and match < after
                    and tokens[after - match - 1] == tokens[n_tokens - match - 1]
                ):
                    match += 1
                return after, match
        return -1, 0

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
