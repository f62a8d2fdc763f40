"""The GGUF header reader: real metadata from the bundled file, clean errors for garbage."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from inferd.errors import InvalidModelFile
from inferd.models.gguf_header import read_header


def test_reads_the_bundled_models_header(model_path: Path) -> None:
    h = read_header(model_path)
    assert h.version == 3
    assert h.metadata["general.architecture"] == "llama"
    assert h.metadata["llama.context_length"] == "8192"
    assert h.metadata["llama.block_count"] == "30"
    assert h.metadata["tokenizer.ggml.add_bos_token"] == "false"
    assert h.array_lengths["tokenizer.ggml.tokens"] == 49152
    assert h.tensor_count == 272
    assert h.n_params == 134_515_008  # SmolLM2-135M


def _header(version: int = 3, tensors: int = 0, kvs: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kvs)


def _kv_string(key: bytes, value: bytes) -> bytes:
    return (
        struct.pack("<Q", len(key))
        + key
        + struct.pack("<I", 8)
        + struct.pack("<Q", len(value))
        + value
    )


def test_a_minimal_valid_file(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    p.write_bytes(_header(kvs=1) + _kv_string(b"general.architecture", b"llama"))
    assert read_header(p).metadata == {"general.architecture": "llama"}


def _garbage(model_path: Path) -> dict[str, bytes]:
    real = model_path.read_bytes()[:4096]
    key = b"general.architecture"
    return {
        "empty": b"",
        "text": b"this is not a model at all, just some text\n" * 10,
        "wrong magic": b"GGML" + real[4:],
        "version 1": _header(version=1) + b"\0" * 64,
        "version 99": _header(version=99) + b"\0" * 64,
        "truncated": real[:1000],
        "absurd kv count": _header(kvs=2**62) + b"\0" * 64,
        "absurd tensor count": _header(tensors=2**63) + b"\0" * 64,
        "absurd key length": _header(kvs=1) + struct.pack("<Q", 2**60) + b"\0" * 64,
        "unknown value type": _header(kvs=1)
        + struct.pack("<Q", len(key))
        + key
        + struct.pack("<I", 77)
        + b"\0" * 64,
        "absurd array": _header(kvs=1)
        + struct.pack("<Q", len(key))
        + key
        + struct.pack("<IIQ", 9, 4, 2**61)
        + b"\0" * 64,
        "huge dims": _header(tensors=1)
        + struct.pack("<Q", 1)
        + b"t"
        + struct.pack("<I", 10_000)
        + b"\0" * 64,
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "text",
        "wrong magic",
        "version 1",
        "version 99",
        "truncated",
        "absurd kv count",
        "absurd tensor count",
        "absurd key length",
        "unknown value type",
        "absurd array",
        "huge dims",
    ],
)
def test_garbage_is_rejected_cleanly(case: str, tmp_path: Path, model_path: Path) -> None:
    p = tmp_path / "bad.gguf"
    p.write_bytes(_garbage(model_path)[case])
    with pytest.raises(InvalidModelFile, match=r"bad\.gguf is not a valid GGUF file") as err:
        read_header(p)
    assert str(tmp_path) not in err.value.message  # no absolute paths


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFile, match=r"model file not found: nope\.gguf"):
        read_header(tmp_path / "nope.gguf")
