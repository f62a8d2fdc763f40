"""The engine factories this server runs models with: llama.cpp (a GGUF file), and the table
of factories by engine kind that `inferd serve` loads models through."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from inferd.engine.backends.base import Backend
from inferd.models.engines import LLAMACPP, BackendEngineFactory, BackendLoader, EngineFactories
from inferd.models.gguf_header import read_header
from inferd.models.spec import ModelSpec

if TYPE_CHECKING:
    from inferd.engine.backends.llamacpp import LlamaCppOptions


def engine_factory(*, verbose: bool = False, tune_dir: Path | None = None) -> EngineFactories:
    """Every kind of engine this server can load models with, by kind (`engine_kind` picks
    one per model): a second kind is added here. `tune_dir`: where kernel choices measured
    per machine and model are cached (None: no measuring)."""
    return EngineFactories({LLAMACPP: llamacpp_factory(verbose=verbose, tune_dir=tune_dir)})


def llamacpp_factory(
    *, verbose: bool = False, tune_dir: Path | None = None
) -> BackendEngineFactory:
    """inferd's engine over llama.cpp, with the KV-aware memory estimate."""
    return BackendEngineFactory(
        llamacpp_loader(verbose=verbose, tune_dir=tune_dir), llamacpp_footprint
    )


def llamacpp_options(
    spec: ModelSpec, *, verbose: bool = False, tune_dir: Path | None = None
) -> LlamaCppOptions:
    from inferd.engine.backends.llamacpp import LlamaCppOptions

    c = spec.config
    return LlamaCppOptions(
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
        cache_type_k=c.cache_type_k,
        cache_type_v=c.cache_type_v,
        kv_overrides=tuple(c.kv_overrides.items()),
        tune_dir=tune_dir,
        verbose=verbose,
    )


def llamacpp_loader(*, verbose: bool = False, tune_dir: Path | None = None) -> BackendLoader:
    """Spec -> a loaded llama.cpp backend (blocking: seconds for a large model)."""

    def load(spec: ModelSpec) -> Backend:
        from inferd.engine.backends.llamacpp import LlamaCppBackend

        # a clean error for garbage, before llama.cpp parses (and allocates for) it
        read_header(spec.path)
        options = llamacpp_options(spec, verbose=verbose, tune_dir=tune_dir)
        return LlamaCppBackend(spec.path, options)

    return load


def llamacpp_footprint(spec: ModelSpec) -> int:
    """Bytes a model will take once loaded, without loading it: its file (the weights) and
    the KV cache its settings give it on this host, from the GGUF header."""
    from inferd.engine.backends.llamacpp import estimate_kv_bytes

    header = read_header(spec.path)
    return spec.path.stat().st_size + estimate_kv_bytes(llamacpp_options(spec), header.metadata)
