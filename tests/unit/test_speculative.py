"""Speculative decoding (prompt lookup) on the fake backend: the drafter, the scheduler's
drafts, verification, rollback of rejected drafts and the KV ledger, exact outputs."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from inferd.config import ModelConfig, Settings
from inferd.engine.backends.fake import FakeBackend
from inferd.engine.client import AsyncEngine
from inferd.engine.detokenizer import Detokenizer
from inferd.engine.scheduler import Scheduler, StepPlan
from inferd.engine.sequence import Chunk, Sequence
from inferd.engine.speculative import MAX_PAUSE, MIN_DRAFT, NgramDrafter
from inferd.engine.types import GenerateRequest, GenerationOutput, SamplingParams
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from tests.conftest import AppHandle, wait_for

REPLY = "the quick brown fox jumps over the lazy dog, then naps in the sun"


def encode(text: str) -> tuple[int, ...]:
    return tuple(b + 1 for b in text.encode())  # the fake backend's tokens


def seq_of(tokens: list[int], drafter: NgramDrafter, max_len: int = 10_000) -> Sequence:
    req = GenerateRequest("s", tuple(tokens))
    return Sequence(
        req,
        Detokenizer(lambda t: b""),
        max_len=max_len,
        tokens=list(tokens),
        n_prompt=len(tokens),
        drafting=drafter.start(),
    )


# ---- the drafter ----------------------------------------------------------------------------


def test_draft_follows_the_latest_occurrence_of_the_longest_ngram() -> None:
    drafter = NgramDrafter(max_draft=4, ngram_min=1, ngram_max=3)
    # (7, 8, 9) occurs at 0 (then 1, 2 ...) and at 6 (then 3, 4 ...); (8, 9) also at 11
    tokens = [7, 8, 9, 1, 2, 0, 7, 8, 9, 3, 4, 8, 9, 5, 0, 7, 8, 9]
    assert drafter.propose(seq_of(tokens, drafter), 10) == (3, 4, 8, 9)
    assert drafter.propose(seq_of(tokens, drafter), 2) == (3, 4)  # the step's limit
    # no (0, 8, 9) before: the latest (8, 9), at 11
    assert drafter.propose(seq_of([*tokens[:-3], 8, 9], drafter), 10) == (5, 0, 8, 9)
    assert drafter.propose(seq_of([1, 2, 3, 4, 5], drafter), 10) == ()  # nothing repeats
    assert drafter.propose(seq_of(tokens, drafter), 1) == ()  # less than MIN_DRAFT
    assert drafter.propose(seq_of([4, 3, 3, 3], drafter), 10) == ()  # one token follows (3, 3)


def test_the_index_grows_with_the_sequence_as_if_built_at_once() -> None:
    rng = random.Random(5)
    tokens = [rng.randrange(6) for _ in range(300)]
    drafter = NgramDrafter(max_draft=8, ngram_min=1, ngram_max=4)
    grown = seq_of(tokens[:20], drafter)
    for t in tokens[20:]:
        drafter.propose(grown, 8)
        grown.tokens.append(t)
        assert grown.drafting is not None
        grown.drafting.pause = 0
    whole = seq_of(tokens, drafter)
    assert drafter.propose(grown, 8) == drafter.propose(whole, 8)
    assert grown.drafting is not None and whole.drafting is not None
    assert grown.drafting.index == whole.drafting.index
    for n, index in whole.drafting.index.items():  # each n-gram -> after its latest occurrence
        for i in range(len(tokens) - n):
            assert index[tuple(tokens[i : i + n])] >= i + n


def test_drafts_shrink_after_a_miss_and_pause_longer_after_each_failure() -> None:
    state = NgramDrafter(max_draft=8).start()
    assert state.length == 8
    state.record(8, 3)
    assert state.length == 4 and state.pause == 0
    state.record(4, 4)
    assert state.length == 8
    pauses = []
    for _ in range(9):
        state.record(2, 0)
        pauses.append(state.pause)
    assert pauses == [1, 2, 4, 8, 16, 32, 64, MAX_PAUSE, MAX_PAUSE]
    assert state.length == MIN_DRAFT
    state.record(2, 2)
    assert state.failures == 0 and state.length == 4
    state.record(4, 1)
    assert state.length == MIN_DRAFT  # never a one-token draft
    assert (state.proposed, state.accepted) == (8 + 4 + 9 * 2 + 2 + 4, 3 + 4 + 2 + 1)


# ---- the scheduler and the backend ----------------------------------------------------------


def step(sched: Scheduler, backend: FakeBackend) -> tuple[StepPlan, list[Chunk]]:
    """One engine step by hand: plan, run, commit, append what was accepted and sampled.
    Returns the plan and its chunks that sampled."""
    plan = sched.schedule()
    sampled = backend.execute(plan.chunks)
    assert sampled is not None
    sched.commit(plan)
    sampling = [c for c in plan.chunks if c.samples]
    for c, token in zip(sampling, sampled, strict=True):
        c.seq.tokens += [*c.draft[: c.accepted], token]
    return plan, sampling


def test_a_rejected_draft_leaves_no_cells_and_the_ledger_exact() -> None:
    """Drafts ride in the decoding chunk; the accepted ones keep their KV, the rest are
    removed when the step is committed, and the pool's count matches the cells."""
    backend = FakeBackend(reply="abcdefgh", max_seqs=2, kv_cells=200)
    drafter = NgramDrafter(max_draft=8, ngram_min=2, ngram_max=2)
    sched = Scheduler(backend.pool, max_seqs=2, max_batch_tokens=32, drafter=drafter)
    seq = seq_of(list(encode("xx abcdeQQQ. ")), drafter)
    sched.add(seq)
    drafted = []
    for _ in range(12):
        _, sampling = step(sched, backend)
        drafted += [(c.draft, c.accepted) for c in sampling]
        assert backend.cells_used == backend.pool.used == seq.n_computed == len(seq.tokens) - 1
    assert b"".join(map(backend.token_piece, seq.tokens[seq.n_prompt :])) == b"abcdefgh"
    # after " a" the prompt's "bcdeQQQ." was drafted: "bcde" accepted, "f" sampled, not "Q"
    assert (encode("bcdeQQQ."), 4) in drafted


