"""What a llama.cpp context is given: the options, and the KV cache they plan on this host."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import llama_cpp


@dataclass(frozen=True, slots=True)
class LlamaCppOptions:
    n_ctx: int = 4096  # per-sequence context window
    kv_cells: int | None = None  # shared KV cells; default n_ctx * max_seqs capped (see below)
    max_seqs: int = 16
    # Prompt tokens per decoding sequence in a step that also decodes. On a CPU a step's
    # cost grows with its token count (a prompt token costs about what a decode token does,
    # more as the prompt's context grows), so 1 keeps a stream's inter-token latency within
    # ~2x while a long prompt is admitted. None: 1 on CPU, no cap with GPU offload.
    prefill_per_decode: int | None = None
    # Tokens per step (llama.cpp's n_batch and n_ubatch), at least max_seqs. None: 128 on CPU
    # (without flash attention the attention scores of a step take n_batch x KV cells x heads
    # floats; prefill is no faster at 256), 512 with GPU offload.
    n_batch: int | None = None
    n_threads: int | None = None
    n_gpu_layers: int = 0
    # Flash attention: "on", "off" or "auto"; None: auto with GPU offload, on with a quantized
    # V cache, else on a CPU measured per machine and model when tune_dir is set (tuning.py:
    # llama.cpp's CPU kernel is faster on some CPUs, 2-3x slower on others) and off without.
    flash_attn: str | None = None
    # Where per-machine kernel decisions are cached (tuning.py); None: no tuning
    tune_dir: Path | None = None
    # How many times a pick the load's measurement left open is measured again while the
    # engine is idle, until one settles and is stored for the next load (0: never)
    idle_tunes: int = 3
    # One KV stream per sequence slot instead of one unified cache. Unified, llama.cpp's
    # attention (without flash attention) spans every occupied cell of every sequence, so a
    # step's cost grows with the total context in use; split, each sequence attends over its
    # own stream (measured: 16 x 128-token streams 177 -> 193 tok/s in-process; 8 streams
    # beside one 1,900-token sequence 61 -> 44 ms a step). Each slot then holds at most
    # kv_cells / max_seqs cells; default kv_cells becomes n_ctx x max_seqs, so every slot
    # keeps the full n_ctx. None: `choose_split` decides.
    kv_split: bool | None = None
    # llama.cpp's extra CPU buffer types (AMX / repacked weights). Off by default: on CPUs
    # with AMX, llama-cpp-python 0.3.36 segfaults in ggml_backend_amx_mul_mat as soon as a
    # batch holds more than one token (measured on this project's machines).
    extra_buffers: bool = False
    # Tokens in one embeddings decode, so the longest embeddings input (capped by n_ctx). A
    # generative model's embeddings context outputs every token, logits included: 2048
    # tokens of SmolLM2 take ~0.4 GB of logits alone, 4096 took 1.6 GB in all (measured).
    n_ctx_embed: int = 2048
    # KV cache element types for K and V (KV_TYPES). Quantized types shrink the cache
    # (q8_0: 53 %, q4_0: 28 % of f16's bytes); llama.cpp quantizes V only with flash
    # attention, which such a model then gets unless flash_attn says otherwise.
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    # GGUF metadata overridden at load: (key, bool | int | float | str) pairs
    kv_overrides: tuple[tuple[str, bool | int | float | str], ...] = ()
    verbose: bool = False
    # speculative = "draft": the draft model's GGUF file (draft_model.py), and its most
    # draft tokens per step
    draft_model: Path | None = None
    max_draft: int = 8


FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


@dataclass(frozen=True)
class KvType:
    """A KV cache element type: llama.cpp's ggml type, and its bytes per block of values."""

    ggml: int
    block_bytes: int
    block_values: int

    def bytes_of(self, values: int) -> int:
        return values * self.block_bytes // self.block_values

    @property
    def quantized(self) -> bool:
        return self.block_values > 1


KV_TYPES = {
    "f32": KvType(llama_cpp.GGML_TYPE_F32, 4, 1),
    "f16": KvType(llama_cpp.GGML_TYPE_F16, 2, 1),
    "q8_0": KvType(llama_cpp.GGML_TYPE_Q8_0, 34, 32),
    "q5_1": KvType(llama_cpp.GGML_TYPE_Q5_1, 24, 32),
    "q5_0": KvType(llama_cpp.GGML_TYPE_Q5_0, 22, 32),
    "q4_1": KvType(llama_cpp.GGML_TYPE_Q4_1, 20, 32),
    "q4_0": KvType(llama_cpp.GGML_TYPE_Q4_0, 18, 32),
}


def flash_attn_type(options: LlamaCppOptions) -> int:
    """llama.cpp's flash_attn_type for these options without a measurement (the default is
    explained above; a quantized V cache needs flash attention, so it is on there). A
    generating context on a CPU may get a measured choice instead (tuning.py)."""
    default = "auto" if options.n_gpu_layers else "off"
    if KV_TYPES[options.cache_type_v].quantized:
        default = "on"
    return FLASH_ATTN[options.flash_attn or default]


