"""A draft model (speculative = "draft"): a small model with the same vocabulary as the one
served guesses each drafting sequence's next tokens greedily, and the served model verifies
them in its step as it does prompt-lookup drafts (`engine.speculative`).

It runs on its own llama.cpp context (a unified KV cache of as many cells as the served
model's, one sequence id per slot of it), stepped by the core thread while it plans a step:
for the sequences that draft this step it feeds, in one batch, what each has that the draft
context lacks (a new sequence's prompt, in batches of `n_batch`; then the one or two tokens
of the last step) and takes the argmax of the last row as the first draft token, then k - 1
more one-token rows per sequence, batched across sequences, the argmax of each the next.
The tokens its KV holds per sequence are remembered (`ModelState`): what the served model
rejected is removed (`llama_memory_seq_rm`) before the sequence's next draft, the accepted
drafts stay. Whether and how much a sequence drafts is the same cost rule as prompt lookup's
(`DraftState.decide`); the step's measured time includes the draft model's."""

from __future__ import annotations

import ctypes
import dataclasses
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from inferd.engine.backends.llamacpp.loading import LlamaModel, context_params, free_context
from inferd.engine.backends.llamacpp.options import FLASH_ATTN, LlamaCppOptions
from inferd.engine.sequence import Chunk, Sequence
from inferd.engine.speculative import MIN_DRAFT, DraftState, DraftStep, room_for
from inferd.errors import BackendError


@dataclass(slots=True)
class ModelState(DraftState):
    """What the draft context holds for a sequence: its first `n_fed` tokens at `slot` (the
    sequence's tokens, then the drafts of its last step: `tail`)."""

    slot: int = -1
    n_fed: int = 0
    tail: tuple[int, ...] = field(default=())  # drafts fed after the sequence's tokens

    def kept(self, tokens: list[int]) -> int:
        """How many of the fed tokens are still the sequence's: its tokens up to the tail,
        and the tail's drafts that were accepted."""
        base = self.n_fed - len(self.tail)
        n = 0
        for drafted, token in zip(self.tail, tokens[base:], strict=False):
            if drafted != token:
                break
            n += 1
        return base + n


def check_vocab(target: Any, draft: Any, name: str) -> None:
    """Raise BackendError unless the two vocabularies have the same tokens (ids, text and
    the special ones): a draft token must mean to the served model what it meant to the
    draft model."""
    n, m = int(llama_cpp.llama_vocab_n_tokens(target)), int(llama_cpp.llama_vocab_n_tokens(draft))
    if n != m:
        raise BackendError(
            f"the draft model {name} has {m} tokens in its vocabulary and the model {n}: "
            "speculative decoding needs the same vocabulary"
        )
    for what, get in (("BOS", llama_cpp.llama_vocab_bos), ("EOS", llama_cpp.llama_vocab_eos)):
        if get(target) != get(draft):
            raise BackendError(f"the draft model {name} has another {what} token than the model")
    a, b = ctypes.create_string_buffer(256), ctypes.create_string_buffer(256)
    for t in range(n):
        la = llama_cpp.llama_token_to_piece(target, t, a, 256, 0, True)
        lb = llama_cpp.llama_token_to_piece(draft, t, b, 256, 0, True)
        if la != lb or a.raw[: max(la, 0)] != b.raw[: max(lb, 0)]:
            raise BackendError(
                f"the draft model {name}'s token {t} is not the model's "
                f"({b.raw[: max(lb, 0)]!r} vs {a.raw[: max(la, 0)]!r}): speculative decoding "
                "needs the same vocabulary"
            )


