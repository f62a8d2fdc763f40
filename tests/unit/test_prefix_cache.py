"""Prefix reuse across requests on the fake backend, whose KV cache models llama.cpp's cell
sharing exactly: the engine's ledger must agree with it cell for cell."""

from __future__ import annotations

import asyncio
import random

from inferd.engine.backends.fake import FakeBackend
from inferd.engine.backends.llamacpp.cells import MAX_SAVE_RUNS
from inferd.engine.client import AsyncEngine
from inferd.engine.prefix_cache import PrefixStore, SavedPrefix, common_prefix
from inferd.engine.types import (
    EngineStats,
    FinishReason,
    GenerateRequest,
    GenerationOutput,
    SamplingParams,
)
from tests.conftest import wait_for


async def run(
    engine: AsyncEngine, rid: str, prompt: list[int], **sp: object
) -> list[GenerationOutput]:
    req = GenerateRequest(rid, tuple(prompt), SamplingParams(**sp))  # type: ignore[arg-type]
    return [o async for o in engine.generate(req)]


async def settled(engine: AsyncEngine, backend: FakeBackend) -> EngineStats:
    """The engine's stats once the core thread has applied the KV operations of sequences
    that just finished (it sends their last outputs first): its accounting and the backend's
    cells then agree."""
    assert await wait_for(lambda: engine.stats().kv_cells_used == backend.cells_used, 1.0)
    return engine.stats()


def make(**kwargs: object) -> tuple[AsyncEngine, FakeBackend]:
    backend = FakeBackend(**kwargs)  # type: ignore[arg-type]
    engine = AsyncEngine(backend)
    engine.start()
    return engine, backend


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3, 4], [1, 2, 3, 5], 10) == 3
    assert common_prefix([1, 2, 3], [1, 2, 3], 10) == 3
    assert common_prefix([1, 2, 3], [1, 2, 3], 2) == 2
    assert common_prefix([9, 2], [1, 2], 10) == 0
    assert common_prefix(list(range(1000)), [*range(777), -1], 5000) == 777


async def test_second_request_reuses_the_first_ones_prefix() -> None:
    engine, backend = make(reply="abc")
    try:
        system = list(range(1, 41))
        first = await run(engine, "a", [*system, 100, 101], max_tokens=10)
        prefill_steps = len(backend.batches)
        second = await run(engine, "b", [*system, 102, 103, 104], max_tokens=10)
        assert first[-1].usage.cached_tokens == 0
        assert second[-1].usage.cached_tokens == 40
        assert "".join(o.text for o in second) == "abc"
        # the second prompt fed only its 3 new tokens (the last one alone, then sampled)
        fed = [n for n, _ in backend.batches[prefill_steps:]]
        assert fed[:2] == [2, 1]
        stats = await settled(engine, backend)
        assert stats.prefix_hits == 1 and stats.reused_tokens_total == 40
        assert stats.kv_cells_used == backend.cells_used
    finally:
        await engine.stop()


async def test_identical_prompt_reuses_all_but_the_last_token() -> None:
    engine, backend = make(reply="xyz")
    try:
        prompt = list(range(1, 30))
        await run(engine, "a", prompt, max_tokens=5)
        again = await run(engine, "b", prompt, max_tokens=5)
        assert again[-1].usage.cached_tokens == len(prompt) - 1
        await settled(engine, backend)
    finally:
        await engine.stop()


async def test_concurrent_requests_share_a_running_prefix() -> None:
    engine, backend = make(reply="r" * 30, step_delay=0.002, max_seqs=4)
    try:
        system = list(range(1, 61))
        first = asyncio.create_task(run(engine, "first", [*system, 200], max_tokens=30))
        await asyncio.sleep(0.02)  # first is decoding now
        others = await asyncio.gather(
            *(run(engine, f"o{i}", [*system, 201 + i], max_tokens=5) for i in range(3))
        )
        await first
        assert all(o[-1].usage.cached_tokens == 60 for o in others)
        stats = await settled(engine, backend)
        assert stats.kv_cells_used == backend.cells_used
        # shared cells counted once: far less than four copies of the system prompt
        assert backend.cells_used < 2 * 60 + 4 * 35
    finally:
        await engine.stop()


async def test_ledger_stays_exact_under_churn_pressure_and_aborts() -> None:
    """Many requests with overlapping prefixes, a tiny cache, random aborts."""
    rng = random.Random(7)
    engine, backend = make(reply="q" * 40, kv_cells=400, n_ctx=120, max_seqs=4, max_batch_tokens=32)
    prefixes = [list(range(1 + 50 * k, 1 + 50 * k + rng.randint(10, 60))) for k in range(4)]
    try:

        async def one(i: int) -> None:
            prompt = [*rng.choice(prefixes)[: rng.randint(5, 60)], 250 - (i % 5)]
            req = GenerateRequest(
                f"r{i}", tuple(prompt), SamplingParams(max_tokens=rng.randint(1, 40))
            )
            gen = engine.generate(req)
            limit = rng.randint(1, 60) if i % 4 == 0 else None
            outs = []
            async for o in gen:
                outs.append(o)
                if limit is not None and len(outs) >= limit:
                    await gen.aclose()
                    return
            assert outs[-1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)

        for batch in range(5):
            await asyncio.gather(*(one(batch * 12 + i) for i in range(12)))
            await asyncio.sleep(0.05)  # let aborts land
            stats = await settled(engine, backend)
            assert stats.running == 0
            assert stats.kv_cells_used == backend.cells_used
            assert stats.kv_cells_used <= 400
        assert engine.stats().prefix_hits > 10
    finally:
        await engine.stop()