def test_drafts_take_only_what_prompts_leave_of_the_step() -> None:
    backend = FakeBackend(reply="abcdefgh" * 8, max_seqs=2, kv_cells=500)
    drafter = NgramDrafter(max_draft=8, ngram_min=2, ngram_max=2)
    sched = Scheduler(backend.pool, max_seqs=2, max_batch_tokens=12, drafter=drafter)
    a = seq_of(list(encode("abcdefgh" * 3)), drafter)
    sched.add(a)
    while not a.decoding:
        step(sched, backend)
    b = seq_of(list(range(1, 40)), drafter)
    sched.add(b)
    beside_prompt = []
    while not b.decoding:
        pending = b.n_pending
        plan, _ = step(sched, backend)
        assert plan.n_tokens <= 12
        [fed] = [c.end - c.start for c in plan.chunks if c.seq is b]
        assert fed == min(11, pending - 1 if pending > 1 else 1)  # the prompt first
        beside_prompt += [len(c.draft) for c in plan.chunks if c.seq is a]
    assert beside_prompt[0] == 0 and max(beside_prompt) > 0  # drafts with what was left
    assert backend.cells_used == backend.pool.used == a.n_computed + b.n_computed


# ---- the engine -----------------------------------------------------------------------------


@pytest.fixture
async def engines():  # type: ignore[no-untyped-def]
    made: list[AsyncEngine] = []

    def make(drafter: NgramDrafter | None, **kwargs: object) -> AsyncEngine:
        e = AsyncEngine(FakeBackend(**kwargs), drafter=drafter)  # type: ignore[arg-type]
        e.start()
        made.append(e)
        return e

    yield make
    for e in made:
        await e.stop()


