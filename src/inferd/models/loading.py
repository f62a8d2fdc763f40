"""Turns a ModelSpec into a running llama.cpp backend."""

from __future__ import annotations

from inferd.engine.backends.base import Backend
from inferd.models.gguf_header import read_header
from inferd.models.registry import BackendLoader
from inferd.models.spec import ModelSpec


def llamacpp_loader(*, verbose: bool = False) -> BackendLoader:
    def load(spec: ModelSpec) -> Backend:
        from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions

        # a clean error for garbage, before llama.cpp parses (and allocates for) it
        read_header(spec.path)
        c = spec.config
        return LlamaCppBackend(
            spec.path,
            LlamaCppOptions(
                n_ctx=c.n_ctx,
                kv_cells=c.kv_cells,
                max_seqs=c.max_seqs,
                kv_split=c.kv_split,
                n_batch=c.n_batch,
                n_ctx_embed=c.n_ctx_embed,
                prefill_per_decode=c.prefill_per_decode,
                n_threads=c.n_threads,
                n_gpu_layers=c.n_gpu_layers,
                flash_attn=c.flash_attn,
                kv_overrides=tuple(c.kv_overrides.items()),
                verbose=verbose,
            ),
        )

    return load