class DraftModel:
    """The `Drafter` of a draft model (see the module docstring). Core thread only."""

    def __init__(
        self,
        path: Path,
        options: LlamaCppOptions,
        *,
        target_vocab: Any,
        cells: int,
        seqs: int,
        threads: int,
        max_draft: int,
        n_batch: int,
    ) -> None:
        self._ctx: Any = None
        self._batch: Any = None
        # the served model's overrides are for its own file
        self._model = LlamaModel(path, dataclasses.replace(options, kv_overrides=()))
        try:
            check_vocab(target_vocab, self._model.vocab, path.name)
            cparams = context_params(
                split=False,
                cells=cells,
                batch=n_batch,
                seqs=seqs,
                threads=threads,
                flash_attn=FLASH_ATTN["off"] if options.n_gpu_layers == 0 else FLASH_ATTN["auto"],
            )
            self._ctx = llama_cpp.llama_init_from_model(self._model.model, cparams)
            if not self._ctx:
                raise BackendError(f"failed to create a llama.cpp context for {path.name}")
        except BaseException:
            self.close()
            raise
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._n_batch = n_batch
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._model.vocab))
        self._ones = array("i", [1]) * n_batch
        self.max_draft = max_draft
        self.name = path.name

    def start(self) -> ModelState:
        return ModelState()

    def drop(self, seq: Sequence) -> None:
        state = seq.drafting
        if isinstance(state, ModelState) and state.slot >= 0 and self._ctx:
            llama_cpp.llama_memory_seq_rm(self._mem, state.slot, -1, -1)
            state.slot, state.n_fed, state.tail = -1, 0, ()

    def draft(self, chunks: list[Chunk], spare: int, step: DraftStep) -> None:
        wanted: list[tuple[Chunk, ModelState, int]] = []
        for c in chunks:
            state = c.seq.drafting
            limit = min(room_for(c.seq, spare), self.max_draft)
            if not isinstance(state, ModelState) or limit < MIN_DRAFT or state.paused():
                continue
            k = state.decide(limit, step)
            if k:
                wanted.append((c, state, k))
                spare -= k
        if wanted and not self._generate(wanted):
            for c, _, _ in wanted:  # no room in the draft context: start them afresh
                self.drop(c.seq)
                c.draft = ()

    def _generate(self, wanted: list[tuple[Chunk, ModelState, int]]) -> bool:
        """Set each chunk's draft of k tokens; False when the draft context has no room."""
        rows: list[tuple[int, int, int]] = []  # (token, position, slot) to feed
        last: list[int] = []  # each sequence's last row in `rows`
        for c, state, _ in wanted:
            seq = c.seq
            held = int(llama_cpp.llama_memory_seq_pos_max(self._mem, seq.slot)) + 1
            if state.slot != seq.slot or held != state.n_fed:  # new, moved or preempted:
                llama_cpp.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)  # the slot's stale
                state.slot, state.n_fed, state.tail = seq.slot, 0, ()
            kept = state.kept(seq.tokens)
            if kept < state.n_fed:
                llama_cpp.llama_memory_seq_rm(self._mem, seq.slot, kept, -1)
            rows += [(t, p, seq.slot) for p, t in enumerate(seq.tokens[kept:], kept)]
            last.append(len(rows) - 1)
            state.n_fed, state.tail = len(seq.tokens), ()
        drafts: list[list[int]] = [[] for _ in wanted]
        for lo in range(0, len(rows), self._n_batch):  # the catch-up, and the first drafts
            part = rows[lo : lo + self._n_batch]
            ends = [(i, r - lo) for i, r in enumerate(last) if lo <= r < lo + len(part)]
            if not self._decode(part, {r for _, r in ends}):
                return False
            for i, r in ends:
                drafts[i].append(self._argmax(r))
        for _ in range(1, max(k for _, _, k in wanted)):  # the next, one row each
            going = [i for i, (_, _, k) in enumerate(wanted) if len(drafts[i]) < k]
            part = []
            for i in going:
                c, state, _ = wanted[i]
                part.append((drafts[i][-1], state.n_fed, c.seq.slot))
                state.n_fed += 1
                state.tail += (drafts[i][-1],)
            if not self._decode(part, set(range(len(part)))):
                return False
            for r, i in enumerate(going):
                drafts[i].append(self._argmax(r))
        for (c, _, _), tokens in zip(wanted, drafts, strict=True):
            c.draft = tuple(tokens)
        return True

    def _decode(self, rows: list[tuple[int, int, int]], logits: set[int]) -> bool:
        n = len(rows)
        batch = self._batch
        tokens, positions, slots = zip(*rows, strict=True)
        ctypes.memmove(batch.token, array("i", tokens).tobytes(), 4 * n)
        ctypes.memmove(batch.pos, array("i", positions).tobytes(), 4 * n)
        ctypes.memmove(batch.n_seq_id, self._ones.tobytes()[: 4 * n], 4 * n)
        ctypes.memmove(batch.logits, bytes(i in logits for i in range(n)), n)
        seq_id = batch.seq_id
        for i, s in enumerate(slots):
            seq_id[i][0] = s
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc == 1:  # no KV slot for this batch: nothing was applied
            return False
        if rc != 0:
            raise BackendError(f"llama_decode of the draft model failed with status {rc}")
        return True

    def _argmax(self, row: int) -> int:
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, row)
        if not ptr:
            raise BackendError(f"no draft logits for batch row {row}")
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))))

    def close(self) -> None:
        free_context(self._ctx, self._batch)
        self._ctx = self._batch = None
        self._model.close()
