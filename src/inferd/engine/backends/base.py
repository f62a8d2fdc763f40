"""The seam between the engine's core loop and a model runtime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from inferd.engine.types import SamplingParams


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """Static facts about a loaded model and its runtime context."""

    n_vocab: int
    n_ctx: int  # the largest context one sequence may use (prompt + completion)
    kv_cells: int  # KV cells of all sequences (split: kv_cells / max_seqs per sequence)
    max_seqs: int  # sequence slots that can run in one step
    max_batch_tokens: int  # tokens per step (the step budget)
    prefill_per_decode: int  # prompt tokens per decoding sequence in a mixed step (0: no cap)
    n_ctx_train: int
    add_bos: bool
    bos_token: str
    eos_token: str
    chat_template: str | None
    kv_split: bool = False  # one KV stream per sequence slot instead of one unified cache
    kv_cell_bytes: int = 0  # memory of one KV cell (0: unknown)
    n_params: int = 0
    size_bytes: int = 0
    n_embd: int = 0  # size of an embedding vector
    n_ctx_embed: int = 0  # the longest embeddings input, in tokens (0: n_ctx)
    # fill-in-the-middle tokens (-1: the model has none)
    fim_pre: int = -1
    fim_suf: int = -1
    fim_mid: int = -1

    @property
    def embed_limit(self) -> int:
        return self.n_ctx_embed or self.n_ctx

    @property
    def supports_insert(self) -> bool:
        """Whether the model can fill in the middle (a prompt with a suffix): it has all
        three FIM tokens. The one place that decides it."""
        return min(self.fim_pre, self.fim_suf, self.fim_mid) >= 0


class Sampler(Protocol):
    def sample(self, row: int) -> int:
        """Sample (and accept) the next token from batch row `row` of the last decode."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """A model loaded into a runtime context with a shared KV cache.

    Every method except the tokenizer ones, `check_sampling` and `embed` is called from the
    engine's core thread only.
    """

    info: BackendInfo

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    def token_piece(self, token: int) -> bytes:
        """The bytes a generated token contributes to the text (control tokens: none)."""
        ...

    def is_eog(self, token: int) -> bool: ...

    def metadata(self) -> dict[str, str]:
        """The model file's metadata (GGUF key/values as strings)."""
        ...

    def check_sampling(self, params: SamplingParams) -> None:
        """Raise InvalidRequest when these parameters cannot be sampled (a JSON schema the
        backend cannot turn into a grammar). Thread-safe; may be slow for a large schema."""
        ...

    def new_sampler(self, params: SamplingParams) -> Sampler: ...

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One pooled, unnormalized embedding per input (token ids, each non-empty, in the
        vocabulary, at most `info.embed_limit` long).

        Runs on its own embeddings context, not the core thread's: thread-safe, serialized
        with itself, called from a worker thread.
        """
        ...

    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seq_ids: Sequence[int],
        logits: Sequence[bool],
    ) -> bool:
        """Run one forward pass over a mixed batch. False: no KV space (nothing changed).

        Raises BackendError on any other failure.
        """
        ...

    def free_seq(self, seq_id: int) -> None:
        """Forget every KV cell of sequence id `seq_id` (cells shared with others stay)."""
        ...

    def trim_seq(self, seq_id: int, keep: int) -> None:
        """Keep only the first `keep` cells (positions) of sequence id `seq_id`."""
        ...

    def copy_prefix(self, src: int, dst: int, n: int) -> bool:
        """Give the empty `dst` the first `n` positions of `src`: shared cells in a unified
        cache (no copy: the cells gain an owner), a copy between split streams. False when
        it does not fit (nothing is changed)."""
        ...

    def move_seq(self, src: int, dst: int) -> None:
        """Move sequence id `src` with all its positions to the empty id `dst` (split KV:
        keeps the running slots consecutive)."""
        ...

    def save_seq(self, seq_id: int) -> bytes | bytearray | None:
        """The KV state of sequence id `seq_id` as bytes (None: cannot be saved)."""
        ...

    def restore_seq(self, seq_id: int, state: bytes | bytearray) -> bool:
        """Load a state from `save_seq` into the empty sequence id `seq_id`, at the
        positions it was saved from. False when it does not fit (nothing is changed)."""
        ...

    def close(self) -> None: ...
