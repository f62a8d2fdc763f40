"""What a Hugging Face checkpoint is, checked before anything converts it.

A checkpoint is a folder with `config.json`, weights (`*.safetensors`, else `pytorch_model*.bin`)
and tokenizer files: a local folder, or a repo id (`org/repo`) whose snapshot is in the local
Hugging Face cache (`HF_HOME` / `HF_HUB_CACHE` honoured; nothing is ever downloaded).

`inspect` reads only headers: the config, and each safetensors file's JSON header, checked
against the file's size, so garbage, a truncated download or a config that lies about its
architecture fails here with the reason, in milliseconds, not minutes into a conversion.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferd.errors import InvalidCheckpoint, UnsupportedArchitecture
from inferd.models.hf_cache import hub_dir

# Hugging Face architecture -> the llama.cpp architecture its conversion loads as: the ones
# the pinned converter writes and the pinned llama.cpp serves (Llama, Mixtral and Qwen2-MoE
# are tested end to end).
SUPPORTED_ARCHITECTURES: Mapping[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "MixtralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3moe",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Phi3ForCausalLM": "phi3",
    "StableLmForCausalLM": "stablelm",
    "Starcoder2ForCausalLM": "starcoder2",
    "OlmoForCausalLM": "olmo",
    "GraniteForCausalLM": "granite",
}

CONFIG = "config.json"
# a tokenizer the converter can read: a fast tokenizer, a SentencePiece model, or BPE files
_TOKENIZERS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))
_TOKENIZER_EXTRAS = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on its JSON header
# bytes per element of each safetensors dtype
_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
# config keys for the expert counts, by family (Mixtral, Qwen-MoE, others)
_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_EXPERTS_USED = ("num_experts_per_tok", "moe_top_k", "num_experts_per_token")


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # the folder
    architecture: str  # the Hugging Face class, e.g. "MixtralForCausalLM"
    model_type: str
    weights: tuple[Path, ...]
    tokenizer: tuple[Path, ...]  # tokenizer, chat template and generation files present
    n_params: int  # from the safetensors headers; for .bin files, an upper bound
    n_experts: int = 0  # 0: a dense model
    n_experts_used: int = 0

    @property
    def gguf_architecture(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.architecture]

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file a conversion reads: what keys the conversion cache."""
        return tuple(sorted({self.path / CONFIG, *self.weights, *self.tokenizer}))


def is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def find(text: str, env: Mapping[str, str] | None = None) -> Path | None:
    """The checkpoint folder `text` names: a local folder with a config.json, or an `org/repo`
    snapshot in the local Hugging Face cache (the one `refs/main` names, else the newest).
    None when it names neither, so a caller can try other kinds of spec."""
    path = Path(text).expanduser()
    if is_checkpoint_dir(path):
        return path
    if path.exists() or not _REPO_ID.match(text) or ".." in text:
        return None
    root = hub_dir(env) / ("models--" + text.replace("/", "--"))
    snapshots = root / "snapshots"
    candidates: list[Path] = []
    ref = root / "refs" / "main"
    if ref.is_file():
        candidates.append(snapshots / ref.read_text().strip())
    if snapshots.is_dir():
        candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((c for c in candidates if is_checkpoint_dir(c)), None)


def inspect(path: Path, *, convertible: bool = True) -> Checkpoint:
    """The checkpoint in folder `path`, checked (with `convertible`, that its architecture
    converts to GGUF). Raises InvalidCheckpoint (or UnsupportedArchitecture) naming what is
    wrong."""
    config = _read_config(path)
    architecture = _architecture(path, config, convertible)
    weights = _weights(path)
    if weights[0].suffix == ".safetensors":
        n_params = sum(_safetensors_params(w) for w in weights)
    else:  # a pickle: no cheap header; at least 16 bits a weight
        n_params = sum(w.stat().st_size for w in weights) // 2
    return Checkpoint(
        path=path,
        architecture=architecture,
        model_type=str(config.get("model_type", "")),
        weights=weights,
        tokenizer=_tokenizer(path),
        n_params=n_params,
        n_experts=_first_int(config, _EXPERTS),
        n_experts_used=_first_int(config, _EXPERTS_USED),
    )


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise InvalidCheckpoint(f"{path} is not a folder")
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidCheckpoint(
            f"{path.name} has no {CONFIG}: not a Hugging Face checkpoint"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidCheckpoint(f"{path.name}/{CONFIG} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidCheckpoint(f"{path.name}/{CONFIG} is not a JSON object")
    return config


def _architecture(path: Path, config: Mapping[str, Any], convertible: bool) -> str:
    architectures = config.get("architectures")
    if not (isinstance(architectures, list) and architectures and architectures[0]):
        raise InvalidCheckpoint(f"{path.name}/{CONFIG} names no architecture ('architectures')")
    name = str(architectures[0])
    if convertible and name not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
        raise UnsupportedArchitecture(
            f"{path.name}: architecture {name} is not supported for conversion; "
            f"supported: {supported}"
        )
    return name


def _weights(path: Path) -> tuple[Path, ...]:
    found = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not found:
        raise InvalidCheckpoint(f"{path.name} has no weights (*.safetensors or pytorch_model*.bin)")
    return tuple(found)


def _tokenizer(path: Path) -> tuple[Path, ...]:
    if not any(all((path / f).is_file() for f in group) for group in _TOKENIZERS):
        wanted = " or ".join(" + ".join(group) for group in _TOKENIZERS)
        raise InvalidCheckpoint(f"{path.name} has no tokenizer ({wanted})")
    names = {f for group in _TOKENIZERS for f in group} | set(_TOKENIZER_EXTRAS)
    return tuple(sorted(path / f for f in names if (path / f).is_file()))


def _safetensors_params(file: Path) -> int:
    """The element count of a safetensors file, from its header, which must fit the file."""

    def bad(why: str) -> InvalidCheckpoint:
        return InvalidCheckpoint(
            f"{file.parent.name}/{file.name} is not a valid safetensors file: {why}"
        )

    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("it is too short")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise bad("its header length is larger than the file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data = size - 8 - n
    end, count = 0, 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = tensor["dtype"], tensor["shape"], tensor["data_offsets"]
            elements = math.prod(int(d) for d in shape)
            width = _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r} has a malformed entry") from None
        if not 0 <= start <= stop or stop - start != elements * width:
            raise bad(f"tensor {name!r} has offsets that do not match its shape")
        end, count = max(end, stop), count + elements
    if end > data:
        raise bad(f"it is truncated ({data} bytes of tensor data, {end} expected)")
    return count


def _first_int(config: Mapping[str, Any], keys: tuple[str, ...]) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 0
