"""llama.cpp through llama-cpp-python's low-level ctypes API: the only module that imports it."""

from __future__ import annotations

import ctypes
import logging
import os
import random
import threading
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_grammar as llama_grammar
import numpy as np

from inferd.engine.backends.base import BackendInfo
from inferd.engine.backends.numpy_sampling import RowSampler
from inferd.engine.types import SamplingParams
from inferd.errors import BackendError, EngineStopped, InvalidRequest

log = logging.getLogger(__name__)

_INIT_LOCK = threading.Lock()

# llama_token_data as a numpy record, to fill a vocabulary of candidates without a loop
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
# compiled grammars kept per backend, by JSON schema text
_GRAMMAR_CACHE = 64
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
    # Flash attention: None picks off on CPU (llama.cpp's CPU kernel made a decode step at a
    # 2,000-token context 2x slower and a mixed prompt+decode step up to 3x slower, measured
    # with 0.3.36) and auto with GPU offload; otherwise "on", "off" or "auto".
    flash_attn: str | None = None
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
    # GGUF metadata overridden at load: (key, bool | int | float | str) pairs
    kv_overrides: tuple[tuple[str, bool | int | float | str], ...] = ()
    verbose: bool = False


_FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


def flash_attn_type(options: LlamaCppOptions) -> int:
    """llama.cpp's flash_attn_type for these options (the default is explained above)."""
    choice = options.flash_attn or ("auto" if options.n_gpu_layers else "off")
    return _FLASH_ATTN[choice]


def _context_params(
    *, split: bool, cells: int, batch: int, seqs: int, threads: int, flash_attn: int
) -> Any:
    """llama.cpp context parameters as inferd uses them: a KV cache of `cells` (unified, or
    split into one stream per sequence), one `batch`-token micro-batch per decode, `seqs`
    sequence ids, no perf counters."""
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cells
    cparams.n_batch = batch
    cparams.n_ubatch = batch
    cparams.n_seq_max = seqs
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.kv_unified = not split
    cparams.flash_attn_type = flash_attn
    cparams.no_perf = True
    return cparams


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
    cell_bytes = _cell_bytes(n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, n_embd=n_embd)
    return plan_kv(options, n_ctx_train=n_ctx_train, cell_bytes=cell_bytes).cells * cell_bytes


def host_ram_bytes() -> int:
    """Physical memory of this host (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def kv_cell_bytes(model: Any) -> int:
    """Bytes of one KV cell (K and V of every layer, f16) for this model: an estimate that
    takes a head's size as n_embd / n_head, as most architectures do."""
    return _cell_bytes(
        n_layer=int(llama_cpp.llama_model_n_layer(model)),
        n_head=max(1, int(llama_cpp.llama_model_n_head(model))),
        n_head_kv=int(llama_cpp.llama_model_n_head_kv(model)),
        n_embd=int(llama_cpp.llama_model_n_embd(model)),
    )


def _cell_bytes(*, n_layer: int, n_head: int, n_head_kv: int, n_embd: int) -> int:
    """K and V of every layer, f16."""
    return n_layer * 2 * n_head_kv * (n_embd // n_head) * 2


def default_kv_cells(n_ctx: int, max_seqs: int) -> int:
    """Enough for every slot to hold a typical conversation, and one full window at least."""
    return max(n_ctx, min(n_ctx * max_seqs, 1024 * max_seqs))


def _kv_override_array(overrides: Sequence[tuple[str, bool | int | float | str]]) -> Any:
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


def _penalized(params: SamplingParams) -> bool:
    """Repetition, presence or frequency penalties: a sampler that keeps the tokens it saw."""
    return (
        params.repetition_penalty != 1.0
        or params.presence_penalty != 0.0
        or params.frequency_penalty != 0.0
    )


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


def _row_logits(ctx: Any, row: int, n_vocab: int) -> np.ndarray:
    """A batch row's logits, a view into llama.cpp's buffer (valid until the next decode)."""
    ptr = llama_cpp.llama_get_logits_ith(ctx, row)
    if not ptr:
        raise BackendError(f"no logits for batch row {row}")
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,))


