"""Embeddings on a second llama.cpp context over the same weights."""

from __future__ import annotations

import ctypes
import logging
from array import array
from collections.abc import Sequence
from typing import Any

import llama_cpp

from inferd.engine.backends.base import ModelInfo
from inferd.engine.backends.llamacpp.loading import context_params, free_context
from inferd.engine.backends.llamacpp.options import LlamaCppOptions, flash_attn_type
from inferd.errors import BackendError

log = logging.getLogger(__name__)

# sequences packed into one embeddings decode
_EMBED_SEQS = 16
# pooling a model may declare for its embeddings; anything else (none, rank) pools the mean
_POOLINGS = frozenset(
    {
        llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        llama_cpp.LLAMA_POOLING_TYPE_CLS,
        llama_cpp.LLAMA_POOLING_TYPE_LAST,
    }
)


class Embedder:
    """A second llama.cpp context on the same loaded weights, computing pooled embeddings.

    Its window is `info.embed_limit` tokens and every decode holds whole inputs
    (a pooled sequence must not span micro-batches): inputs are packed, in order, into
    decodes of at most `n_ctx` tokens and `_EMBED_SEQS` sequences. Not thread-safe: the
    backend serializes calls.
    """

    def __init__(
        self, model: Any, info: ModelInfo, pooling: int, options: LlamaCppOptions, threads: int
    ) -> None:
        n_ctx = info.embed_limit
        cparams = context_params(  # whole inputs packed into one decode: one stream
            split=False,
            cells=n_ctx,
            batch=n_ctx,
            seqs=_EMBED_SEQS,
            threads=threads,
            flash_attn=flash_attn_type(options),
        )
        cparams.embeddings = True
        cparams.pooling_type = pooling
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise BackendError("failed to create a llama.cpp embeddings context")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        self._n_ctx = n_ctx
        self._n_embd = info.n_embd
        self._ones = array("i", [1]) * n_ctx
        log.debug("embeddings context: %d tokens, pooling %d", n_ctx, pooling)

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        out: list[list[float]] = []
        i = 0
        while i < len(inputs):
            group: list[Sequence[int]] = []
            total = 0
            while (
                i < len(inputs)
                and len(group) < _EMBED_SEQS
                and total + len(inputs[i]) <= self._n_ctx
            ):
                group.append(inputs[i])
                total += len(inputs[i])
                i += 1
            if not group or any(not g for g in group):
                raise BackendError("an embeddings input is empty or longer than the context")
            out.extend(self._decode(group, total))
        return out

    def _decode(self, group: list[Sequence[int]], total: int) -> list[list[float]]:
        batch = self._batch
        tokens = array("i", (t for g in group for t in g))
        positions = array("i", (p for g in group for p in range(len(g))))
        ctypes.memmove(batch.token, tokens.tobytes(), 4 * total)
        ctypes.memmove(batch.pos, positions.tobytes(), 4 * total)
        ctypes.memmove(batch.n_seq_id, self._ones.tobytes()[: 4 * total], 4 * total)
        ctypes.memmove(batch.logits, b"\x01" * total, total)
        seq_id = batch.seq_id
        row = 0
        for s, g in enumerate(group):
            for _ in range(len(g)):
                seq_id[row][0] = s
                row += 1
        batch.n_tokens = total
        llama_cpp.llama_memory_clear(self._mem, True)
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc != 0:
            raise BackendError(f"llama_decode (embeddings) failed with status {rc}")
        vectors = []
        for s in range(len(group)):
            ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, s)
            if not ptr:
                raise BackendError("llama.cpp returned no pooled embedding")
            vectors.append(list(ptr[: self._n_embd]))
        return vectors

    def close(self) -> None:
        free_context(self._ctx, self._batch)
        self._ctx = self._batch = None


def pooling_of(metadata: dict[str, str]) -> int:
    """The pooling a model declares for embeddings; the mean when it declares none."""
    declared = metadata.get(f"{metadata.get('general.architecture', '')}.pooling_type", "")
    pooling = int(declared) if declared.isdigit() else -1
    return pooling if pooling in _POOLINGS else llama_cpp.LLAMA_POOLING_TYPE_MEAN
