"""Human facts about a model from its metadata: family, size, quantization; and its size on
disk."""

from __future__ import annotations

import contextlib
from pathlib import Path

from inferd.models.checkpoint import find

# llama.cpp's llama_ftype values (general.file_type) by name
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
}


def disk_size(path: Path) -> int:
    """Bytes a model takes on disk: its GGUF file, or its Hugging Face checkpoint's files
    together (a folder, or an `org/repo` snapshot in the local HF cache); 0 if unreadable."""
    with contextlib.suppress(OSError):
        if path.is_file():
            return path.stat().st_size
        folder = find(str(path))
        if folder is not None:
            return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return 0


def quantization(metadata: dict[str, str]) -> str:
    try:
        return _FILE_TYPES.get(int(metadata.get("general.file_type", "")), "unknown")
    except ValueError:
        return "unknown"


def parameter_size(n_params: int) -> str:
    """135M, 1.5B, 70B: how model cards write it."""
    if n_params >= 1_000_000_000:
        return f"{n_params / 1e9:.1f}B".replace(".0B", "B")
    if n_params >= 1_000_000:
        return f"{n_params / 1e6:.0f}M"
    return str(n_params)


def family(metadata: dict[str, str]) -> str:
    return metadata.get("general.architecture", "unknown")


def model_info(metadata: dict[str, str], n_params: int) -> dict[str, object]:
    """Metadata for clients, without the tokenizer's vocabulary arrays."""
    out: dict[str, object] = {}
    for key, value in metadata.items():
        if key.startswith("tokenizer.ggml.") or key == "tokenizer.chat_template":
            continue
        out[key] = int(value) if value.isdigit() else value
    out["general.parameter_count"] = n_params
    return out