class NumpySampler:
    """Sampling without penalties or a grammar, in numpy over the row's logits in place
    (`numpy_sampling.RowSampler`: logit bias, top-k, top-p, min-p, temperature, a seeded draw;
    greedy is an argmax). llama.cpp's chain copies the whole vocabulary into a candidates
    array for every token and sorts it for top-p: after a 16-sequence decode ~0.14 ms a row
    for greedy, 0.31 ms at a temperature, 1.4 ms with top_p 0.95 alone; the numpy sampler
    keeps no state but its random generator, so there is nothing to accept."""

    __slots__ = ("_ctx", "_n_vocab", "_rows")

    def __init__(self, ctx: Any, n_vocab: int, rows: RowSampler) -> None:
        self._ctx = ctx
        self._n_vocab = n_vocab
        self._rows = rows

    def logits(self, row: int) -> np.ndarray:
        return _row_logits(self._ctx, row, self._n_vocab)

    def sample(self, row: int) -> int:
        return self._rows.sample(self.logits(row))

    def candidates(self, row: int) -> list[int]:
        """The token ids top-k, top-p and min-p keep on this row (for tests)."""
        return sorted(int(t) for t in self._rows.candidates(self.logits(row)))

    def close(self) -> None:
        pass


class LlamaCppSampler:
    """A llama.cpp sampler chain: penalties, logit bias, top-k/p, min-p, temperature, dist.

    With a grammar (structured output) it samples as llama.cpp's own `common_sampler` does:
    the chain picks a token from the unconstrained candidates and the grammar only checks
    that one token; only when the grammar rejects it are all candidates masked by the
    grammar and the chain applied again. Masking the whole vocabulary on every token costs
    ~12-19 ms with SmolLM2's 49,152 tokens, more than the decode step itself.
    """

    __slots__ = ("_cands", "_chain", "_ctx", "_data", "_grammar", "_ids", "_n_vocab")

    def __init__(self, chain: Any, ctx: Any, grammar: Any = None, n_vocab: int = 0) -> None:
        self._chain = chain
        self._ctx = ctx
        self._grammar = grammar
        self._n_vocab = n_vocab
        if grammar is not None:
            self._ids = np.arange(n_vocab, dtype=np.int32)
            self._cands = np.zeros(n_vocab, dtype=_TOKEN_DATA)
            self._data = self._cands.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))

    def sample(self, row: int) -> int:
        if self._grammar is None:
            return int(llama_cpp.llama_sampler_sample(self._chain, self._ctx, row))
        logits = _row_logits(self._ctx, row, self._n_vocab)
        token = self._pick(logits, constrained=False)
        one = llama_cpp.llama_token_data(token, 1.0, 0.0)
        single = llama_cpp.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(single))
        if one.logit == float("-inf"):
            token = self._pick(logits, constrained=True)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def _pick(self, logits: Any, *, constrained: bool) -> int:
        cands = self._cands
        cands["id"] = self._ids
        cands["logit"] = logits
        cands["p"] = 0.0
        # a new array header each time: samplers shrink it and may repoint its data
        arr = llama_cpp.llama_token_data_array(self._data, self._n_vocab, -1, False)
        if constrained:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            raise BackendError("the sampler selected no token")
        return int(arr.data[arr.selected].id)

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None


