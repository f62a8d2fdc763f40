"""What a transformers model is loaded with (`TorchOptions`), and the memory it will take,
estimated from its config and its safetensors headers without importing torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferd.errors import InvalidCheckpoint

# KV positions per block of the paged cache
BLOCK_SIZE = 16
# bytes per element of each dtype a model may be loaded in
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class TorchOptions:
    n_ctx: int = 4096
    max_seqs: int = 16
    kv_cells: int | None = None  # KV positions in all (default: as llama.cpp's unified cache)
    n_batch: int | None = None  # tokens per step (default 128 on a CPU, 512 on a GPU)
    prefill_per_decode: int | None = None
    n_ctx_embed: int = 2048
    n_threads: int | None = None
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto
    device: str = "cpu"  # cpu, cuda, cuda:1, ...
    trust_remote_code: bool = False

    @property
    def on_gpu(self) -> bool:
        return not self.device.startswith("cpu")

    def dtype_name(self, *, bf16: bool = True) -> str:
        """The dtype the weights and the KV cache are held in. auto: float32 on a CPU (exact,
        and what the greedy tests compare against); on a GPU bfloat16 where it is supported
        (`bf16`), else float16."""
        if self.dtype != "auto":
            return self.dtype
        if not self.on_gpu:
            return "float32"
        return "bfloat16" if bf16 else "float16"

    @property
    def batch_tokens(self) -> int:
        return max(self.n_batch or (512 if self.on_gpu else 128), self.max_seqs)


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidCheckpoint(f"{folder.name}: no readable config.json ({exc})") from None
    if not isinstance(config, dict):
        raise InvalidCheckpoint(f"{folder.name}/config.json is not a JSON object")
    return config


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config (multimodal configs nest it)."""
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) else config


@dataclass(frozen=True)
class KvShape:
    """What one KV position holds: K and V for every attention layer."""

    n_layer: int
    n_head_kv: int
    head_dim: int

    @classmethod
    def of(cls, config: dict[str, Any]) -> KvShape:
        c = text_config(config)
        try:
            n_head = int(c["num_attention_heads"])
            head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // n_head)
            return cls(
                n_layer=int(c["num_hidden_layers"]),
                n_head_kv=int(c.get("num_key_value_heads") or n_head),
                head_dim=head_dim,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidCheckpoint(f"config.json lacks the attention shape ({exc})") from None

    def position_bytes(self, dtype: str) -> int:
        return self.n_layer * 2 * self.n_head_kv * self.head_dim * DTYPE_BYTES[dtype]


# sentence-transformers' pooling modes (its Pooling module's config) this backend pools by
_POOLING_MODES = {
    "pooling_mode_lasttoken": "last",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
}


def pooling(folder: Path) -> str:
    """How a checkpoint pools its hidden states into one embedding: what its
    sentence-transformers Pooling module says (`modules.json`, then that module's
    `config.json`): `last` token, `cls` (first) token or `mean`; `mean` when it says nothing
    or something else (max pooling, weighted means)."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        where = next(
            m["path"] for m in modules if str(m.get("type", "")).endswith("models.Pooling")
        )
        config = json.loads((folder / where / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, KeyError, StopIteration, AttributeError):
        return "mean"
    if not isinstance(config, dict):
        return "mean"
    return next((mode for key, mode in _POOLING_MODES.items() if config.get(key)), "mean")


def context_length(config: dict[str, Any], options: TorchOptions) -> int:
    trained = int(text_config(config).get("max_position_embeddings") or 0)
    return min(options.n_ctx, trained) if trained > 0 else options.n_ctx


def kv_positions(options: TorchOptions, n_ctx: int) -> int:
    """KV positions of the paged cache, in whole blocks: the configured kv_cells, else enough
    for every sequence to hold a typical conversation and one full window at least (the rule
    of llama.cpp's unified cache)."""
    positions = options.kv_cells or max(
        n_ctx, min(n_ctx * options.max_seqs, 1024 * options.max_seqs)
    )
    return -(-max(positions, n_ctx) // BLOCK_SIZE) * BLOCK_SIZE


def estimate_memory(folder: Path, options: TorchOptions, n_params: int) -> int:
    """Bytes a checkpoint will take once loaded in these options: its parameters in the dtype
    asked for, and its paged KV cache. Read from config.json only (`n_params` from the
    safetensors headers)."""
    config = read_config(folder)
    dtype = options.dtype_name()
    n_ctx = context_length(config, options)
    return n_params * DTYPE_BYTES[dtype] + kv_positions(options, n_ctx) * KvShape.of(
        config
    ).position_bytes(dtype)
