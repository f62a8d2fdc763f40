"""What counts as a Hugging Face checkpoint, and the clear errors for what does not: checked
from headers, before a conversion starts (folders built here, no model needed)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from inferd.errors import InvalidCheckpoint, InvalidModelFile, UnsupportedArchitecture
from inferd.models import checkpoint
from tests.checkpoints import CONFIG, make, safetensors_bytes


def test_a_checkpoint_is_read_from_its_headers(tmp_path: Path) -> None:
    config = {**CONFIG, "architectures": ["MixtralForCausalLM"], "num_local_experts": 8}
    ckpt = checkpoint.inspect(make(tmp_path / "m", config={**config, "num_experts_per_tok": 2}))
    assert ckpt.architecture == "MixtralForCausalLM" and ckpt.gguf_architecture == "llama"
    assert ckpt.n_params == 8 * 4 + 4
    assert (ckpt.n_experts, ckpt.n_experts_used) == (8, 2)
    names = [p.name for p in ckpt.files]
    assert names == sorted(
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    )


@pytest.mark.parametrize(
    ("weights", "reason"),
    [
        (b"garbage, not a safetensors file at all" * 10, "header length is larger than the file"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", "header is not JSON"),
        (b"\x00\x00", "too short"),
        (safetensors_bytes({"w": ("F32", [64, 64])}, cut=100), "truncated"),
    ],
)
def test_garbage_or_truncated_weights_name_the_file(
    tmp_path: Path, weights: bytes, reason: str
) -> None:
    with pytest.raises(InvalidCheckpoint, match=reason) as exc:
        checkpoint.inspect(make(tmp_path / "ckpt", weights=weights))
    assert "model.safetensors" in exc.value.message
    assert isinstance(exc.value, InvalidModelFile)  # a failed model, a 400 over the API


def test_offsets_that_lie_about_the_shape_are_refused(tmp_path: Path) -> None:
    raw = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}).encode()
    weights = struct.pack("<Q", len(raw)) + raw + bytes(64)
    with pytest.raises(InvalidCheckpoint, match="offsets that do not match its shape"):
        checkpoint.inspect(make(tmp_path / "ckpt", weights=weights))


def test_an_unknown_architecture_is_named_with_the_supported_list(tmp_path: Path) -> None:
    folder = make(tmp_path / "ckpt", config={"architectures": ["TimeMachineForCausalLM"]})
    with pytest.raises(UnsupportedArchitecture) as exc:
        checkpoint.inspect(folder)
    assert "TimeMachineForCausalLM" in exc.value.message
    assert "LlamaForCausalLM" in exc.value.message and "MixtralForCausalLM" in exc.value.message
    assert exc.value.code == "unsupported_architecture"


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    no_tok = make(tmp_path / "no-tokenizer")
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(InvalidCheckpoint, match="has no tokenizer"):
        checkpoint.inspect(no_tok)
    no_weights = make(tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(InvalidCheckpoint, match="has no weights"):
        checkpoint.inspect(no_weights)
    no_config = make(tmp_path / "no-config")
    (no_config / "config.json").unlink()
    with pytest.raises(InvalidCheckpoint, match=r"has no config\.json"):
        checkpoint.inspect(no_config)
    bad_config = make(tmp_path / "bad-config")
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(InvalidCheckpoint, match="not valid JSON"):
        checkpoint.inspect(bad_config)
    with pytest.raises(InvalidCheckpoint, match="names no architecture"):
        checkpoint.inspect(make(tmp_path / "no-arch", config={"model_type": "llama"}))


def test_a_sentencepiece_tokenizer_counts(tmp_path: Path) -> None:
    folder = make(tmp_path / "sp")
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"\x0a")
    assert [p.name for p in checkpoint.inspect(folder).tokenizer] == [
        "tokenizer.model",
        "tokenizer_config.json",
    ]


def test_find_a_local_folder_or_a_repo_in_the_hf_cache(tmp_path: Path) -> None:
    local = make(tmp_path / "local")
    assert checkpoint.find(str(local)) == local
    hub = tmp_path / "hf" / "hub" / "models--org--tiny"
    old = make(hub / "snapshots" / "aaa")
    new = make(hub / "snapshots" / "bbb")
    env = {"HF_HOME": str(tmp_path / "hf")}
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("aaa\n")
    assert checkpoint.find("org/tiny", env) == old  # the snapshot refs/main names
    (hub / "refs" / "main").unlink()
    assert checkpoint.find("org/tiny", env) in {old, new}
    assert checkpoint.find("org/absent", env) is None  # never downloaded
    assert checkpoint.find("org/tiny:file.gguf", env) is None  # a GGUF spec, not a checkpoint
    assert checkpoint.find(str(tmp_path / "nowhere"), env) is None


def test_every_supported_architecture_is_one_the_converter_writes_as_listed() -> None:
    pytest.importorskip("conversion", reason="needs the hf extra: pip install 'inferd[hf]'")
    import gguf
    from conversion import get_model_class

    for hf_name, arch in checkpoint.SUPPORTED_ARCHITECTURES.items():
        assert gguf.MODEL_ARCH_NAMES[get_model_class(hf_name).model_arch] == arch, hf_name