class LlamaCppBackend:
    """One model, one context with a unified KV cache shared by `max_seqs` sequences."""

    def __init__(self, path: Path, options: LlamaCppOptions) -> None:
        logging.getLogger("llama-cpp-python").setLevel(
            logging.DEBUG if options.verbose else logging.ERROR
        )
        with _INIT_LOCK:
            llama_cpp.llama_backend_init()
        self._model = None
        self._ctx = None
        self._batch = None
        self._embedder: _Embedder | None = None
        self._embed_lock = threading.Lock()
        self._grammars: dict[str, str] = {}
        self._grammar_lock = threading.Lock()
        self._options = options
        if not path.is_file():
            raise BackendError(f"model file not found: {path.name}")
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = options.n_gpu_layers
        mparams.use_extra_bufts = options.extra_buffers
        progress = _LoadProgress(path.name)
        mparams.progress_callback = progress.callback
        # kept for the model's lifetime, as llama-cpp-python's Llama does
        self._kv_overrides = None
        if options.kv_overrides:
            self._kv_overrides = _kv_override_array(options.kv_overrides)
            mparams.kv_overrides = self._kv_overrides
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise BackendError(f"failed to load model file {path.name}: not a valid GGUF model")
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        cell_bytes = kv_cell_bytes(model)
        n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
        kv = plan_kv(options, n_ctx_train=n_ctx_train, cell_bytes=cell_bytes)
        n_ctx, max_seqs, split, kv_cells = kv.n_ctx, kv.max_seqs, kv.split, kv.cells
        n_threads = options.n_threads or max(1, os.cpu_count() or 1)
        self._n_threads = n_threads

        n_batch = max(options.n_batch or (512 if options.n_gpu_layers else 128), options.max_seqs)
        cparams = _context_params(
            split=split,
            cells=kv_cells,
            batch=n_batch,
            seqs=max_seqs,
            threads=n_threads,
            flash_attn=flash_attn_type(options),
        )
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            self.close()
            raise BackendError(f"failed to create a llama.cpp context for {path.name}")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._eog = [
            t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t)
        ]
        self._eog_set = frozenset(self._eog)
        self._ones = array("i", [1]) * n_batch
        self._piece_buf = ctypes.create_string_buffer(256)
        template = llama_cpp.llama_model_chat_template(model, None)
        self._split = split
        if self._split:  # a sequence never holds more than its stream's cells
            n_ctx = min(n_ctx, int(llama_cpp.llama_n_ctx_seq(ctx)))
        self.info = BackendInfo(
            n_vocab=self._n_vocab,
            n_ctx=n_ctx,
            kv_cells=int(llama_cpp.llama_n_ctx(ctx)),
            kv_split=self._split,
            kv_cell_bytes=cell_bytes,
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
            n_embd=int(llama_cpp.llama_model_n_embd_out(model)),
            n_ctx_embed=min(options.n_ctx_embed, n_ctx),
            fim_pre=int(llama_cpp.llama_vocab_fim_pre(self._vocab)),
            fim_suf=int(llama_cpp.llama_vocab_fim_suf(self._vocab)),
            fim_mid=int(llama_cpp.llama_vocab_fim_mid(self._vocab)),
        )

    # ---- metadata -------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        """Every GGUF metadata key/value as strings (arrays are summarised by llama.cpp),
        with the `kv_overrides` this model was loaded with in place of the file's values."""
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(4096)
        for i in range(int(llama_cpp.llama_model_meta_count(self._model))):
            n = llama_cpp.llama_model_meta_key_by_index(self._model, i, buf, len(buf))
            if n < 0:
                continue
            key = buf.value.decode("utf-8", "replace")
            n = llama_cpp.llama_model_meta_val_str_by_index(self._model, i, buf, len(buf))
            if n >= 0:
                out[key] = buf.value.decode("utf-8", "replace")
        for key, value in self._options.kv_overrides:
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    # ---- tokenizer ------------------------------------------------------------------------

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, True)
        return self._piece_buf.raw[: max(n, 0)].decode("utf-8", "replace")

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
        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:  # piece longer than the buffer: ask again with the size llama.cpp wants
            big = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, big, -n, 0, False)
            return big.raw[:n]
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return token in self._eog_set

    # ---- sampling -------------------------------------------------------------------------

    def _grammar(self, params: SamplingParams) -> str | None:
        """GBNF for structured output (JSON schemas compiled once, then cached)."""
        if params.json_schema is None:
            return llama_grammar.JSON_GBNF if params.json_mode else None
        key = params.json_schema
        with self._grammar_lock:  # the core thread and request threads share the cache
            gbnf = self._grammars.get(key)
        if gbnf is None:
            try:
                gbnf = llama_grammar.json_schema_to_gbnf(key)
            except Exception as exc:  # the converter raises ValueError, AssertionError, ...
                # the converter names the schema's document "stdin"
                detail = str(exc).replace("stdin#", "#")[:200] or type(exc).__name__
                raise InvalidRequest(
                    f"the JSON schema cannot be used for structured output: {detail}"
                ) from None
            with self._grammar_lock:
                if len(self._grammars) >= _GRAMMAR_CACHE:
                    self._grammars.pop(next(iter(self._grammars)), None)
                self._grammars[key] = gbnf
        return gbnf

    def check_sampling(self, params: SamplingParams) -> None:
        grammar = self._grammar(params)
        if grammar is None:
            return
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            raise InvalidRequest("the JSON schema cannot be used for structured output")
        llama_cpp.llama_sampler_free(sampler)

    def _bias(self, params: SamplingParams) -> list[tuple[int, float]]:
        """The request's logit bias, with every end-of-generation token banned for ignore_eos."""
        bias = list(params.logit_bias)
        if params.ignore_eos:
            bias.extend((t, float("-inf")) for t in self._eog)
        return bias

    def _filter_chain(self, params: SamplingParams, bias: Sequence[tuple[int, float]]) -> Any:
        """A llama.cpp sampler chain up to the draw: penalties, logit bias, then (sampling at
        a temperature) top-k, top-p, min-p."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if _penalized(params):
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    self._n_vocab,
                    params.penalty_last_n,
                    params.repetition_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if bias:
            arr = (llama_cpp.llama_logit_bias * len(bias))(
                *(llama_cpp.llama_logit_bias(t, b) for t, b in bias)
            )
            add(chain, llama_cpp.llama_sampler_init_logit_bias(self._n_vocab, len(bias), arr))
        if not params.greedy:
            if params.top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        return chain

    def new_sampler(
        self, params: SamplingParams, *, llama_chain: bool = False
    ) -> LlamaCppSampler | NumpySampler:
        """A sampler for one sequence. Without penalties (they keep state) or a grammar, a
        numpy sampler over the logits row; anything else, or `llama_chain`, a llama.cpp
        sampler chain (the benchmark ceiling samples with llama.cpp's own, and tests compare
        the two)."""
        bias = self._bias(params)
        if not _penalized(params) and not params.constrained and not llama_chain:
            return NumpySampler(self._ctx, self._n_vocab, RowSampler(params, bias))
        chain = self._filter_chain(params, bias)
        add = llama_cpp.llama_sampler_chain_add
        if params.greedy:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        grammar = self._grammar(params)
        if grammar is None:
            return LlamaCppSampler(chain, self._ctx)
        constraint = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not constraint:
            llama_cpp.llama_sampler_free(chain)
            raise BackendError("the grammar for structured output failed to load")
        return LlamaCppSampler(chain, self._ctx, constraint, self._n_vocab)

    def chain_candidates(self, params: SamplingParams, row: int) -> list[int]:
        """The token ids llama.cpp's own logit-bias, top-k, top-p and min-p samplers keep on
        a batch row, without a draw (tests hold the numpy sampler to it)."""
        cands = np.zeros(self._n_vocab, dtype=_TOKEN_DATA)
        cands["id"] = np.arange(self._n_vocab, dtype=np.int32)
        cands["logit"] = _row_logits(self._ctx, row, self._n_vocab)
        data = cands.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        arr = llama_cpp.llama_token_data_array(data, self._n_vocab, -1, False)
        chain = self._filter_chain(params, self._bias(params))
        try:
            llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
            return sorted(int(arr.data[i].id) for i in range(arr.size))
        finally:
            llama_cpp.llama_sampler_free(chain)

    # ---- the step -------------------------------------------------------------------------

    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seq_ids: Sequence[int],
        logits: Sequence[bool],
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
        if not self._split:
            self._seq_cp(src, dst, 0, n)
            return True
        # Streams share no cells, and llama.cpp copies between streams only whole (a partial
        # seq_cp aborts the process): copy src's state, then keep its first n positions.
        if not self._copy_state(src, dst):
            return False
        self.trim_seq(dst, n)
        return True

    def _seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        """The one call of llama_memory_seq_cp: between streams llama.cpp copies only whole
        sequences and aborts the process on a range, so a range in split mode is an error here."""
        if self._split and (p0, p1) != (-1, -1):
            raise BackendError(f"a partial copy of sequence {src} to {dst} across KV streams")
        llama_cpp.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

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

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        with self._embed_lock:
            if self._model is None:
                raise EngineStopped("the model was unloaded")
            if self._embedder is None:
                self._embedder = _Embedder(
                    self._model, self.info, self._pooling(), self._options, self._n_threads
                )
            return self._embedder.embed(inputs)

    def _pooling(self) -> int:
        """The pooling the model declares for embeddings; the mean when it declares none."""
        meta = self.metadata()
        declared = meta.get(f"{meta.get('general.architecture', '')}.pooling_type", "")
        pooling = int(declared) if declared.isdigit() else -1
        return pooling if pooling in _POOLINGS else llama_cpp.LLAMA_POOLING_TYPE_MEAN

    def close(self) -> None:
        with self._embed_lock:
            if self._embedder is not None:
                self._embedder.close()
                self._embedder = None
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None


class _Embedder:
    """A second llama.cpp context on the same loaded weights, computing pooled embeddings.

    Its window is `info.embed_limit` tokens and every decode holds whole inputs
    (a pooled sequence must not span micro-batches): inputs are packed, in order, into
    decodes of at most `n_ctx` tokens and `_EMBED_SEQS` sequences. Not thread-safe: the
    backend serializes calls.
    """

    def __init__(
        self, model: Any, info: BackendInfo, pooling: int, options: LlamaCppOptions, threads: int
    ) -> None:
        n_ctx = info.embed_limit
        cparams = _context_params(  # whole inputs packed into one decode: one stream
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
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
