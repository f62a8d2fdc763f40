"""The engine factories this server runs models with: llama.cpp (a GGUF file, or a Hugging
Face checkpoint converted for it), transformers (a checkpoint on PyTorch), and the table of
factories by engine kind that `inferd serve` loads models through."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from inferd.engine.backends.base import Backend
from inferd.errors import ConfigError, InvalidCheckpoint
from inferd.models.checkpoint import find, inspect
from inferd.models.convert_cache import ConvertCache, Quantizer
from inferd.models.converting import ConvertingFactory
from inferd.models.engines import (
    CHECKPOINT,
    LLAMACPP,
    TRANSFORMERS,
    BackendEngineFactory,
    BackendLoader,
    EngineFactories,
    EngineFactory,
    engine_kind,
)
from inferd.models.gguf_header import read_header
from inferd.models.progress import LoadProgress, ProgressCallback, logging_progress
from inferd.models.spec import ModelSpec

if TYPE_CHECKING:
    from inferd.engine.backends.llamacpp import LlamaCppOptions
    from inferd.engine.backends.torch import TorchOptions

log = logging.getLogger(__name__)


def engine_factory(
    *,
    verbose: bool = False,
    conversions: Path | None = None,
    quantize: str | None = None,
    tune_dir: Path | None = None,
    idle_tunes: int = 3,
) -> EngineFactories:
    """Every kind of engine this server can load models with, by kind (`engine_kind` picks
    one per model): a new kind is added here. Checkpoints for llama.cpp are converted into the cache
    at `conversions` (default: none served), at `quantize` unless their model sets a type.
    `tune_dir`: where llama.cpp kernel choices measured per machine and model are cached
    (None: no measuring); `idle_tunes`: how often a pick a load left open is measured again
    while its engine is idle."""
    llamacpp = llamacpp_factory(verbose=verbose, tune_dir=tune_dir, idle_tunes=idle_tunes)
    kinds: dict[str, EngineFactory] = {LLAMACPP: llamacpp, TRANSFORMERS: TransformersFactory()}
    if conversions is not None:
        kinds[CHECKPOINT] = ConvertingFactory(
            convert_cache(conversions), llamacpp, default_quant=quantize
        )
    return EngineFactories(kinds, lambda spec: engine_kind(spec, cuda=cuda_available))


def convert_cache(root: Path) -> ConvertCache:
    """The conversion cache at `root`, quantizing with llama.cpp's quantizer."""
    return ConvertCache(root, quantize=quantizer())


def quantizer() -> Quantizer:
    """llama.cpp's quantizer (it runs in a child process)."""
    from inferd.engine.backends.llamacpp.quantize import quantize

    return quantize


def llamacpp_factory(
    *, verbose: bool = False, tune_dir: Path | None = None, idle_tunes: int = 3
) -> BackendEngineFactory:
    """inferd's engine over llama.cpp, with the KV-aware memory estimate."""
    return BackendEngineFactory(
        llamacpp_loader(verbose=verbose, tune_dir=tune_dir, idle_tunes=idle_tunes),
        llamacpp_footprint,
    )


def llamacpp_options(
    spec: ModelSpec,
    *,
    verbose: bool = False,
    tune_dir: Path | None = None,
    idle_tunes: int = 3,
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
        idle_tunes=idle_tunes,
        verbose=verbose,
        draft_model=(
            Path(c.speculative_draft) if c.speculative == "draft" and c.speculative_draft else None
        ),
        max_draft=c.speculative_max_draft,
    )


def llamacpp_loader(
    *, verbose: bool = False, tune_dir: Path | None = None, idle_tunes: int = 3
) -> BackendLoader:
    """Spec -> a loaded llama.cpp backend (blocking: seconds for a large model)."""

    def load(spec: ModelSpec) -> Backend:
        from inferd.engine.backends.llamacpp import LlamaCppBackend

        # a clean error for garbage, before llama.cpp parses (and allocates for) it
        read_header(spec.path)
        options = llamacpp_options(spec, verbose=verbose, tune_dir=tune_dir, idle_tunes=idle_tunes)
        return LlamaCppBackend(spec.path, options)

    return load


def llamacpp_footprint(spec: ModelSpec) -> int:
    """Bytes a model will take once loaded, without loading it: its file (the weights) and
    the KV cache its settings give it on this host, from the GGUF header; and so for its
    draft model (speculative = "draft", a context of as many cells)."""
    from inferd.engine.backends.llamacpp import estimate_kv_bytes

    options = llamacpp_options(spec)
    total = 0
    for path in (spec.path, options.draft_model):
        if path is not None:
            total += path.stat().st_size + estimate_kv_bytes(options, read_header(path).metadata)
    return total


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (False without torch installed)."""
    try:
        from inferd.engine.backends.torch import cuda_available as torch_cuda
    except ImportError:
        return False
    return torch_cuda()


class TransformersFactory(BackendEngineFactory):
    """inferd's engine over a transformers model, with the config-based memory estimate;
    its load reports its weights as they are read (the model's progress in the listings,
    and the log at each quarter)."""

    def __init__(self) -> None:
        super().__init__(transformers_load, transformers_footprint)

    def backend(self, spec: ModelSpec, report: ProgressCallback) -> Backend:
        return transformers_load(spec, logging_progress(log, spec.name, report))


def transformers_options(spec: ModelSpec) -> TorchOptions:
    from inferd.engine.backends.torch import TorchOptions

    c = spec.config
    return TorchOptions(
        n_ctx=c.n_ctx,
        max_seqs=c.max_seqs,
        kv_cells=c.kv_cells,
        n_batch=c.n_batch,
        prefill_per_decode=c.prefill_per_decode,
        n_ctx_embed=c.n_ctx_embed,
        n_threads=c.n_threads,
        dtype=c.dtype,
        device=c.device or ("cuda" if cuda_available() else "cpu"),
        trust_remote_code=c.trust_remote_code,
    )


def transformers_load(spec: ModelSpec, on_progress: ProgressCallback | None = None) -> Backend:
    """Spec -> a loaded transformers backend, from a checkpoint folder (checked first, from
    its headers, for a clean error) or a repo in the local Hugging Face cache. `on_progress`
    hears the load's phase `loading` (in this thread)."""
    try:
        from inferd.engine.backends.torch import TorchBackend
    except ImportError as exc:
        raise ConfigError(
            f"{spec.name}: the transformers backend needs the hf extra "
            f"(pip install 'inferd[hf]'): {exc}"
        ) from None
    inspect(checkpoint_folder(spec), convertible=False)

    def report(fraction: float, what: str) -> None:
        if on_progress is not None:
            on_progress(LoadProgress("loading", fraction, what))

    return TorchBackend(checkpoint_folder(spec), transformers_options(spec), report)


def transformers_footprint(spec: ModelSpec) -> int:
    """Bytes a checkpoint will take once loaded: its parameters in the asked dtype and its
    KV blocks, from config.json and the safetensors headers."""
    from inferd.engine.backends.torch import estimate_memory

    folder = checkpoint_folder(spec)
    checkpoint = inspect(folder, convertible=False)
    return estimate_memory(folder, transformers_options(spec), checkpoint.n_params)


def checkpoint_folder(spec: ModelSpec) -> Path:
    """The checkpoint a spec names: its folder, or an `org/repo` snapshot in the local Hugging
    Face cache (never downloaded)."""
    folder = find(str(spec.path))
    if folder is None:
        raise InvalidCheckpoint(
            f"{spec.path} is neither a checkpoint folder nor in the local Hugging Face cache"
        )
    return folder
