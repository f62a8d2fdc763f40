"""The step-level seam between inferd's scheduler and a model runtime.

A runtime that runs under inferd's own scheduler (llama.cpp now, a paged PyTorch cache
later) implements `Backend`: one step in (`execute`), one sampled token per sampling
sequence out, and its KV capacity behind a `KVPool`. The scheduler keeps order, budgets,
chunking, preemption and prefix matching; everything about where a sequence's KV lives and
how a runtime wants its batches laid out stays behind these two interfaces. (A whole engine
with its own scheduler enters one level up, at `engine.client.EngineClient`.)

Threads: `tokenize`, `token_piece`, `is_eog`, `facts`, `check_sampling` and `embed` may be
called from any thread; everything else, the pool included, from the engine's core thread
only.

Failures: an operation documented as able to fail says so with its result (False or None)
and then has changed nothing, neither in the runtime nor in the pool's accounting: the
caller may go on as if it had never been called. Anything else raises `BackendError`, after
which the engine fails every running request.
"""

from __future__ import annotations

from collections.abc import Generator
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from inferd.engine.types import SamplingParams

if TYPE_CHECKING:
    from inferd.engine.prefix_cache import SavedPrefix
    from inferd.engine.sequence import Chunk, Sequence
    from inferd.engine.speculative import Drafter


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Runtime-neutral facts about a loaded model and the context it runs in. What only
    one runtime knows (its KV layout, file metadata) is in `Backend.facts()`."""

    n_vocab: int
    n_ctx: int  # the largest context one sequence may use (prompt + completion)
    max_seqs: int  # sequences that can run in one step
    max_batch_tokens: int  # tokens per step (the step budget)
    prefill_per_decode: int  # prompt tokens per decoding sequence in a mixed step (0: no cap)
    n_ctx_train: int
    add_bos: bool
    bos_token: str
    eos_token: str
    chat_template: str | None
    n_params: int = 0
    size_bytes: int = 0  # memory of the weights
    kv_bytes: int = 0  # memory of the KV cache (0: unknown)
    n_embd: int = 0  # size of an embedding vector
    n_ctx_embed: int = 0  # the longest embeddings input, in tokens (0: n_ctx)
    # fill-in-the-middle tokens (-1: the model has none)
    fim_pre: int = -1
    fim_suf: int = -1
    fim_mid: int = -1
    # whether the runtime constrains sampling with grammars (JSON output, tool calls)
    grammars: bool = True
    # whether `execute` verifies draft tokens (`Chunk.draft`, speculative decoding)
    drafts: bool = False

    @property
    def embed_limit(self) -> int:
        return self.n_ctx_embed or self.n_ctx

    @property
    def supports_insert(self) -> bool:
        """Whether the model can fill in the middle (a prompt with a suffix): it has all
        three FIM tokens. The one place that decides it."""
        return min(self.fim_pre, self.fim_suf, self.fim_mid) >= 0


class Sampler(Protocol):
    """A sequence's sampler state, made and used by its backend only (kept on the sequence
    so that a step finds it without a lookup)."""

    def close(self) -> None: ...


class KVPool(Protocol):
    """A runtime's KV capacity, as the scheduler sees it: room, a place per sequence,
    reuse of a prefix, and the runtime's layout rules.

    A sequence's computed tokens are `seq.n_computed`; the pool says where they live. It is
    called on the core thread only. "Nothing changed" (a False result) means the sequence
    holds exactly what it held before the call and the accounting did not move.
    """

    capacity: int  # KV positions in all (for stats)
    moves: int  # sequences moved to keep the layout (for stats)

    @property
    def used(self) -> int:
        """KV positions the sequences holding a place use (a shared position counts once)."""
        ...

    def room(self, claimed: int) -> int:
        """Positions still free for this step beyond `claimed` ones (sys.maxsize when each
        sequence has room of its own up to the context window)."""
        ...

    def chunk(self, seq: Sequence, limit: int) -> int:
        """Tokens to feed a sequence with a prompt pending this step, at most `limit` (the
        runtime's rule for how a prompt is fed)."""
        ...

    def acquire(self, seq: Sequence) -> bool:
        """Give an empty `seq` a place. False: none free (nothing changed)."""
        ...

    def share(self, holder: Sequence, seq: Sequence, n: int) -> bool:
        """Give `seq`, just acquired and empty, the first `n` computed positions of the
        running `holder`. False: nothing changed (it computes them itself)."""
        ...

    def restore(self, seq: Sequence, prefix: SavedPrefix, n: int) -> bool:
        """Load a kept prefix's state into `seq`, just acquired and empty, keeping its first
        `n` positions. False: nothing changed (no room of the right shape)."""
        ...

    def keepable(self, seq: Sequence) -> int:
        """How many of a finishing sequence's computed positions are worth keeping."""
        ...

    def release(self, seq: Sequence, keep: SavedPrefix | None = None) -> None:
        """`seq` gives up its place (finished, preempted, aborted); the accounting drops it
        at once. With `keep`, its first `keep.n` positions are kept for later requests: that
        work (a copy to host memory, milliseconds) waits for `settle`, and so does the reuse
        of its place."""
        ...

    def settle(self) -> list[SavedPrefix]:
        """Do the work releases left (called after a step's outputs are sent, before the
        next plan). Returns the kept prefixes, each with its state."""
        ...

    def arrange(self) -> None:
        """Before a step is planned: move sequences as the runtime's layout wants."""
        ...

    def order(self, chunks: list[Chunk]) -> None:
        """Put a step's chunks in the order the runtime runs them best (in place)."""
        ...

    def commit(self, chunks: Seq[Chunk]) -> None:
        """The step ran: each chunk's tokens, and its accepted drafts, now hold KV
        (`n_computed` already moved past them); the KV of rejected drafts (positions from
        `n_computed` on) is removed here."""
        ...


class Backend(Protocol):
    """A model loaded into a runtime, stepped by inferd's core loop."""

    info: ModelInfo

    @property
    def drafter(self) -> Drafter | None:
        """A draft model loaded beside this one (speculative = "draft"), where the runtime
        has one."""
        ...

    @property
    def pool(self) -> KVPool:
        """This runtime's KV capacity, for the scheduler."""
        ...

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    def token_piece(self, token: int) -> bytes:
        """The bytes a generated token contributes to the text (control tokens: none)."""
        ...

    def token_text(self, token: int) -> bytes:
        """A token's bytes with a control token written out as its text (`<|im_end|>`),
        as `/detokenize` shows ids."""
        ...

    def is_eog(self, token: int) -> bool: ...

    def facts(self) -> dict[str, Any]:
        """What this runtime knows beyond `info`, as plain data for clients to show: at
        least "backend" (its name); llama.cpp adds its KV layout and the GGUF metadata."""
        ...

    def check_sampling(self, params: SamplingParams) -> None:
        """Raise InvalidRequest when these parameters cannot be sampled (a JSON schema the
        backend cannot turn into a grammar). May be slow for a large schema."""
        ...

    def embed(self, inputs: Seq[Seq[int]]) -> list[list[float]]:
        """One pooled, unnormalized embedding per input (token ids, each non-empty, in the
        vocabulary, at most `info.embed_limit` long). Runs beside the core thread (its own
        context), serialized with itself."""
        ...

    def execute(self, chunks: list[Chunk]) -> list[int] | None:
        """Run one step: feed each chunk's tokens (`seq.tokens[start:end]`, at those
        positions, into the place the pool gave `seq`); for each chunk that `samples`, in
        order, sample the next token with the sequence's sampler (made from its
        SamplingParams on first use) and return it.

        A chunk with a `draft` (only where `info.drafts`) feeds its token and then the
        draft tokens at the next positions; its positions are sampled in order, each with
        the sequence's sampler as if decoded one by one, while the sampled token equals the
        draft token at that position: `chunk.accepted` is set to how many did, and the token
        returned is the one sampled after them (at the first difference, or after the last
        draft). No position after a difference is sampled, so sampler state (random draws,
        penalties, grammars) is exactly as without drafts. The rejected drafts' KV stays
        until `KVPool.commit` removes it. Sequences with a draft never ask for log
        probabilities.

        Log probabilities (`backends.logprobs`), only for the sequences that ask: with
        `sampling.logprobs` set, the sampled token's in `seq.sampled_logprob`; with
        `seq.prompt_logprobs` (not None), those of the prompt tokens after the positions
        `logprobs.prompt_positions(chunk)` names, appended to it. Requests that ask for
        neither cost nothing extra.

        None: no KV room for the step (nothing changed). SequenceFailed: one sequence cannot
        be stepped (its sampler cannot be made), raised before anything changed. Any other
        failure raises BackendError.
        """
        ...

    def drop(self, seq: Sequence) -> None:
        """`seq` has left the engine for good: free its per-sequence state (the sampler).
        Its KV place is given back through the pool."""
        ...

    def idle_work(self) -> Generator[None, None, None] | None:
        """Work this runtime wants done while the engine is idle (llama.cpp: a kernel pick
        its load left open, measured again), or None. The core thread runs it one
        resumption at a time, each bounded (one step's time), only while no request is
        queued or running and after the engine has been quiet for a while; it closes the
        generator when a request arrives (the work must then free what it holds) and asks
        again at the next quiet spell."""
        ...

    def close(self) -> None: ...


class SequenceFailed(Exception):
    """`Backend.execute` cannot step `seq` (nothing changed): the engine fails that request
    alone and plans the step again."""

    def __init__(self, seq: Sequence, message: str) -> None:
        super().__init__(message)
        self.seq = seq
        self.message = message
