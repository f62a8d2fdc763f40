"""The transformers backend under inferd's engine, on checkpoints the tests build (never
downloaded): SmolLM2 dequantized from the bundled GGUF, a tiny random llama, tiny random
Mixtral and Qwen2-MoE models.

Greedy answers are held to transformers' own `generate` for each prompt alone, in float32,
up to each answer's first near-tie (see `checkpoints.Greedy`), while the engine runs them
concurrently in ragged steps over its paged KV cache."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from inferd.engine.client import AsyncEngine
from inferd.engine.types import GenerateRequest, SamplingParams
from tests import checkpoints
from tests.checkpoints import FLOAT32_TIE, engine_greedy, hf_greedy, serving_torch

checkpoint_root, smollm2_dir, tiny_llama_dir, moe_dir = (
    checkpoints.checkpoint_root,
    checkpoints.smollm2_dir,
    checkpoints.tiny_llama_dir,
    checkpoints.moe_dir,
)

TEXTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):",
    "List three colours:",
    "<|im_start|>user\nWhat is the boiling point of water at sea level?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "1, 2, 3, 4, 5,",
    "A",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy "
    "dog again, and then it rests under a tree while the dog",
]
N = 24


def agrees(got: list[list[int]], expected: list[checkpoints.Greedy], at_least: int) -> None:
    checkpoints.assert_agrees(got, expected, at_least, FLOAT32_TIE)


def prompts_of(folder: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return [tokenizer(t)["input_ids"] for t in TEXTS]


async def concurrently(engine: AsyncEngine, prompts: list[list[int]], n: int) -> list[list[int]]:
    return await asyncio.gather(
        *(engine_greedy(engine, p, n, rid=f"r{i}") for i, p in enumerate(prompts))
    )


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_dir: Path) -> tuple[list[list[int]], list[checkpoints.Greedy]]:
    prompts = prompts_of(smollm2_dir)
    return prompts, hf_greedy(smollm2_dir, prompts, N)


async def test_eight_concurrent_greedy_answers_equal_transformers_generate(
    smollm2_dir: Path, smollm2_reference: tuple[list[list[int]], list[checkpoints.Greedy]]
) -> None:
    prompts, expected = smollm2_reference
    async with serving_torch(smollm2_dir, max_seqs=8) as engine:
        got = await concurrently(engine, prompts, N)
        stats = engine.stats()
    agrees(got, expected, at_least=8)
    # they ran together: steps that held several sequences, prompts and decodes mixed
    assert stats.step_seqs_total > stats.steps
    assert stats.steps < sum(len(t) for t in got)


async def test_a_tiny_random_llama_agrees_with_generate(tiny_llama_dir: Path) -> None:
    prompts = prompts_of(tiny_llama_dir)
    expected = hf_greedy(tiny_llama_dir, prompts, N)
    async with serving_torch(tiny_llama_dir, max_seqs=8) as engine:
        got = await concurrently(engine, prompts, N)
    agrees(got, expected, at_least=8)


async def test_a_tiny_random_moe_agrees_with_generate(moe_dir: Path) -> None:
    prompts = prompts_of(moe_dir)
    expected = hf_greedy(moe_dir, prompts, N)
    async with serving_torch(moe_dir, max_seqs=8) as engine:
        got = await concurrently(engine, prompts, N)
        assert engine.facts()["metadata"]["general.architecture"] in ("mixtral", "qwen2_moe")
    agrees(got, expected, at_least=4)


async def test_a_repeated_prompt_reuses_its_prefix_and_answers_the_same(
    smollm2_dir: Path, smollm2_reference: tuple[list[list[int]], list[checkpoints.Greedy]]
) -> None:
    prompts, expected = smollm2_reference
    prompt = prompts[7]
    async with serving_torch(smollm2_dir, max_seqs=4) as engine:
        first = await engine_greedy(engine, prompt, N, rid="first")
        req = GenerateRequest("again", tuple(prompt), SamplingParams(max_tokens=N, temperature=0))
        outs = [o async for o in engine.generate(req)]
        again = [t for o in outs for t in o.token_ids]
        if outs[-1].finish_reason == "stop":
            again = again[:-1]
        stats = engine.stats()
    assert outs[-1].usage.cached_tokens >= len(prompt) - 16  # the kept prefix, restored
    assert stats.prefix_hits >= 1
    assert first == again
    agrees([again], [expected[7]], at_least=8)


async def test_running_sequences_share_a_prefix(smollm2_dir: Path) -> None:
    """A prompt that starts like a running sequence's gets its blocks (shared, not
    recomputed), and answers as it would alone."""
    prompts = prompts_of(smollm2_dir)
    base = prompts[7]
    longer = [*base, *prompts[0]]
    async with serving_torch(smollm2_dir, max_seqs=4, prefix_cache_mb=0) as engine:
        alone = await engine_greedy(engine, longer, 12, rid="alone")
        slow = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
        holder = engine.generate(GenerateRequest("holder", tuple(base), slow))
        await anext(holder)  # the holder has its prompt computed and is decoding
        req = GenerateRequest("sharer", tuple(longer), SamplingParams(max_tokens=12, temperature=0))
        outs = [o async for o in engine.generate(req)]
        async for _ in holder:
            pass
        stats = engine.stats()
    shared = [t for o in outs for t in o.token_ids]
    if outs[-1].finish_reason == "stop":
        shared = shared[:-1]
    assert outs[-1].usage.cached_tokens >= len(base) - 1
    assert stats.prefix_hits >= 1
    assert shared == alone


async def test_preemption_under_a_tiny_kv_budget_keeps_every_answer(
    smollm2_dir: Path, smollm2_reference: tuple[list[list[int]], list[checkpoints.Greedy]]
) -> None:
    """Eight requests into a cache of 160 positions (10 blocks): some are preempted and
    recomputed later, and every answer is still the one it gets alone."""
    prompts, expected = smollm2_reference
    async with serving_torch(
        smollm2_dir, n_ctx=160, kv_cells=160, max_seqs=8, prefix_cache_mb=0
    ) as engine:
        got = await concurrently(engine, prompts, N)
        stats = engine.stats()
        assert engine.backend.pool.used == 0
    assert stats.preemptions > 0
    agrees(got, expected, at_least=8)


async def test_an_aborted_request_frees_its_blocks_and_the_engine_serves_on(
    smollm2_dir: Path,
) -> None:
    prompts = prompts_of(smollm2_dir)
    async with serving_torch(smollm2_dir, max_seqs=4, prefix_cache_mb=0) as engine:
        long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
        stream = engine.generate(GenerateRequest("long", tuple(prompts[1]), long))
        got = [await anext(stream) for _ in range(3)]
        engine.abort("long")
        rest = [o async for o in stream]
        assert rest[-1].finish_reason == "abort"
        assert len(got) + len(rest) < 50
        assert await wait_free(engine)
        assert await engine_greedy(engine, prompts[0], 4) != []


async def wait_free(engine: AsyncEngine) -> bool:
    for _ in range(200):
        if engine.backend.pool.used == 0 and engine.stats().running == 0:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_sampling_is_seeded_and_penalties_apply(smollm2_dir: Path) -> None:
    prompts = prompts_of(smollm2_dir)

    async def sample(engine: AsyncEngine, rid: str, **params: Any) -> list[int]:
        sp = SamplingParams(max_tokens=16, ignore_eos=True, **params)
        return [
            t
            async for o in engine.generate(GenerateRequest(rid, tuple(prompts[3]), sp))
            for t in o.token_ids
        ]

    async with serving_torch(smollm2_dir, max_seqs=4) as engine:
        a = await sample(engine, "a", temperature=0.9, seed=7)
        b = await sample(engine, "b", temperature=0.9, seed=7)
        c = await sample(engine, "c", temperature=0.9, seed=8)
        greedy = await sample(engine, "g", temperature=0)
        penalized = await sample(
            engine, "p", temperature=0, repetition_penalty=1.5, frequency_penalty=1.0
        )
    assert a == b and a != c
    # the penalties push repeated tokens down: fewer repeats than plain greedy
    assert len(set(penalized)) > len(set(greedy)) or penalized != greedy


def test_token_pieces_rebuild_the_text_byte_for_byte(smollm2_dir: Path) -> None:
    """Each token's bytes (byte-level BPE mapped back), joined, are the text; an emoji split
    over tokens comes back whole; control tokens add nothing."""
    from transformers import AutoTokenizer

    from inferd.engine.backends.torch.tokens import Tokens

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokens = Tokens(tokenizer, [tokenizer.eos_token_id])
    text = "Héllo wörld 🙂, ünïcode\n\tdone"
    ids = tokens.tokenize(text, add_special=False, parse_special=False)
    assert b"".join(tokens.piece(t) for t in ids) == text.encode()
    chat = tokens.tokenize("<|im_start|>user", add_special=False, parse_special=True)
    assert tokens.piece(chat[0]) == b"" and chat[0] in tokenizer.all_special_ids
    literal = tokens.tokenize("<|im_start|>", add_special=False, parse_special=False)
    assert b"".join(tokens.piece(t) for t in literal) == b"<|im_start|>"
    assert tokens.eog == {tokenizer.eos_token_id}


def test_a_control_token_text_is_its_name(smollm2_dir: Path) -> None:
    """/detokenize's view: a control token written out (`<|im_start|>`), as llama.cpp's
    piece with `special` and HF's `decode` give it; any other token as its piece."""
    from transformers import AutoTokenizer

    from inferd.engine.backends.torch.tokens import Tokens

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokens = Tokens(tokenizer, [tokenizer.eos_token_id])
    ids = tokens.tokenize("<|im_start|>user\nHé<|im_end|>", add_special=False, parse_special=True)
    text = b"".join(tokens.text(t) for t in ids).decode()
    assert text == "<|im_start|>user\nHé<|im_end|>" == tokenizer.decode(ids)
