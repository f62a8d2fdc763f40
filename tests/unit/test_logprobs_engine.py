"""Log probabilities in the engine, on the fake backend: the math, which sequences get them,
prompt log probabilities over chunks, preemption and the prefix cache."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from inferd.engine.backends.fake import FakeBackend, fake_logits
from inferd.engine.backends.logprobs import FLOOR, token_logprobs
from inferd.engine.client import AsyncEngine
from inferd.engine.types import FinishReason, GenerateRequest, GenerationOutput, SamplingParams

PROMPT = tuple(range(1, 41))


def reference(row: np.ndarray, token: int) -> float:
    x = row.astype(np.float64)
    return float(x[token] - (x.max() + np.log(np.exp(x - x.max()).sum())))


def test_token_logprobs_is_the_log_softmax_with_the_top_k_in_order() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(3, 50)).astype(np.float32) * 4
    out = token_logprobs(rows, [7, 0, 49], 5)
    for i, (lp, token) in enumerate(zip(out, [7, 0, 49], strict=True)):
        assert lp.token == token
        assert lp.logprob == pytest.approx(reference(rows[i], token), abs=1e-5)
        best = np.argsort(-rows[i])[:5]
        assert [t for t, _ in lp.top] == best.tolist()
        assert [v for _, v in lp.top] == pytest.approx([reference(rows[i], t) for t in best])
    assert token_logprobs(rows, [1, 2, 3], 0)[0].top == ()


def test_a_token_the_model_rules_out_scores_the_floor_not_minus_infinity() -> None:
    row = np.array([[2.0, 1.0, -np.inf, -np.inf]], dtype=np.float32)
    [lp] = token_logprobs(row, [2], 4)
    assert lp.logprob == FLOOR
    assert [v for _, v in lp.top][-2:] == [FLOOR, FLOOR]
    assert all(np.isfinite(v) for _, v in lp.top)


async def run(engine: AsyncEngine, rid: str, **sampling: object) -> list[GenerationOutput]:
    req = GenerateRequest(rid, PROMPT, SamplingParams(**sampling))  # type: ignore[arg-type]
    return [out async for out in engine.generate(req)]


@pytest.fixture
async def engine():  # type: ignore[no-untyped-def]
    e = AsyncEngine(FakeBackend(reply="Hi there", max_batch_tokens=16, max_seqs=4))
    e.start()
    yield e
    await e.stop()


async def test_only_the_sequences_that_ask_get_logprobs(engine: AsyncEngine) -> None:
    plain, asked = await asyncio.gather(
        run(engine, "plain", max_tokens=20), run(engine, "asked", max_tokens=20, logprobs=2)
    )
    assert all(o.logprobs == () and o.prompt_logprobs is None for o in plain)
    generated = [t for o in asked for t in o.token_ids]
    scored = [lp for o in asked for lp in o.logprobs]
    # every generated token has one but the end-of-generation token
    assert [lp.token for lp in scored] == generated[:-1]
    assert asked[-1].finish_reason is FinishReason.STOP
    tokens = [*PROMPT, *generated]
    for i, lp in enumerate(scored):
        row = fake_logits([tokens[len(PROMPT) - 1 + i]])[0]
        assert lp.logprob == pytest.approx(reference(row, lp.token), abs=1e-5)
        assert len(lp.top) == 2
    assert all(o.prompt_logprobs is None for o in asked)


async def test_prompt_logprobs_over_chunks_first_is_none(engine: AsyncEngine) -> None:
    # a 40-token prompt fed in 16-token steps
    outs = await run(engine, "echo", max_tokens=3, prompt_logprobs=1, logprobs=1)
    first = outs[0].prompt_logprobs
    assert first is not None and len(first) == len(PROMPT) and first[0] is None
    rows = fake_logits(PROMPT)
    for p in range(1, len(PROMPT)):
        lp = first[p]
        assert lp is not None and lp.token == PROMPT[p]
        assert lp.logprob == pytest.approx(reference(rows[p - 1], PROMPT[p]), abs=1e-5)
        assert len(lp.top) == 1
    assert all(o.prompt_logprobs is None for o in outs[1:])


async def test_max_tokens_zero_scores_the_prompt_and_generates_nothing(
    engine: AsyncEngine,
) -> None:
    outs = await run(engine, "zero", max_tokens=0, prompt_logprobs=0)
    assert len(outs) == 1 and outs[0].finish_reason is FinishReason.LENGTH
    assert outs[0].token_ids == () and outs[0].text == ""
    assert outs[0].usage.completion_tokens == 0
    scored = outs[0].prompt_logprobs
    assert scored is not None and len(scored) == len(PROMPT)


async def test_a_prompt_to_score_is_never_taken_from_the_prefix_cache(
    engine: AsyncEngine,
) -> None:
    await run(engine, "warm", max_tokens=2)  # leaves the prompt's prefix kept
    outs = await run(engine, "echo", max_tokens=0, prompt_logprobs=0)
    assert outs[-1].usage.cached_tokens == 0
    scored = outs[0].prompt_logprobs
    assert scored is not None and all(lp is not None for lp in scored[1:])


async def test_preempted_sequence_scores_its_prompt_once() -> None:
    # KV for barely two prompts: the newest is preempted and fed again from the start
    backend = FakeBackend(reply="abcdefghij", max_batch_tokens=64, max_seqs=2, kv_cells=90)
    e = AsyncEngine(backend)
    e.start()
    try:
        a, b = await asyncio.gather(
            run(e, "a", max_tokens=10, prompt_logprobs=0, ignore_eos=True),
            run(e, "b", max_tokens=10, prompt_logprobs=0, ignore_eos=True),
        )
        assert e.stats().preemptions > 0
    finally:
        await e.stop()
    for outs in (a, b):
        scored = outs[0].prompt_logprobs
        assert scored is not None and len(scored) == len(PROMPT)
        assert [lp.token for lp in scored[1:] if lp is not None] == list(PROMPT[1:])
