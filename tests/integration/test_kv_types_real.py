"""KV cache element types on the real backend: quantized K and V take the memory the
types say, a quantized V turns flash attention on, and a model with a quantized cache
answers, and answers the same from a saved prefix restored in its quantized form. (Its
greedy answer is not that of an f16 cache: q8_0 with flash attention drifted from it
after ten tokens on the bundled model.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.config import ModelConfig
from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions
from inferd.engine.backends.llamacpp.options import KV_TYPES, cell_bytes_of, flash_attn_type
from inferd.engine.client import AsyncEngine
from inferd.engine.types import GenerateRequest, SamplingParams
from inferd.models.loading import llamacpp_loader, llamacpp_options
from tests.conftest import bundled_spec, wait_for

PROMPT = (
    "<|im_start|>user\nName three rivers in Europe and one fact about each.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_cell_bytes_follow_the_types() -> None:
    shape = {"n_layer": 30, "n_head": 9, "n_head_kv": 3, "n_embd": 576}
    f16 = cell_bytes_of(**shape, type_k="f16", type_v="f16")
    assert f16 == 30 * 3 * 64 * 2 * 2  # SmolLM2-135M: 23,040 bytes a cell
    assert cell_bytes_of(**shape, type_k="q8_0", type_v="q8_0") == f16 * 34 // 64
    assert cell_bytes_of(**shape, type_k="q4_0", type_v="f16") == f16 // 2 + f16 * 18 // 128


def test_a_quantized_v_cache_needs_flash_attention() -> None:
    assert flash_attn_type(LlamaCppOptions()) == 0  # off on a CPU by default
    assert flash_attn_type(LlamaCppOptions(cache_type_v="q8_0")) == 1
    assert flash_attn_type(LlamaCppOptions(cache_type_k="q8_0")) == 0  # K alone: no need
    assert flash_attn_type(LlamaCppOptions(cache_type_v="q4_0", flash_attn="auto")) == -1
    with pytest.raises(ValueError, match="cache_type_v = 'q4_0' needs flash attention"):
        ModelConfig(path=Path("m.gguf"), cache_type_v="q4_0", flash_attn="off")
    with pytest.raises(ValueError, match="cache_type_k"):
        ModelConfig(path=Path("m.gguf"), cache_type_k="q3_k")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_the_backend_allocates_the_quantized_cache(model_path: Path, kind: str) -> None:
    spec = bundled_spec(model_path, max_seqs=2, cache_type_k=kind, cache_type_v=kind)
    options = llamacpp_options(spec)
    backend = LlamaCppBackend(model_path, options)
    f16 = LlamaCppBackend(model_path, llamacpp_options(bundled_spec(model_path, max_seqs=2)))
    try:
        facts, base = backend.facts(), f16.facts()
        assert facts["kv_cells"] == base["kv_cells"]
        ratio = KV_TYPES[kind].block_bytes / KV_TYPES[kind].block_values / 2
        assert facts["kv_cell_bytes"] == int(base["kv_cell_bytes"] * ratio)
        assert backend.info.kv_bytes < f16.info.kv_bytes
    finally:
        backend.close()
        f16.close()


async def greedy(engine: AsyncEngine, rid: str, n: int = 16) -> tuple[str, int]:
    prompt = tuple(await engine.tokenize(PROMPT))
    req = GenerateRequest(rid, prompt, SamplingParams(max_tokens=n, temperature=0))
    outs = [o async for o in engine.generate(req)]
    return "".join(o.text for o in outs), outs[-1].usage.cached_tokens


async def test_a_quantized_cache_answers_and_its_saved_prefix_comes_back(
    model_path: Path,
) -> None:
    for kind in ("q8_0", "q4_0"):
        spec = bundled_spec(model_path, max_seqs=2, cache_type_k=kind, cache_type_v=kind)
        engine = AsyncEngine(llamacpp_loader()(spec))
        engine.start()
        try:
            first, cached = await greedy(engine, "a")
            assert cached == 0 and first.strip()
            assert await wait_for(lambda e=engine: e.stats().cached_prefixes == 1, 5.0)
            again, cached = await greedy(engine, "b")
            assert cached > 0 and again == first  # restored from the saved quantized state
        finally:
            await engine.stop()
