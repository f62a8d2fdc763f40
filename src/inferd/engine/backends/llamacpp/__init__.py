"""llama.cpp through llama-cpp-python's low-level ctypes API: the only package that imports it.

- `options`: what a context is given (`LlamaCppOptions`) and the KV cache that plans on this
  host (`plan_kv`, `choose_split`, memory estimates before loading).
- `cells`: the context's KV cache as the scheduler's `KVPool` (slots, cells, layout rules).
- `backend`: `LlamaCppBackend`, the step (`execute`) over llama.cpp's batch and cell ops.
- `sampling`: numpy sampling, llama.cpp's sampler chains, grammars.
- `embeddings`: the second context that computes embeddings.
- `loading`: the model file, context parameters, GGUF metadata.
"""

from inferd.engine.backends.llamacpp.backend import LlamaCppBackend
from inferd.engine.backends.llamacpp.loading import kv_cell_bytes
from inferd.engine.backends.llamacpp.options import (
    SPLIT_MAX_RAM_SHARE,
    KvPlan,
    LlamaCppOptions,
    choose_split,
    default_kv_cells,
    estimate_kv_bytes,
    flash_attn_type,
    host_ram_bytes,
    plan_kv,
)
from inferd.engine.backends.llamacpp.sampling import LlamaCppSampler, NumpySampler

__all__ = [
    "SPLIT_MAX_RAM_SHARE",
    "KvPlan",
    "LlamaCppBackend",
    "LlamaCppOptions",
    "LlamaCppSampler",
    "NumpySampler",
    "choose_split",
    "default_kv_cells",
    "estimate_kv_bytes",
    "flash_attn_type",
    "host_ram_bytes",
    "kv_cell_bytes",
    "plan_kv",
]
