"""How backend options map to llama.cpp context parameters."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inferd.config import ModelConfig
from inferd.engine.backends.llamacpp import LlamaCppOptions, flash_attn_type


def test_flash_attention_is_off_on_cpu_and_auto_with_gpu_offload() -> None:
    assert flash_attn_type(LlamaCppOptions()) == 0
    assert flash_attn_type(LlamaCppOptions(n_gpu_layers=-1)) == -1
    assert flash_attn_type(LlamaCppOptions(n_gpu_layers=10)) == -1


@pytest.mark.parametrize(("choice", "value"), [("on", 1), ("off", 0), ("auto", -1)])
def test_an_explicit_flash_attention_choice_wins(choice: str, value: int) -> None:
    assert flash_attn_type(LlamaCppOptions(flash_attn=choice)) == value
    assert flash_attn_type(LlamaCppOptions(flash_attn=choice, n_gpu_layers=-1)) == value


def test_flash_attention_setting_is_validated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert ModelConfig(path=tmp_path / "m.gguf", flash_attn="on").flash_attn == "on"
    with pytest.raises(ValidationError, match="flash_attn"):
        ModelConfig(path=tmp_path / "m.gguf", flash_attn="fast")  # type: ignore[arg-type]
