"""Per-request state inside the core loop."""

from __future__ import annotations

import enum
import time
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from inferd.engine.detokenizer import Detokenizer
from inferd.engine.types import FinishReason, GenerateRequest, TokenLogprob

if TYPE_CHECKING:
    from inferd.engine.backends.base import Sampler
    from inferd.engine.speculative import DraftState


class SeqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class Sequence:
    """A request being generated.

    `tokens` is prompt + generated. `n_computed` tokens have their KV in the cache; the
    tokens after them are fed in the next steps. A decoding sequence has exactly one token
    left to feed (the one it just sampled); a prefilling one has more. When the last token
    is fed, the step samples the next one. A preempted sequence drops its cache
    (`n_computed = 0`) and is fed again from the start, which recomputes the same state.

    Where its KV lives is the backend's KV pool's business: `slot` is its place there, and
    the pool keeps its own bookkeeping in `parent`, `borrowed`, `children` and `run_starts`
    (for llama.cpp's cells: see `backends.llamacpp.cells`). `sampler` is the backend's
    sampler state for it.

    Log probabilities, for a sequence whose SamplingParams ask for them: the backend puts
    the one of the token it has just sampled in `sampled_logprob`, and appends the prompt's
    to `prompt_logprobs` as it computes them (which starts as [None]: the first token has
    none); the core takes both into the sequence's outputs.

    `drafting`: the prompt-lookup state of a sequence that may draft tokens (speculative
    decoding, `engine.speculative`), else None.
    """

    request: GenerateRequest
    detokenizer: Detokenizer
    max_len: int  # prompt + max_tokens, capped by the context window
    tokens: list[int] = field(default_factory=list)
    n_prompt: int = 0
    n_computed: int = 0
    slot: int = -1
    sampler: Sampler | None = None
    state: SeqState = SeqState.WAITING
    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float = 0.0
    token_gaps: array[float] = field(default_factory=lambda: array("d"))  # seconds between tokens
    finish_reason: FinishReason | None = None
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache at admission
    parent: Sequence | None = None
    borrowed: int = 0
    children: list[Sequence] = field(default_factory=list)
    run_starts: array[int] = field(default_factory=lambda: array("i"))
    sampled_logprob: TokenLogprob | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    drafting: DraftState | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt

    @property
    def n_pending(self) -> int:
        """Tokens still to be fed before the next one can be sampled."""
        return len(self.tokens) - self.n_computed

    @property
    def decoding(self) -> bool:
        return self.n_pending == 1 and self.n_generated > 0 and self.n_computed > 0

    @property
    def owned_cells(self) -> int:
        """KV cells this sequence holds that no ancestor holds for it."""
        return self.n_computed - self.borrowed


@dataclass(slots=True)
class Chunk:
    """The tokens `seq.tokens[start:end]` fed to a sequence in one step.

    A decoding sequence may carry a `draft` (speculative decoding): tokens guessed to follow
    its last one, fed after it at the next positions. The backend samples the chunk's
    positions in order and sets `accepted` to how many drafts equal what it sampled; the
    token it returns is the one sampled after them.
    """

    seq: Sequence
    start: int
    end: int
    draft: tuple[int, ...] = ()
    accepted: int = 0

    @property
    def samples(self) -> bool:
        """Whether this chunk feeds the sequence's last token, so a new one is sampled."""
        return self.end == len(self.seq.tokens)
