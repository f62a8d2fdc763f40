"""Saved prefixes on the real llama.cpp backend: a finished request's KV state goes to host
memory and comes back bit for bit, a restore that does not fit changes nothing, and a model
configured with `prefix_cache = false` reuses nothing at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions
from inferd.engine.client import AsyncEngine
from inferd.engine.types import GenerateRequest, SamplingParams
from inferd.errors import BackendError
from inferd.models.loading import llamacpp_factory, llamacpp_loader
from inferd.models.registry import ModelRegistry
from tests.conftest import bundled_spec, wait_for


async def test_a_repeated_prompt_restores_its_prefix_and_answers_the_same(
    model_path: Path,
) -> None:
    engine = AsyncEngine(llamacpp_loader()(bundled_spec(model_path, max_seqs=2)))
    engine.start()
    try:
        prompt = tuple(
            await engine.tokenize(
                "<|im_start|>user\nName three rivers in Europe and one fact about each."
                "<|im_end|>\n<|im_start|>assistant\n"
            )
        )

        async def answer(rid: str) -> tuple[str, int]:
            req = GenerateRequest(rid, prompt, SamplingParams(max_tokens=24, temperature=0))
            outs = [o async for o in engine.generate(req)]
            return "".join(o.text for o in outs), outs[-1].usage.cached_tokens

        first, cached_first = await answer("a")
        # the core thread saves the prefix right after sending the last output
        assert await wait_for(lambda: engine.stats().cached_prefixes == 1, 2.0)
        stats = engine.stats()
        assert stats.kv_cells_used == 0  # the finished request holds no cells
        assert stats.cached_prefixes == 1 and stats.prefix_cache_bytes > 0
        second, cached_second = await answer("b")
        assert cached_first == 0
        assert cached_second == len(prompt) - 1
        assert second == first
        assert engine.stats().prefix_restore_failures == 0
    finally:
        await engine.stop()


def test_a_restore_without_room_fails_cleanly(model_path: Path) -> None:
    backend = LlamaCppBackend(model_path, LlamaCppOptions(n_ctx=512, kv_cells=512, max_seqs=2))
    try:

        def prefill(seq: int, n: int) -> None:
            toks = [100 + i % 300 for i in range(n)]
            step = backend.info.max_batch_tokens
            for s in range(0, n, step):
                part = toks[s : s + step]
                ok = backend.decode(
                    part, range(s, s + len(part)), [seq] * len(part), [False] * len(part)
                )
                assert ok

        prefill(0, 300)
        state = backend.save_seq(0)
        assert state is not None and len(state) > 300
        backend.free_seq(0)
        prefill(1, 400)  # leaves 112 free cells: 300 do not fit
        assert backend.restore_seq(0, state) is False
        assert backend.decode([5], [400], [1], [True])  # the other sequence is untouched
        backend.free_seq(1)
        assert backend.restore_seq(0, state) is True
        assert backend.decode([5], [300], [0], [True])  # continues after the restored cells
    finally:
        backend.close()


def test_a_batch_larger_than_the_step_budget_is_refused_not_written(model_path: Path) -> None:
    backend = LlamaCppBackend(model_path, LlamaCppOptions(n_ctx=512, max_seqs=2, n_batch=32))
    try:
        assert backend.info.max_batch_tokens == 32
        with pytest.raises(BackendError, match="33 tokens"):
            backend.decode([100] * 33, range(33), [0] * 33, [False] * 33)
        assert backend.decode([100] * 32, range(32), [0] * 32, [False] * 31 + [True])
    finally:
        backend.close()


async def test_prefix_cache_off_reuses_nothing(model_path: Path) -> None:
    """`prefix_cache = false` in a model's config, through the registry: a repeated prompt,
    after the first answer and while it still runs, reports 0 cached tokens and answers the
    same; nothing is looked up or kept."""
    spec = bundled_spec(model_path, max_seqs=2, prefix_cache=False)
    registry = ModelRegistry([spec], llamacpp_factory())
    await registry.load_all()
    try:
        engine = registry.get(spec.name).engine
        prompt = tuple(await engine.tokenize("<|im_start|>user\nName three rivers.<|im_end|>\n"))

        def request(rid: str, n: int) -> GenerateRequest:
            return GenerateRequest(rid, prompt, SamplingParams(max_tokens=n, temperature=0))

        first = [o async for o in engine.generate(request("a", 12))]
        again = [o async for o in engine.generate(request("b", 12))]
        holder = engine.generate(request("holder", 60))
        await holder.__anext__()  # running: its prompt is in the KV cache
        beside = [o async for o in engine.generate(request("c", 12))]
        await holder.aclose()
        assert [o[-1].usage.cached_tokens for o in (first, again, beside)] == [0, 0, 0]
        text = "".join(o.text for o in first)
        assert "".join(o.text for o in again) == text == "".join(o.text for o in beside)
        stats = engine.stats()
        assert stats.prefix_queries == 0 and stats.prefix_hits == 0
        assert stats.cached_prefixes == 0 and stats.prefix_cache_bytes == 0
    finally:
        await registry.close()


async def test_a_cancelled_request_keeps_its_prefix_as_a_finished_one_does(
    model_path: Path,
) -> None:
    """A client that leaves (a Stop button, a timeout, a regenerate) must not throw its
    prompt's KV away: the follow-up with the same prompt reuses as much as after a
    request that ran to its end."""
    engine = AsyncEngine(llamacpp_loader()(bundled_spec(model_path, max_seqs=2)))
    engine.start()
    try:
        text = " ".join(f"Item {i}: the river flows past the mill." for i in range(60))
        prompt = tuple(await engine.tokenize(text))
        assert len(prompt) > 500  # long enough to be prefilled in several chunks

        async def follow_up(rid: str) -> int:
            req = GenerateRequest(rid, prompt, SamplingParams(max_tokens=2, temperature=0))
            outs = [o async for o in engine.generate(req)]
            return outs[-1].usage.cached_tokens

        # completed, then the same prompt again
        done = GenerateRequest("done", prompt, SamplingParams(max_tokens=4, temperature=0))
        assert [o async for o in engine.generate(done)][-1].finish_reason is not None
        assert await wait_for(lambda: engine.stats().cached_prefixes == 1, 5.0)
        after_completed = await follow_up("after-done")

        engine.drop_prefix_cache()
        assert await wait_for(lambda: engine.stats().cached_prefixes == 0, 5.0)

        # cancelled after its first token, then the same prompt again
        cancelled = GenerateRequest("cut", prompt, SamplingParams(max_tokens=200, temperature=0))
        gen = engine.generate(cancelled)
        first = await anext(gen)
        assert first.finish_reason is None and first.token_ids
        await gen.aclose()  # the client is gone: the engine aborts the sequence
        assert await wait_for(lambda: engine.stats().cached_prefixes == 1, 5.0)
        after_cancelled = await follow_up("after-cut")

        assert after_completed == len(prompt) - 1
        assert after_cancelled == after_completed
    finally:
        await engine.stop()
