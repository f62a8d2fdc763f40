"""How backend options map to llama.cpp context parameters."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inferd.config import ModelConfig
from inferd.engine.backends.llamacpp import LlamaCppOptions, choose_split, flash_attn_type


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


GIB = 1 << 30


def _split(options: LlamaCppOptions, *, cell_bytes: int = 23_040, ram: int = 24 * GIB) -> bool:
    return choose_split(
        options,
        n_ctx=options.n_ctx,
        max_seqs=options.max_seqs,
        cell_bytes=cell_bytes,
        ram_bytes=ram,
    )


def test_the_kv_cache_is_split_by_default_when_every_slot_fits_an_eighth_of_memory() -> None:
    # SmolLM2-135M: 16 x 4096 cells x 23 KB = 1.5 GB of 24 GiB
    assert _split(LlamaCppOptions()) is True
    # an 8B model with grouped-query attention (128 KB a cell): 8.6 GB, shared instead
    assert _split(LlamaCppOptions(), cell_bytes=131_072) is False
    # the bound itself: 16 x 4096 x 23,040 bytes = 1.51e9, an eighth of 12.08e9
    assert _split(LlamaCppOptions(), ram=12_080_000_000) is True
    assert _split(LlamaCppOptions(), ram=12_079_000_000) is False
    # a host that does not say how much memory it has: shared
    assert _split(LlamaCppOptions(), ram=0) is False


def test_the_automatic_layout_is_shared_for_a_sized_pool_a_gpu_or_one_slot() -> None:
    assert _split(LlamaCppOptions(kv_cells=4096)) is False
    assert _split(LlamaCppOptions(n_gpu_layers=-1)) is False
    assert _split(LlamaCppOptions(max_seqs=1)) is False


@pytest.mark.parametrize("choice", [True, False])
def test_an_explicit_kv_layout_wins(choice: bool) -> None:
    assert _split(LlamaCppOptions(kv_split=choice)) is choice
    assert _split(LlamaCppOptions(kv_split=choice, kv_cells=4096, n_gpu_layers=-1)) is choice
    assert _split(LlamaCppOptions(kv_split=choice), cell_bytes=10**9, ram=0) is choice


def test_kv_split_setting_defaults_to_automatic(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert ModelConfig(path=tmp_path / "m.gguf").kv_split is None
    assert ModelConfig(path=tmp_path / "m.gguf", kv_split=True).kv_split is True
    with pytest.raises(ValidationError, match="kv_split"):
        ModelConfig(path=tmp_path / "m.gguf", kv_split="sometimes")  # type: ignore[arg-type]