# The automatic layout splits the KV cache only while n_ctx x max_seqs cells take at most
# this share of the host's memory: split is faster on a CPU but costs up to max_seqs times
# the memory of the unified default (SmolLM2-135M: 1.5 GB for 16 x 4096 cells; an 8B model
# with grouped-query attention would need ~8.6 GB).
SPLIT_MAX_RAM_SHARE = 1 / 8


def choose_split(
    options: LlamaCppOptions, *, n_ctx: int, max_seqs: int, cell_bytes: int, ram_bytes: int
) -> bool:
    """Whether the KV cache is split into one stream per slot. An explicit kv_split wins.
    Automatically: split on a CPU when every slot can keep the full n_ctx within
    SPLIT_MAX_RAM_SHARE of the host's memory; unified when kv_cells is given (a pool sized
    for all sequences to share), with GPU offload (flash attention there; not measured) or
    with a single slot (the layouts are then the same)."""
    if options.kv_split is not None:
        return options.kv_split
    if options.kv_cells is not None or options.n_gpu_layers or max_seqs < 2:
        return False
    return n_ctx * max_seqs * cell_bytes <= ram_bytes * SPLIT_MAX_RAM_SHARE


@dataclass(frozen=True)
class KvPlan:
    """A context's KV cache: the window per sequence, the slots, the layout, the cells."""

    n_ctx: int
    max_seqs: int
    split: bool
    cells: int


def plan_kv(options: LlamaCppOptions, *, n_ctx_train: int, cell_bytes: int) -> KvPlan:
    """The KV cache a context for these options gets on this host: decided here for loading
    and for estimating a model's memory before it is loaded (the registry's budget)."""
    n_ctx = min(options.n_ctx, n_ctx_train) if n_ctx_train > 0 else options.n_ctx
    max_seqs = min(options.max_seqs, int(llama_cpp.llama_max_parallel_sequences()))
    split = choose_split(
        options, n_ctx=n_ctx, max_seqs=max_seqs, cell_bytes=cell_bytes, ram_bytes=host_ram_bytes()
    )
    if split:
        cells = options.kv_cells or n_ctx * max_seqs
    else:
        cells = max(options.kv_cells or default_kv_cells(n_ctx, max_seqs), n_ctx)
    return KvPlan(n_ctx, max_seqs, split, cells)


@dataclass(frozen=True)
class StepLayout:
    """What a generating context's steps look like: its KV plan, tokens per step, threads
    and the bytes of one KV cell."""

    kv: KvPlan
    n_batch: int
    n_threads: int
    cell_bytes: int


def step_layout(options: LlamaCppOptions, *, n_ctx_train: int, cell_bytes: int) -> StepLayout:
    """The layout a context for these options gets on this host (n_batch: 128 on CPU, 512
    with GPU offload, at least max_seqs; threads: every core unless given)."""
    n_batch = max(options.n_batch or (512 if options.n_gpu_layers else 128), options.max_seqs)
    return StepLayout(
        kv=plan_kv(options, n_ctx_train=n_ctx_train, cell_bytes=cell_bytes),
        n_batch=n_batch,
        n_threads=options.n_threads or max(1, os.cpu_count() or 1),
        cell_bytes=cell_bytes,
    )


def estimate_kv_bytes(options: LlamaCppOptions, metadata: Mapping[str, str]) -> int:
    """Bytes of the KV cache a model would get, from its GGUF header's metadata, without
    loading it (0 when the header does not say enough)."""
    arch = metadata.get("general.architecture", "")
    try:
        n_layer = int(metadata[f"{arch}.block_count"])
        n_head = max(1, int(metadata[f"{arch}.attention.head_count"]))
        n_head_kv = int(metadata.get(f"{arch}.attention.head_count_kv", n_head))
        n_embd = int(metadata[f"{arch}.embedding_length"])
        n_ctx_train = int(metadata.get(f"{arch}.context_length", 0))
    except (KeyError, ValueError):  # per-layer head counts (arrays), or an unknown layout
        return 0
    cell_bytes = cell_bytes_of(
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_embd=n_embd,
        type_k=options.cache_type_k,
        type_v=options.cache_type_v,
    )
    return plan_kv(options, n_ctx_train=n_ctx_train, cell_bytes=cell_bytes).cells * cell_bytes


def host_ram_bytes() -> int:
    """Physical memory of this host (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def cell_bytes_of(
    *, n_layer: int, n_head: int, n_head_kv: int, n_embd: int, type_k: str, type_v: str
) -> int:
    """K and V of every layer, in their cache types."""
    values = n_layer * n_head_kv * (n_embd // n_head)
    return KV_TYPES[type_k].bytes_of(values) + KV_TYPES[type_v].bytes_of(values)


def default_kv_cells(n_ctx: int, max_seqs: int) -> int:
    """Enough for every slot to hold a typical conversation, and one full window at least."""
    return max(n_ctx, min(n_ctx * max_seqs, 1024 * max_seqs))
