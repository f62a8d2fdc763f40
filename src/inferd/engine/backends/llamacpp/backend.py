"""The llama.cpp backend: one model in one context, stepped by inferd's core loop."""

from __future__ import annotations

import ctypes
import threading
from array import array
from collections.abc import Generator
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any, cast

import llama_cpp
import numpy as np

from inferd.engine.backends.base import ModelInfo, SequenceFailed
from inferd.engine.backends.llamacpp.cells import CellPool
from inferd.engine.backends.llamacpp.draft_model import DraftModel
from inferd.engine.backends.llamacpp.embeddings import Embedder, pooling_of
from inferd.engine.backends.llamacpp.loading import (
    LlamaModel,
    context_params,
    free_context,
    kv_cell_bytes,
)
from inferd.engine.backends.llamacpp.options import LlamaCppOptions, step_layout
from inferd.engine.backends.llamacpp.sampling import (
    LlamaCppSampler,
    NumpySampler,
    Samplers,
    row_logits,
)
from inferd.engine.backends.llamacpp.tuning import (
    FlashAttnChoice,
    choose_flash_attn,
    measure_when_idle,
    tuning_key,
)
from inferd.engine.backends.logprobs import prompt_positions, token_logprobs
from inferd.engine.sequence import Chunk, Sequence
from inferd.engine.types import SamplingParams
from inferd.errors import BackendError, EngineStopped, InferdError


