"""A real checkpoint (SmolLM2, rebuilt from the bundled GGUF) converted by inferd and served by
the real engine: f16 answers exactly as transformers does; q8_0 and q4_k_m load and agree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferd.engine.backends.llamacpp.quantize import quantize
from inferd.models import checkpoint
from inferd.models.convert_cache import CacheEntry, ConvertCache
from inferd.models.gguf_header import read_header
from inferd.models.spec import bundled_model_path
from tests import checkpoints
from tests.checkpoints import assert_agrees, engine_greedy, hf_greedy, serving

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]
checkpoint_root, smollm2_dir = checkpoints.checkpoint_root, checkpoints.smollm2_dir

N = 32
TEXTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
# llama.cpp file types (general.file_type)
FILE_TYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def prompts(tokenizer: Any) -> list[list[int]]:
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the tallest mountain on Earth?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    return [tokenizer(t, add_special_tokens=True)["input_ids"] for t in [*TEXTS, chat]]


@pytest.fixture(scope="module")
def converted(checkpoint_root: Path, smollm2_dir: Path) -> Iterator[dict[str, CacheEntry]]:
    """The checkpoint at each type, from a conversion cache kept in the pytest cache."""
    cache = ConvertCache(checkpoint_root / "converted", quantize=quantize)
    ckpt = checkpoint.inspect(smollm2_dir)
    yield {q: cache.get_or_convert(ckpt, q) for q in FILE_TYPES}


def test_the_checkpoint_is_what_the_tests_think(smollm2_dir: Path) -> None:
    ckpt = checkpoint.inspect(smollm2_dir)
    assert ckpt.architecture == "LlamaForCausalLM" and ckpt.gguf_architecture == "llama"
    assert 130e6 < ckpt.n_params < 140e6 and ckpt.n_experts == 0
    assert {p.name for p in ckpt.tokenizer} >= {"tokenizer.json", "tokenizer_config.json"}


async def test_f16_greedy_equals_transformers_generate(
    converted: dict[str, CacheEntry], smollm2_dir: Path, prompts: list[list[int]], tokenizer: Any
) -> None:
    expected = hf_greedy(smollm2_dir, prompts, N)
    async with serving(converted["f16"].path) as engine:
        # the tokenizer survived: the engine tokenizes each text as transformers does
        for text, prompt in zip(TEXTS, prompts, strict=False):
            assert await engine.tokenize(text) == prompt
        got = [await engine_greedy(engine, p, N) for p in prompts]
    # equal up to a near-tie (where f16 rounding may pick the runner-up), and entirely on the
    # plain-text prompts, whose answers have none within 32 tokens
    assert_agrees(got, expected, at_least=12)
    assert got[: len(TEXTS)] == [e.tokens for e in expected[: len(TEXTS)]]


async def test_chat_template_and_special_tokens_survive(
    converted: dict[str, CacheEntry], tokenizer: Any
) -> None:
    async with serving(converted["f16"].path) as engine:
        info = engine.info
        assert info.chat_template == tokenizer.chat_template
        assert (info.bos_token, info.eos_token) == (tokenizer.bos_token, tokenizer.eos_token)
        for special in ("<|im_start|>", "<|im_end|>", tokenizer.eos_token):
            ids = await engine.tokenize(special, add_special=False)
            assert ids == [tokenizer.convert_tokens_to_ids(special)], special


async def test_quantized_conversions_load_and_agree(
    converted: dict[str, CacheEntry], prompts: list[list[int]]
) -> None:
    for quant, entry in converted.items():
        assert read_header(entry.path).metadata["general.file_type"] == str(FILE_TYPES[quant])
    sizes = [converted[q].size for q in ("f16", "q8_0", "q4_k_m")]
    assert sizes == sorted(sizes, reverse=True) and sizes[2] < sizes[0] / 2
    answers: dict[str, list[list[int]]] = {}
    for quant, entry in converted.items():
        async with serving(entry.path) as engine:
            answers[quant] = [await engine_greedy(engine, p, 8) for p in prompts]
    # q8_0 is near-lossless: the same first tokens as f16; q4_k_m still answers the easy one
    assert answers["q8_0"] == answers["f16"]
    assert answers["q4_k_m"][0][:2] == answers["f16"][0][:2]


async def test_converted_at_the_bundled_type_answers_as_the_bundled_file(
    checkpoint_root: Path, smollm2_dir: Path, prompts: list[list[int]]
) -> None:
    """The benchmark's quality half (docs/benchmarks.md): the checkpoint converted back to the
    bundled file's type (Q4_1, through f16 and llama.cpp's quantizer) answers greedily as the
    bundled GGUF does."""
    bundled = bundled_model_path()
    assert read_header(bundled).metadata["general.file_type"] == "3"  # Q4_1
    cache = ConvertCache(checkpoint_root / "converted", quantize=quantize)
    entry = cache.get_or_convert(checkpoint.inspect(smollm2_dir), "q4_1")
    answers = []
    for path in (bundled, entry.path):
        async with serving(path) as engine:
            answers.append([await engine_greedy(engine, p, N) for p in prompts])
    agree = [
        next((i for i, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), min(len(x), len(y)))
        for x, y in zip(*answers, strict=True)
    ]
    # the same tokens, up to rounding that flips a near-tie late in an answer
    assert min(agree) >= 16 and sum(agree) >= 0.9 * sum(len(a) for a in answers[0]), agree
