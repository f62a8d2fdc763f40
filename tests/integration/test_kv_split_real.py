"""A split KV cache (one llama.cpp stream per slot) on the real backend: each slot's context
is bounded by its stream, copies and moves between streams keep the KV state bit for bit,
and the engine keeps the running slots consecutive while answers stay exact."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from inferd.config import ModelConfig, Settings
from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions, kv_cell_bytes
from inferd.engine.client import AsyncEngine
from inferd.engine.types import GenerateRequest, GenerationOutput, SamplingParams
from inferd.models.loading import llamacpp_factory, llamacpp_footprint, llamacpp_loader
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from tests.conftest import AppHandle, bundled_spec

PROMPT = (
    "<|im_start|>user\nWrite a short poem about the sea, the wind and a small boat that "
    "sails home at night.<|im_end|>\n<|im_start|>assistant\n"
)


def layout(backend: LlamaCppBackend) -> tuple[str, int]:
    facts = backend.facts()
    return facts["kv_layout"], facts["kv_cells"]


@pytest.fixture(scope="module")
def split(model_path: Path) -> Iterator[LlamaCppBackend]:
    b = LlamaCppBackend(model_path, LlamaCppOptions(n_ctx=512, max_seqs=4, kv_split=True))
    yield b
    b.close()


def test_each_slot_gets_its_own_stream_of_cells(model_path: Path, split: LlamaCppBackend) -> None:
    # by default every slot keeps the whole n_ctx
    assert layout(split) == ("split", 4 * 512) and split.info.n_ctx == 512
    # given fewer cells, a slot holds kv_cells / max_seqs (llama.cpp pads to 256)
    small = LlamaCppBackend(
        model_path, LlamaCppOptions(n_ctx=4096, kv_cells=1024, max_seqs=4, kv_split=True)
    )
    try:
        assert small.info.n_ctx == 256 and layout(small) == ("split", 1024)
    finally:
        small.close()


def test_the_default_layout_is_split_when_it_fits_and_shared_for_a_sized_pool(
    model_path: Path,
) -> None:
    # 4 x 512 cells of 23 KB, 47 MB: far below an eighth of any machine the tests run on
    auto = LlamaCppBackend(model_path, LlamaCppOptions(n_ctx=512, max_seqs=4))
    try:
        assert layout(auto) == ("split", 4 * 512) and auto.info.n_ctx == 512
    finally:
        auto.close()
    pool = LlamaCppBackend(model_path, LlamaCppOptions(n_ctx=512, kv_cells=1024, max_seqs=4))
    try:  # a pool of cells the sequences share: every one may use the whole n_ctx
        assert layout(pool) == ("unified", 1024) and pool.info.n_ctx == 512
    finally:
        pool.close()


@pytest.mark.parametrize(
    "config",
    [
        {"n_ctx": 512, "max_seqs": 4},  # split: every slot keeps the whole n_ctx
        {"n_ctx": 512, "max_seqs": 4, "kv_cells": 1024},  # a shared pool
        {"n_ctx": 1 << 20, "max_seqs": 2, "kv_split": False},  # capped at the trained context
    ],
)
def test_the_memory_estimate_before_loading_is_what_loading_gives(
    model_path: Path, config: dict[str, object]
) -> None:
    """The registry's max_memory budget counts a model before loading it from its GGUF
    header: weights (the file) and the KV cache its settings get on this host."""
    spec = ModelSpec("m", model_path, ModelConfig(path=model_path, **config))  # type: ignore[arg-type]
    backend = llamacpp_loader()(spec)
    try:
        info = backend.info
        facts = backend.facts()
        kv = info.kv_bytes
        assert kv == facts["kv_cells"] * facts["kv_cell_bytes"]
        assert kv > 0
        assert llamacpp_footprint(spec) == model_path.stat().st_size + kv
    finally:
        backend.close()


def test_the_kv_cell_size_estimate_matches_llama_cpps_state(split: LlamaCppBackend) -> None:
    tokens = split.tokenize(PROMPT, add_special=True, parse_special=True)
    try:
        _prefill(split, 0, tokens)
        state = split.save_seq(0)
        assert state is not None
        per_cell = kv_cell_bytes(split._model.model, LlamaCppOptions())
        assert per_cell == 23_040  # SmolLM2-135M: 30 layers x K, V x 3 KV heads x 64 x f16
        assert len(tokens) * per_cell <= len(state) <= len(tokens) * per_cell * 1.05
    finally:
        split.free_seq(0)


def _prefill(backend: LlamaCppBackend, seq: int, tokens: list[int]) -> None:
    step = backend.info.max_batch_tokens
    for s in range(0, len(tokens), step):
        part = tokens[s : s + step]
        assert backend.decode(part, range(s, s + len(part)), [seq] * len(part), [False] * len(part))


def _next_logits(backend: LlamaCppBackend, seq: int, token: int, pos: int) -> np.ndarray:
    """The logits after feeding `token` at `pos` to `seq` alone; the position is then
    dropped again."""
    assert backend.decode([token], [pos], [seq], [True])
    sampler = backend.new_sampler(SamplingParams(temperature=0.0))
    try:
        row = np.array(sampler.logits(0))  # type: ignore[attr-defined]
    finally:
        sampler.close()
    backend.trim_seq(seq, pos)
    return row


def test_moves_and_prefix_copies_between_streams_keep_the_state(split: LlamaCppBackend) -> None:
    tokens = split.tokenize(PROMPT, add_special=True, parse_special=True)
    n = len(tokens)
    try:
        _prefill(split, 3, tokens[:-1])
        before = _next_logits(split, 3, tokens[-1], n - 1)
        split.move_seq(3, 1)
        full = split.save_seq(1)
        assert full is not None and len(full) > 100_000  # 23 KB a position
        assert len(split.save_seq(3) or b"") < 64  # the old slot is empty: a bare header
        assert np.array_equal(_next_logits(split, 1, tokens[-1], n - 1), before)
        # a prefix copied into another stream continues exactly like the original
        keep = n - 10
        assert split.copy_prefix(1, 2, keep)
        split.trim_seq(1, keep)
        original = _next_logits(split, 1, tokens[keep], keep)
        assert np.array_equal(_next_logits(split, 2, tokens[keep], keep), original)
        assert not np.array_equal(original, before)  # a different position, other logits
    finally:
        for s in range(4):
            split.free_seq(s)


@contextlib.asynccontextmanager
async def split_engine(model_path: Path, max_seqs: int) -> AsyncIterator[AsyncEngine]:
    """A running engine on a split KV cache (the host prefix store on, as AsyncEngine has it)."""
    engine = AsyncEngine(
        llamacpp_loader()(bundled_spec(model_path, max_seqs=max_seqs, kv_split=True))
    )
    engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def _answer(engine: AsyncEngine, rid: str, prompt: tuple[int, ...], n: int) -> list[int]:
    req = GenerateRequest(
        rid, prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    )
    outs: list[GenerationOutput] = [o async for o in engine.generate(req)]
    assert outs[-1].usage.completion_tokens == n
    return [t for o in outs for t in o.token_ids]


async def test_a_sequence_moved_into_a_freed_slot_answers_as_if_alone(model_path: Path) -> None:
    async with split_engine(model_path, 4) as engine:
        prompts = [
            tuple(await engine.tokenize(PROMPT.replace("the sea", topic)))
            for topic in ("the sea", "a forest", "the mountains")
        ]
        alone = await _answer(engine, "alone", prompts[2], 40)
        # slots 0, 1, 2: the one in slot 1 ends early and the one in slot 2 moves into it
        a, b, c = await asyncio.gather(
            _answer(engine, "a", prompts[0], 40),
            _answer(engine, "b", prompts[1], 5),
            _answer(engine, "c", prompts[2], 40),
        )
        assert len(a) == 40 and len(b) == 5
        assert engine.stats().kv_moves >= 1
        assert c == alone
        assert engine.stats().running == 0


async def test_a_prefix_shared_with_a_running_sequence_is_copied(model_path: Path) -> None:
    async with split_engine(model_path, 4) as engine:
        prompt = tuple(await engine.tokenize(PROMPT))
        cold = await _answer(engine, "cold", prompt, 12)
        req = GenerateRequest("holder", prompt, SamplingParams(max_tokens=60, temperature=0.0))
        holder = engine.generate(req)
        await holder.__anext__()  # running: its prompt is in its stream
        second = GenerateRequest("copy", prompt, SamplingParams(max_tokens=12, temperature=0.0))
        outs = [o async for o in engine.generate(second)]
        await holder.aclose()
        assert outs[-1].usage.cached_tokens == len(prompt) - 1
        assert [t for o in outs for t in o.token_ids] == cold


async def test_a_prompt_longer_than_a_slot_is_a_400(model_path: Path) -> None:
    spec = bundled_spec(model_path, max_seqs=4, kv_cells=1024, kv_split=True)
    async with AppHandle(Settings(), ModelRegistry([spec], llamacpp_factory())) as h:
        long_prompt = "word " * 400  # over the 256 tokens of a slot
        r = await h.client.post(
            "/v1/completions",
            json={"model": spec.name, "prompt": long_prompt, "max_tokens": 4},
        )
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "prompt" and "256" in err["message"]
        ok = await h.client.post(
            "/v1/completions", json={"model": spec.name, "prompt": "Hi", "max_tokens": 4}
        )
        assert ok.status_code == 200


async def test_sixteen_concurrent_requests_finish_with_exact_counts(model_path: Path) -> None:
    async with split_engine(model_path, 16) as engine:
        prompt = tuple(await engine.tokenize(PROMPT))
        outs = await asyncio.gather(*(_answer(engine, f"r{i}", prompt, 24) for i in range(16)))
        assert all(len(o) == 24 for o in outs)
        assert engine.detokenize(outs[0]).strip()  # text, not nothing
        assert len(set(map(tuple, outs))) == 1  # greedy, same prompt: the same answer in every slot
        assert engine.stats().running == 0


async def test_a_prefix_of_a_finished_request_is_restored(model_path: Path) -> None:
    async with split_engine(model_path, 4) as engine:
        prompt = tuple(await engine.tokenize(PROMPT))
        first = GenerateRequest("first", prompt, SamplingParams(max_tokens=12, temperature=0.0))
        cold_outs = [o async for o in engine.generate(first)]
        assert cold_outs[-1].usage.cached_tokens == 0
        again = GenerateRequest("again", prompt, SamplingParams(max_tokens=12, temperature=0.0))
        outs = [o async for o in engine.generate(again)]
        assert outs[-1].usage.cached_tokens > 0
        cold = [t for o in cold_outs for t in o.token_ids]
        assert [t for o in outs for t in o.token_ids] == cold