async def test_a_partial_reuse_keeps_the_cached_entry_whole() -> None:
    engine, backend = make(reply="ok")
    try:
        system = list(range(1, 31))
        a = [*system, 100, 101, 102]
        await run(engine, "a", a, max_tokens=3)
        b = await run(engine, "b", [*system, 200, 201], max_tokens=3)
        assert b[-1].usage.cached_tokens == 30
        again = await run(engine, "a2", a, max_tokens=3)
        assert again[-1].usage.cached_tokens == len(a) - 1  # a's own suffix survived b
        await settled(engine, backend)
    finally:
        await engine.stop()


async def test_a_finished_sequence_frees_its_cells_and_leaves_a_saved_prefix() -> None:
    engine, backend = make(reply="done")
    try:
        prompt = list(range(1, 50))
        await run(engine, "a", prompt, max_tokens=4)
        stats = await settled(engine, backend)
        assert stats.kv_cells_used == backend.cells_used == 0
        assert stats.cached_prefixes == 1 and stats.prefix_cache_bytes > 0
        # the next turn of a conversation: the answer is part of the prompt
        answer = [b + 1 for b in b"done"]
        again = await run(engine, "b", [*prompt, *answer, 7], max_tokens=4)
        # everything a computed: the prompt and the answer but its last token
        assert again[-1].usage.cached_tokens == len(prompt) + len(answer) - 1
        assert backend.restores == 1
        assert "".join(o.text for o in again) == "done"
        # b extends a's saved tokens, so a's entry gave way to b's
        assert engine.stats().cached_prefixes == 1
    finally:
        await engine.stop()


async def test_a_sequence_decoded_among_others_saves_only_its_first_runs_of_cells() -> None:
    # two sequences decoding together put their tokens in alternating cells, and saving an
    # interleaved state costs a copy per run: only the prefix in the first runs is saved
    engine, backend = make(reply="r" * 40)
    try:
        prompt = list(range(1, 31))
        other = list(range(100, 130))
        first, _ = await asyncio.gather(
            run(engine, "a", prompt, max_tokens=40), run(engine, "b", other, max_tokens=40)
        )
        answer = [t for o in first for t in o.token_ids]
        assert len(answer) == 40
        again = await run(engine, "c", [*prompt, *answer, 7], max_tokens=4)
        cached = again[-1].usage.cached_tokens
        # the prompt came in 2 shared steps (all but its last token, then that token), then
        # every decode step was shared: the first MAX_SAVE_RUNS runs end 14 tokens in
        assert cached == len(prompt) + MAX_SAVE_RUNS - 2
        assert "".join(o.text for o in again) == "rrrr"
        await settled(engine, backend)
    finally:
        await engine.stop()


async def test_a_failed_restore_recomputes_the_prompt_with_the_same_answer() -> None:
    engine, backend = make(reply="same")
    try:
        prompt = list(range(1, 40))
        first = await run(engine, "a", prompt, max_tokens=4)
        backend.restore_fails = True
        steps = len(backend.batches)
        again = await run(engine, "b", prompt, max_tokens=4)
        assert again[-1].usage.cached_tokens == 0
        assert [o.text for o in again] == [o.text for o in first]
        assert sum(n for n, _ in backend.batches[steps:]) >= len(prompt)  # fed it all
        stats = await settled(engine, backend)
        assert stats.prefix_restore_failures == 1
        assert stats.prefix_hits == 0 and stats.reused_tokens_total == 0
        assert stats.kv_cells_used == backend.cells_used == 0
    finally:
        await engine.stop()


async def test_no_prefix_cache_budget_saves_nothing() -> None:
    backend = FakeBackend(reply="x")
    engine = AsyncEngine(backend, prefix_cache_bytes=0)
    engine.start()
    try:
        prompt = list(range(1, 30))
        await run(engine, "a", prompt, max_tokens=2)
        again = await run(engine, "b", prompt, max_tokens=2)
        assert again[-1].usage.cached_tokens == 0
        assert engine.stats().cached_prefixes == 0 and backend.restores == 0
    finally:
        await engine.stop()


def test_prefix_store_evicts_least_recently_used_past_its_budget() -> None:
    store = PrefixStore(budget=300)
    a, b = (SavedPrefix([k, 1, 2, 3, 4, 5], bytes(100)) for k in (10, 20))
    c = SavedPrefix([30, 1, 2, 3, 4, 5], bytes(150))
    store.add(a)
    store.add(b)
    assert store.best([10, 1, 2, 3, 4, 5, 6]) == (a, 6)
    store.touch(a)  # b is now the least recently used
    store.add(c)
    assert len(store) == 2 and store.nbytes == 250
    assert store.best([20, 1, 2, 3, 4, 5, 6]) == (None, 0)
    store.add(SavedPrefix([40, 1, 2, 3], bytes(400)))  # larger than the budget: not kept
    assert len(store) == 2


def test_prefix_store_keeps_only_the_latest_turn_of_a_conversation() -> None:
    store = PrefixStore(budget=10_000)
    turn1 = SavedPrefix(list(range(1, 20)), bytes(10))
    turn2 = SavedPrefix(list(range(1, 40)), bytes(10))
    other = SavedPrefix(list(range(100, 120)), bytes(10))
    for e in (turn1, other, turn2):
        store.add(e)
    assert len(store) == 2
    assert store.best([*range(1, 40), 99]) == (turn2, 39)
    # a request shorter than the saved prefix reuses part of it, leaving one token to feed
    assert store.best(list(range(1, 10))) == (turn2, 8)