class LlamaCppBackend:
    """The step-level `Backend` over one llama.cpp context: `execute` lays a step out as one
    llama_batch, `pool` is the context's sequence ids and cells (`cells.CellPool`).

    Below the seam it offers llama.cpp's own operations (`decode` of a flattened batch, the
    cell-level `free_seq` ... `restore_seq` the pool runs on, `new_sampler` on a batch row),
    which the benchmark ceiling and the backend's tests use directly.
    """

    def __init__(self, path: Path, options: LlamaCppOptions) -> None:
        self._ctx: Any = None
        self._batch: Any = None
        self.drafter: DraftModel | None = None
        self._embedder: Embedder | None = None
        self._embed_lock = threading.Lock()
        self._options = options
        self._model = LlamaModel(path, options)
        model = self._model.model
        self._vocab = self._model.vocab
        cell_bytes = kv_cell_bytes(model, options)
        n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
        layout = step_layout(options, n_ctx_train=n_ctx_train, cell_bytes=cell_bytes)
        kv, n_batch = layout.kv, layout.n_batch
        n_ctx, max_seqs, split = kv.n_ctx, kv.max_seqs, kv.split
        self._n_threads = layout.n_threads
        # measured (or cached) for this CPU and model where nothing decides it (tuning.py)
        self.flash_attn = choose_flash_attn(model, path, options, layout)
        # a pick the load left open is measured again while the engine is idle (idle_work)
        self._idle_tuning = (
            (tuning_key(path, layout, options), layout)
            if not self.flash_attn.settled and options.tune_dir and options.idle_tunes
            else None
        )
        self.idle_tunes = 0  # idle measurements started
        self.idle_choice: FlashAttnChoice | None = None  # the latest one's pick
        cparams = context_params(
            split=split,
            cells=kv.cells,
            batch=n_batch,
            seqs=max_seqs,
            threads=self._n_threads,
            flash_attn=self.flash_attn.llama_type,
            type_k=options.cache_type_k,
            type_v=options.cache_type_v,
        )
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            self.close()
            types = f"{options.cache_type_k}/{options.cache_type_v}"
            hint = "" if types == "f16/f16" else f" with KV cache types {types}"
            raise BackendError(f"failed to create a llama.cpp context for {path.name}{hint}")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        eog = [t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t)]
        self._eog_set = frozenset(eog)
        self._samplers = Samplers(ctx, self._vocab, self._n_vocab, eog)
        self._ones = array("i", [1]) * n_batch
        self._pieces = self._piece_table()
        self._split = split
        if split:  # a sequence never holds more than its stream's cells
            n_ctx = min(n_ctx, int(llama_cpp.llama_n_ctx_seq(ctx)))
        kv_cells = int(llama_cpp.llama_n_ctx(ctx))
        self._cell_bytes = cell_bytes
        self.pool = CellPool(self, slots=max_seqs, cells=kv_cells, split=split)
        if options.draft_model is not None:
            try:
                self.drafter = DraftModel(
                    options.draft_model,
                    options,
                    target_vocab=self._vocab,
                    cells=kv_cells,
                    seqs=max_seqs,
                    threads=self._n_threads,
                    max_draft=options.max_draft,
                    n_batch=n_batch,
                )
            except BaseException:
                self.close()
                raise
        self._metadata = self._model.metadata()
        template = llama_cpp.llama_model_chat_template(model, None)
        self.info = ModelInfo(
            n_vocab=self._n_vocab,
            n_ctx=n_ctx,
            max_seqs=max_seqs,
            max_batch_tokens=n_batch,
            prefill_per_decode=(
                options.prefill_per_decode
                if options.prefill_per_decode is not None
                else (0 if options.n_gpu_layers else 1)
            ),
            n_ctx_train=n_ctx_train,
            add_bos=bool(llama_cpp.llama_vocab_get_add_bos(self._vocab)),
            bos_token=self._special_text(llama_cpp.llama_vocab_bos(self._vocab)),
            eos_token=self._special_text(llama_cpp.llama_vocab_eos(self._vocab)),
            chat_template=template.decode("utf-8", "replace") if template else None,
            n_params=int(llama_cpp.llama_model_n_params(model)),
            size_bytes=int(llama_cpp.llama_model_size(model)),
            kv_bytes=kv_cells * cell_bytes,
            n_embd=int(llama_cpp.llama_model_n_embd_out(model)),
            n_ctx_embed=min(options.n_ctx_embed, n_ctx),
            fim_pre=int(llama_cpp.llama_vocab_fim_pre(self._vocab)),
            fim_suf=int(llama_cpp.llama_vocab_fim_suf(self._vocab)),
            fim_mid=int(llama_cpp.llama_vocab_fim_mid(self._vocab)),
            drafts=True,
        )

    # ---- facts ----------------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        """The KV layout ("unified": one pool of cells shared by the slots; "split": a
        stream per slot), its cells and their size, the flash attention chosen (on/off/auto,
        forced/default/measured/cached, why, the timings) and the GGUF metadata."""
        flash_attn = self.flash_attn.facts()
        if self._idle_tuning is not None:
            tries = {"tries": self.idle_tunes, "of": self._options.idle_tunes}
            last = self.idle_choice.facts() if self.idle_choice is not None else {}
            flash_attn["idle"] = tries | last
        return {
            "backend": "llama.cpp",
            "kv_layout": "split" if self._split else "unified",
            "kv_cells": self.pool.capacity,
            "kv_cell_bytes": self._cell_bytes,
            "flash_attn": flash_attn,
            "metadata": dict(self._metadata),
        }

    # ---- work while idle ------------------------------------------------------------------

    def idle_work(self) -> Generator[None, None, None] | None:
        """A flash-attention pick the load's measurement left open (within its noise, or
        failed) measured again, at most `idle_tunes` times until one settles and is stored
        for the next load: one probe step per resumption, each under the embeddings lock (an
        embeddings batch and a step never overlap; one running makes this wait for it,
        50 ms at a time). An interrupted measurement counts, and its probes are freed."""
        todo = self._idle_tuning
        if todo is None or self.idle_tunes >= self._options.idle_tunes:
            return None
        if self.idle_choice is not None and self.idle_choice.settled:
            return None
        self.idle_tunes += 1
        key, layout = todo
        return self._gated(measure_when_idle(self._model.model, key, layout, self._options))

    def _gated(self, work: Generator[None, None, FlashAttnChoice]) -> Generator[None, None, None]:
        try:
            while True:
                if not self._embed_lock.acquire(timeout=0.05):
                    yield
                    continue
                try:
                    next(work)
                except StopIteration as done:
                    self.idle_choice = done.value
                    return
                finally:
                    self._embed_lock.release()
                yield
        finally:
            work.close()  # its probes are freed here, on the core thread

    def metadata(self) -> dict[str, str]:
        """Every GGUF metadata key/value as strings, with the `kv_overrides` this model was
        loaded with in place of the file's values."""
        return dict(self._metadata)

    # ---- tokenizer ------------------------------------------------------------------------

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._read_piece(token, special=True).decode("utf-8", "replace")

    def _read_piece(self, token: int, *, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:  # piece longer than the buffer: ask again with the size llama.cpp wants
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def _piece_table(self) -> tuple[bytes, ...]:
        """Every token's piece, read once at load (a few ms per 10,000 tokens): the
        detokenizer on the core thread and the tokenizer routes on the event loop read it at
        once, and a lookup shares no buffer between threads."""
        return tuple(self._read_piece(t, special=False) for t in range(self._n_vocab))

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8", "surrogatepass")
        cap = len(data) + 8
        out = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(
            self._vocab, data, len(data), out, cap, add_special, parse_special
        )
        if n < 0:
            cap = -n
            out = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), out, cap, add_special, parse_special
            )
        if n < 0:
            raise BackendError("tokenization failed")
        return list(out[:n])

    def token_piece(self, token: int) -> bytes:
        return self._pieces[token]

    def token_text(self, token: int) -> bytes:
        return self._read_piece(token, special=True)

    def is_eog(self, token: int) -> bool:
        return token in self._eog_set

    # ---- sampling -------------------------------------------------------------------------

    def check_sampling(self, params: SamplingParams) -> None:
        self._samplers.check_sampling(params)

    def new_sampler(
        self, params: SamplingParams, *, llama_chain: bool = False
    ) -> LlamaCppSampler | NumpySampler:
        """A sampler of batch rows (see `Samplers.new_sampler`)."""
        return self._samplers.new_sampler(params, llama_chain=llama_chain)

    def chain_candidates(self, params: SamplingParams, row: int) -> list[int]:
        return self._samplers.chain_candidates(params, row)

    # ---- the step -------------------------------------------------------------------------

    def execute(self, chunks: list[Chunk]) -> list[int] | None:
        """The chunks as one llama_batch (a sequence's slot is its llama.cpp sequence id),
        logits only on the rows that sample (a drafted chunk's last token and its drafts; the
        prompt rows of a sequence that wants its prompt's log probabilities); then each
        sampling chunk's rows are sampled in order (drafts: while they match)."""
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        logits: list[bool] = []
        rows: list[tuple[LlamaCppSampler | NumpySampler, int, Chunk]] = []  # first row
        scored: list[tuple[Sequence, int]] = []  # (sequence, index in rows) with logprobs
        prompts: list[tuple[Sequence, int, range]] = []  # (sequence, row of position 0, ...)
        for c in chunks:
            seq = c.seq
            start, end = c.start, c.end + len(c.draft)
            n = end - start
            tokens += seq.tokens[start : c.end]
            tokens += c.draft
            positions += range(start, end)
            seq_ids += [seq.slot] * n
            logits += [False] * n
            if seq.prompt_logprobs is not None:
                wanted = prompt_positions(c)
                if wanted:
                    base = len(tokens) - end
                    logits[base + wanted.start : base + wanted.stop] = [True] * len(wanted)
                    prompts.append((seq, base, wanted))
            if c.samples:
                first = len(tokens) - 1 - len(c.draft)
                logits[first:] = [True] * (1 + len(c.draft))
                sampler = seq.sampler
                if sampler is None:
                    sampler = seq.sampler = self._sampler_for(seq)
                if seq.request.sampling.logprobs is not None:
                    scored.append((seq, len(rows)))
                rows.append((cast("LlamaCppSampler | NumpySampler", sampler), first, c))
        if not self.decode(tokens, positions, seq_ids, logits):
            return None
        sampled = [_verify(sampler, row, c) for sampler, row, c in rows]
        for seq, base, wanted in prompts:
            self._score_prompt(seq, base, wanted)
        for seq, i in scored:  # samplers read the logits, never write them
            k = seq.request.sampling.logprobs or 0
            row = self._logits(rows[i][1])[None]
            seq.sampled_logprob = token_logprobs(row, [sampled[i]], k)[0]
        return sampled

    def _logits(self, row: int) -> np.ndarray:
        return row_logits(self._ctx, row, self._n_vocab)

    def _score_prompt(self, seq: Sequence, base: int, wanted: range) -> None:
        """Append the log probabilities of the prompt tokens after `wanted`'s positions."""
        assert seq.prompt_logprobs is not None
        k = seq.request.sampling.prompt_logprobs or 0
        rows = np.stack([self._logits(base + p) for p in wanted])
        targets = seq.tokens[wanted.start + 1 : wanted.stop + 1]
        seq.prompt_logprobs.extend(token_logprobs(rows, targets, k))

    def _sampler_for(self, seq: Sequence) -> LlamaCppSampler | NumpySampler:
        try:
            return self._samplers.new_sampler(seq.request.sampling)
        except InferdError as exc:  # this request's grammar, say: it fails alone
            raise SequenceFailed(seq, exc.message) from None

    def drop(self, seq: Sequence) -> None:
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None

    def decode(
        self,
        tokens: Seq[int],
        positions: Seq[int],
        seq_ids: Seq[int],
        logits: Seq[bool],
    ) -> bool:
        n = len(tokens)
        batch = self._batch
        if batch is None or self._ctx is None:
            raise BackendError("backend is closed")
        if not 0 < n <= self.info.max_batch_tokens:
            raise BackendError(
                f"a batch of {n} tokens; this context takes 1 to {self.info.max_batch_tokens}"
            )
        ctypes.memmove(batch.token, array("i", tokens).tobytes(), 4 * n)
        ctypes.memmove(batch.pos, array("i", positions).tobytes(), 4 * n)
        ctypes.memmove(batch.n_seq_id, self._ones.tobytes()[: 4 * n], 4 * n)
        ctypes.memmove(batch.logits, bytes(logits), n)
        seq_id = batch.seq_id
        for i, s in enumerate(seq_ids):
            seq_id[i][0] = s
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc == 0:
            return True
        if rc == 1:  # no KV slot for this batch: nothing was applied
            return False
        raise BackendError(f"llama_decode failed with status {rc}")

    def free_seq(self, seq_id: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._mem, seq_id, -1, -1)

    def trim_seq(self, seq_id: int, keep: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._mem, seq_id, keep, -1)

    def copy_prefix(self, src: int, dst: int, n: int) -> bool:
        """Unified: the cells gain the owner `dst` (no copy; cannot fail). Split: streams
        share no cells, and llama.cpp copies between streams only whole (a partial seq_cp
        aborts the process): copy src's state, then keep its first n positions."""
        if not self._split:
            llama_cpp.llama_memory_seq_cp(self._mem, src, dst, 0, n)
            return True
        if not self._copy_state(src, dst):
            return False
        self.trim_seq(dst, n)
        return True

    def move_seq(self, src: int, dst: int) -> None:
        if not self._copy_state(src, dst):
            raise BackendError(f"could not move sequence {src} to the empty slot {dst}")
        self.free_seq(src)

    def _copy_state(self, src: int, dst: int) -> bool:
        """Copy all of `src`'s positions into the empty `dst` through its saved state."""
        state = self.save_seq(src)
        return state is not None and self.restore_seq(dst, state)

    def save_seq(self, seq_id: int) -> bytearray | None:
        size = int(llama_cpp.llama_state_seq_get_size(self._ctx, seq_id))
        if size <= 0:
            return None
        state = bytearray(size)  # calloc'd: no Python-side copy below
        dst = (ctypes.c_uint8 * size).from_buffer(state)
        written = int(llama_cpp.llama_state_seq_get_data(self._ctx, dst, size, seq_id))
        del dst  # release the buffer export before resizing
        if written <= 0:
            return None
        if written < size:
            del state[written:]
        return state

    def restore_seq(self, seq_id: int, state: bytes | bytearray) -> bool:
        n = len(state)
        src = (
            (ctypes.c_uint8 * n).from_buffer_copy(state)
            if isinstance(state, bytes)
            else ((ctypes.c_uint8 * n).from_buffer(state))
        )
        read = int(llama_cpp.llama_state_seq_set_data(self._ctx, src, n, seq_id))
        if read == 0:
            llama_cpp.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
            return False
        return True

    # ---- embeddings -----------------------------------------------------------------------

    def embed(self, inputs: Seq[Seq[int]]) -> list[list[float]]:
        with self._embed_lock:
            if self._model.model is None:
                raise EngineStopped("the model was unloaded")
            if self._embedder is None:
                self._embedder = Embedder(
                    self._model.model,
                    self.info,
                    pooling_of(self._metadata),
                    self._options,
                    self._n_threads,
                )
            return self._embedder.embed(inputs)

    def close(self) -> None:
        if self.drafter is not None:
            self.drafter.close()
            self.drafter = None
        with self._embed_lock:
            if self._embedder is not None:
                self._embedder.close()
                self._embedder = None
        free_context(self._ctx, self._batch)
        self._ctx = self._batch = None
        self._model.close()


def _verify(sampler: LlamaCppSampler | NumpySampler, row: int, chunk: Chunk) -> int:
    """Sample `chunk`'s rows from `row` on in order while each sample equals the draft token
    fed after it; set `chunk.accepted`; return the last sample (without a draft: the one)."""
    draft = chunk.draft
    token = sampler.sample(row)
    i = 0
    while i < len(draft) and token == draft[i]:
        i += 1
        token = sampler.sample(row + i)
    chunk.accepted = i
    return token
