"""Mixture-of-Experts checkpoints (tiny random Mixtral and Qwen2-MoE: 4 experts, top-2) converted
and served: greedy tokens equal transformers' own `generate`, at f32 and f16, alone and 8 at a
time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inferd.models import checkpoint
from inferd.models.convert_cache import CacheEntry, ConvertCache
from inferd.models.gguf_header import read_header
from tests import checkpoints
from tests.checkpoints import Greedy, assert_agrees, engine_greedy, hf_greedy, serving

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]
checkpoint_root, smollm2_dir, moe_dir = (
    checkpoints.checkpoint_root,
    checkpoints.smollm2_dir,
    checkpoints.moe_dir,
)

N = 24
# prompts whose reference answers have no near-tie in their first 8 tokens (random weights
# give near-ties often; see tests.checkpoints.Greedy)
TEXTS = ["The capital of France is", "Hello, world", "One, two, three,"]
# Hugging Face architecture -> the GGUF's
ARCHITECTURES = {
    "mixtral": ("MixtralForCausalLM", "llama"),
    "qwen2moe": ("Qwen2MoeForCausalLM", "qwen2moe"),
}


@pytest.fixture(scope="module")
def prompts(moe_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(moe_dir)
    return [tokenizer(t)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def converted(checkpoint_root: Path, moe_dir: Path) -> dict[str, CacheEntry]:
    cache = ConvertCache(checkpoint_root / "converted")  # the converter's own types only
    ckpt = checkpoint.inspect(moe_dir)
    return {q: cache.get_or_convert(ckpt, q) for q in ("f32", "f16")}


@pytest.fixture(scope="module")
def expected(moe_dir: Path, prompts: list[list[int]]) -> list[Greedy]:
    return hf_greedy(moe_dir, prompts, N)


def test_the_checkpoint_is_a_mixture_of_experts(moe_dir: Path) -> None:
    ckpt = checkpoint.inspect(moe_dir)
    assert (ckpt.architecture, ckpt.gguf_architecture) == ARCHITECTURES[moe_dir.name.split("-")[0]]
    assert (ckpt.n_experts, ckpt.n_experts_used) == (4, 2)


def test_the_experts_survive_conversion(converted: dict[str, CacheEntry], moe_dir: Path) -> None:
    arch = ARCHITECTURES[moe_dir.name.split("-")[0]][1]
    for entry in converted.values():
        meta = read_header(entry.path).metadata
        assert meta["general.architecture"] == arch
        assert (meta[f"{arch}.expert_count"], meta[f"{arch}.expert_used_count"]) == ("4", "2")


@pytest.mark.parametrize("quant", ["f32", "f16"])
async def test_greedy_equals_transformers_generate(
    quant: str,
    converted: dict[str, CacheEntry],
    prompts: list[list[int]],
    expected: list[Greedy],
) -> None:
    async with serving(converted[quant].path) as engine:
        got = [await engine_greedy(engine, p, N) for p in prompts]
    assert_agrees(got, expected, at_least=8)


async def test_eight_concurrent_requests_each_match_their_solo_answer(
    converted: dict[str, CacheEntry], prompts: list[list[int]], expected: list[Greedy]
) -> None:
    which = [i % len(prompts) for i in range(8)]
    async with serving(converted["f32"].path, max_seqs=8) as engine:
        solo = [await engine_greedy(engine, p, N) for p in prompts]
        together = await asyncio.gather(
            *(engine_greedy(engine, prompts[w], N, rid=f"r{i}") for i, w in enumerate(which))
        )
    assert list(together) == [solo[w] for w in which]
    assert_agrees(solo, expected, at_least=8)