async def generate(engine: AsyncEngine, prompt: str, **sampling: object) -> list[GenerationOutput]:
    req = GenerateRequest("r", encode(prompt), SamplingParams(**sampling))  # type: ignore[arg-type]
    return [o async for o in engine.generate(req)]


def summary(outs: list[GenerationOutput]) -> tuple[object, ...]:
    last = outs[-1]
    tokens = tuple(t for o in outs for t in o.token_ids)
    text = "".join(o.text for o in outs)
    return text, tokens, last.finish_reason, last.usage.completion_tokens


QUOTE = f"Repeat this text exactly: {REPLY}\n"


@pytest.mark.parametrize(
    "sampling",
    [
        {"max_tokens": 200},
        {"max_tokens": 23},  # cut in the middle of an accepted draft
        {"max_tokens": 200, "stop": ("lazy",)},  # a stop string inside accepted drafts
        {"max_tokens": 200, "stop": ("dog,",)},
        {"max_tokens": 150, "ignore_eos": True},  # the reply again and again
    ],
)
async def test_output_is_the_same_with_drafts(engines, sampling: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    plain = engines(None, reply=REPLY)
    spec = engines(NgramDrafter(max_draft=8), reply=REPLY)
    expected = summary(await generate(plain, QUOTE, **sampling))
    outs = await generate(spec, QUOTE, **sampling)
    assert summary(outs) == expected
    assert all(len(o.token_ids) <= 1 for o in outs)  # one output per token
    usage = outs[-1].usage
    assert usage.draft_accepted > 0 and usage.draft_tokens >= usage.draft_accepted
    stats = spec.stats()
    assert (stats.draft_tokens_total, stats.draft_accepted_total) == (
        usage.draft_tokens,
        usage.draft_accepted,
    )
    # fewer steps: several tokens accepted in one
    assert stats.steps < plain.stats().steps
    backend: FakeBackend = spec.backend  # type: ignore[assignment]
    # finished: its prefix saved to host memory, its cells freed (after the outputs went)
    assert await wait_for(lambda: backend.cells_used == 0, 1.0)
    assert spec.stats().kv_cells_used == 0


async def test_concurrent_requests_with_and_without_drafts(engines) -> None:  # type: ignore[no-untyped-def]
    """Drafting sequences (quoting) beside ones that find nothing to draft, and one that asks
    for log probabilities (never drafted): all exact, and the ledger exact at the end."""
    spec = engines(NgramDrafter(max_draft=6), reply=REPLY, max_seqs=4, step_delay=0.001)
    plain = engines(None, reply=REPLY, max_seqs=4)
    prompts = [QUOTE, "no repeats here", QUOTE + "again", "logprobs"]
    extra: list[dict[str, object]] = [{}, {}, {"stop": ("sun",)}, {"logprobs": 2}]

    async def both(i: int) -> None:
        kw = {"max_tokens": 80, **extra[i]}
        req = GenerateRequest(f"r{i}", encode(prompts[i]), SamplingParams(**kw))  # type: ignore[arg-type]
        got = [o async for o in spec.generate(req)]
        want = [o async for o in plain.generate(req)]
        assert summary(got) == summary(want)
        if "logprobs" in extra[i]:
            assert [o.logprobs for o in got] == [o.logprobs for o in want]
            assert got[-1].usage.draft_tokens == 0

    await asyncio.gather(*(both(i) for i in range(4)))
    assert spec.stats().draft_accepted_total > 0
    backend: FakeBackend = spec.backend  # type: ignore[assignment]
    assert await wait_for(lambda: backend.cells_used == 0, 1.0)
    assert spec.stats().kv_cells_used == 0


async def test_drafting_pauses_when_drafts_keep_failing(engines) -> None:  # type: ignore[no-untyped-def]
    # "q" then a new letter each time: every 1-gram lookup of "q" guesses the letter that
    # followed the last "q", and is wrong
    reply = "".join(f"q{chr(c)}" for c in range(ord("A"), ord("z")))
    spec = engines(NgramDrafter(max_draft=8, ngram_min=1, ngram_max=1), reply=reply)
    plain = engines(None, reply=reply)
    outs = await generate(spec, "hi", max_tokens=110)
    assert summary(outs) == summary(await generate(plain, "hi", max_tokens=110))
    usage = outs[-1].usage
    assert usage.draft_accepted == 0
    # 55 lookups of "q" found a match; the pauses (1, 2, 4, ...) let only a few draft
    assert 0 < usage.draft_tokens <= 8 + 7 * MIN_DRAFT


async def test_a_backend_that_cannot_verify_drafts_gets_none(engines) -> None:  # type: ignore[no-untyped-def]
    backend = FakeBackend(reply=REPLY)
    backend.info = dataclasses.replace(backend.info, drafts=False)
    engine = AsyncEngine(backend, drafter=NgramDrafter())
    engine.start()
    try:
        req = GenerateRequest("r", encode(QUOTE), SamplingParams(max_tokens=40))
        outs = [o async for o in engine.generate(req)]
        assert "".join(o.text for o in outs) == REPLY[:40]
        assert engine.stats().draft_tokens_total == 0
    finally:
        await engine.stop()


async def test_a_step_without_room_for_its_drafts_runs_without_them(engines) -> None:  # type: ignore[no-untyped-def]
    # the cache has room for the tokens but not for the drafts (llama.cpp's unified cache,
    # fragmented): the step runs again without drafts instead of preempting anything
    spec = engines(NgramDrafter(max_draft=8), reply=REPLY, no_room_for_drafts=True)
    plain = engines(None, reply=REPLY)
    outs = await generate(spec, QUOTE, max_tokens=60)
    assert summary(outs) == summary(await generate(plain, QUOTE, max_tokens=60))
    stats = spec.stats()
    assert stats.preemptions == 0 and stats.draft_tokens_total == 0


def test_ngram_sizes_are_checked() -> None:
    with pytest.raises(ValidationError, match="speculative_ngram_min"):
        ModelConfig(path=Path("m.gguf"), speculative_ngram_min=5, speculative_ngram_max=3)
    with pytest.raises(ValidationError):
        ModelConfig(path=Path("m.gguf"), speculative="lookahead")  # type: ignore[arg-type]


async def test_configured_per_model_and_shown_in_timings_and_metrics() -> None:
    spec = ModelSpec(
        "fake", Path("fake.gguf"), ModelConfig(path=Path("fake.gguf"), speculative="ngram"), ()
    )
    factory = BackendEngineFactory(lambda _spec: FakeBackend(reply=REPLY))
    async with AppHandle(Settings(), ModelRegistry([spec], factory)) as app:
        body = {
            "model": "fake",
            "messages": [{"role": "user", "content": f"Repeat: {REPLY}"}],
            "max_tokens": 100,
        }
        r = await app.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == REPLY
        timings = r.json()["timings"]
        assert 0 < timings["draft_accepted"] <= timings["draft_tokens"]
        metrics = (await app.client.get("/metrics")).text
        counter = 'inferd_engine_draft_accepted_tokens_total{model="fake"}'
        assert f"{counter} {timings['draft_accepted']}.0" in metrics
    plain = ModelSpec("fake", Path("fake.gguf"), ModelConfig(path=Path("fake.gguf")), ())
    async with AppHandle(Settings(), ModelRegistry([plain], factory)) as app:
        r = await app.client.post("/v1/chat/completions", json=body)
        assert r.json()["timings"].get("draft_tokens") is None
