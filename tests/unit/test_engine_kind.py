"""Which runtime serves a model (`models.engines.engine_kind`): the auto rules, and the
`backend` setting that overrides them."""

from __future__ import annotations

import json
from pathlib import Path

from inferd.config import ModelConfig
from inferd.models.engines import CHECKPOINT, LLAMACPP, TRANSFORMERS, engine_kind
from inferd.models.spec import ModelSpec


def spec(path: Path, **config: object) -> ModelSpec:
    return ModelSpec(path.name, path, ModelConfig(path=path, **config))  # type: ignore[arg-type]


def checkpoint(root: Path, architecture: str) -> Path:
    folder = root / architecture
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    return folder


def test_auto_rules(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    llama = checkpoint(tmp_path, "LlamaForCausalLM")
    other = checkpoint(tmp_path, "GPTNeoXForCausalLM")  # transformers runs it; no conversion
    asked: list[str] = []

    def cuda() -> bool:
        asked.append("cuda")
        return True

    assert engine_kind(spec(gguf)) == LLAMACPP
    assert engine_kind(spec(gguf), cuda=cuda) == LLAMACPP and asked == []  # a file: not asked
    assert engine_kind(spec(llama)) == CHECKPOINT  # converted for llama.cpp, on a CPU
    assert engine_kind(spec(llama), cuda=cuda) == TRANSFORMERS  # a CUDA device is present
    assert engine_kind(spec(other)) == TRANSFORMERS
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    assert engine_kind(spec(broken)) == CHECKPOINT  # its inspection says what is wrong


def test_the_backend_setting_wins(tmp_path: Path) -> None:
    llama = checkpoint(tmp_path, "LlamaForCausalLM")
    assert engine_kind(spec(llama, backend="transformers")) == TRANSFORMERS
    other = checkpoint(tmp_path, "GPTNeoXForCausalLM")
    assert engine_kind(spec(other, backend="llama.cpp"), cuda=lambda: True) == CHECKPOINT
