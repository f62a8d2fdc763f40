"""Loading a GGUF model into llama.cpp: model and context parameters, overrides, metadata."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from inferd.engine.backends.llamacpp.options import KV_TYPES, LlamaCppOptions, cell_bytes_of
from inferd.errors import BackendError

log = logging.getLogger(__name__)

_INIT_LOCK = threading.Lock()


def context_params(
    *,
    split: bool,
    cells: int,
    batch: int,
    seqs: int,
    threads: int,
    flash_attn: int,
    type_k: str = "f16",
    type_v: str = "f16",
) -> Any:
    """llama.cpp context parameters as inferd uses them: a KV cache of `cells` (unified, or
    split into one stream per sequence) in the given element types, one `batch`-token
    micro-batch per decode, `seqs` sequence ids, no perf counters."""
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cells
    cparams.n_batch = batch
    cparams.n_ubatch = batch
    cparams.n_seq_max = seqs
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.kv_unified = not split
    cparams.flash_attn_type = flash_attn
    cparams.type_k = KV_TYPES[type_k].ggml
    cparams.type_v = KV_TYPES[type_v].ggml
    cparams.no_perf = True
    return cparams


def free_context(ctx: Any, batch: Any) -> None:
    """Free a llama.cpp context and its batch; either may already be gone (None)."""
    if batch is not None:
        llama_cpp.llama_batch_free(batch)
    if ctx:
        llama_cpp.llama_free(ctx)


def kv_cell_bytes(model: Any, options: LlamaCppOptions) -> int:
    """Bytes of one KV cell (K and V of every layer, in the options' cache types) for this
    model: an estimate that takes a head's size as n_embd / n_head, as most architectures
    do."""
    return cell_bytes_of(
        n_layer=int(llama_cpp.llama_model_n_layer(model)),
        n_head=max(1, int(llama_cpp.llama_model_n_head(model))),
        n_head_kv=int(llama_cpp.llama_model_n_head_kv(model)),
        n_embd=int(llama_cpp.llama_model_n_embd(model)),
        type_k=options.cache_type_k,
        type_v=options.cache_type_v,
    )


def kv_override_array(overrides: Sequence[tuple[str, bool | int | float | str]]) -> Any:
    """llama.cpp's `kv_overrides`: one llama_model_kv_override per pair, then an entry with
    an empty key. Keys and string values must fit its 128-byte buffers (checked by config)."""
    arr = (llama_cpp.llama_model_kv_override * (len(overrides) + 1))()  # zeroed: the end mark
    key_size: int = getattr(llama_cpp.llama_model_kv_override, "key").size  # noqa: B009
    str_size: int = getattr(llama_cpp.llama_model_kv_override_value, "val_str").size  # noqa: B009
    for item, (key, value) in zip(arr, overrides, strict=False):
        raw_key = key.encode()
        if not raw_key or len(raw_key) >= key_size:
            raise BackendError(f"kv_overrides key {key[:40]!r} is empty or too long")
        item.key = raw_key
        if isinstance(value, bool):
            item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_BOOL
            item.value.val_bool = value
        elif isinstance(value, int):
            item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            item.value.val_i64 = value
        elif isinstance(value, float):
            item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_FLOAT
            item.value.val_f64 = value
        elif isinstance(value, str):
            raw = value.encode()
            if len(raw) >= str_size:
                raise BackendError(f"kv_overrides[{key!r}] is too long")
            item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            item.value.val_str = raw
        else:
            raise BackendError(f"kv_overrides[{key!r}] has an unsupported type")
    return arr


class _LoadProgress:
    """Logs a model's loading progress in quarters (the CLI shows these lines)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.shown = 0
        # kept on the instance: llama.cpp calls it while the load runs
        self.callback = llama_cpp.llama_progress_callback(self._progress)

    def _progress(self, fraction: float, _user: Any) -> bool:
        quarter = int(fraction * 4)
        if quarter > self.shown:
            self.shown = quarter
            log.info("loading %s: %d%%", self.name, quarter * 25)
        return True  # go on loading


class LlamaModel:
    """A GGUF file's weights in llama.cpp (`model`), with what must live as long as they do.

    Thread-safe to read from; freed by `close`."""

    def __init__(self, path: Path, options: LlamaCppOptions) -> None:
        logging.getLogger("llama-cpp-python").setLevel(
            logging.DEBUG if options.verbose else logging.ERROR
        )
        with _INIT_LOCK:
            llama_cpp.llama_backend_init()
        if not path.is_file():
            raise BackendError(f"model file not found: {path.name}")
        self._overrides = options.kv_overrides
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = options.n_gpu_layers
        mparams.use_extra_bufts = options.extra_buffers
        progress = _LoadProgress(path.name)
        mparams.progress_callback = progress.callback
        # kept for the model's lifetime, as llama-cpp-python's Llama does
        self._kv_overrides = None
        if options.kv_overrides:
            self._kv_overrides = kv_override_array(options.kv_overrides)
            mparams.kv_overrides = self._kv_overrides
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise BackendError(f"failed to load model file {path.name}: not a valid GGUF model")
        self.model: Any = model
        self.vocab: Any = llama_cpp.llama_model_get_vocab(model)

    def metadata(self) -> dict[str, str]:
        """Every GGUF metadata key/value as strings (arrays are summarised by llama.cpp),
        with the `kv_overrides` this model was loaded with in place of the file's values."""
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(4096)
        for i in range(int(llama_cpp.llama_model_meta_count(self.model))):
            n = llama_cpp.llama_model_meta_key_by_index(self.model, i, buf, len(buf))
            if n < 0:
                continue
            key = buf.value.decode("utf-8", "replace")
            n = llama_cpp.llama_model_meta_val_str_by_index(self.model, i, buf, len(buf))
            if n >= 0:
                out[key] = buf.value.decode("utf-8", "replace")
        for key, value in self._overrides:
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    def close(self) -> None:
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
