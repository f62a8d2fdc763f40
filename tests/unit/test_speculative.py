"""Speculative decoding (prompt lookup) on the fake backend: the drafter, the scheduler's
drafts, verification, rollback of rejected drafts and the KV ledger, exact outputs."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
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
from inferd.engine.speculative import (
    LONG_MATCH,
    MAX_PAUSE,
    MIN_DRAFT,
    DraftStep,
    NgramDrafter,
    NgramState,
    StepCosts,
)
from inferd.engine.types import GenerateRequest, GenerationOutput, SamplingParams
from inferd.errors import ConfigError
from inferd.models.engines import BackendEngineFactory
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec, specs_from_settings
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


def costs(**seconds: float) -> StepCosts:
    """Step costs measured as given: costs(t1=0.01, t9=0.03) for 1 and 9 tokens."""
    measured = StepCosts()
    for size, t in seconds.items():
        measured.observe(int(size[1:]), t)
    return measured


def free_step() -> DraftStep:
    """A one-sequence step where tokens cost nothing more: every draft pays."""
    return DraftStep(costs(t1=0.01, t64=0.01), 1, 1)


def propose(drafter: NgramDrafter, tokens: list[int], limit: int) -> tuple[int, ...]:
    return drafter.propose(seq_of(tokens, drafter), limit, free_step())


# ---- the drafter ----------------------------------------------------------------------------


def test_draft_follows_the_latest_occurrence_of_the_longest_ngram() -> None:
    drafter = NgramDrafter(max_draft=4, ngram_min=1, ngram_max=3)
    # (7, 8, 9) occurs at 0 (then 1, 2 ...) and at 6 (then 3, 4 ...); (8, 9) also at 11
    tokens = [7, 8, 9, 1, 2, 0, 7, 8, 9, 3, 4, 8, 9, 5, 0, 7, 8, 9]
    assert propose(drafter, tokens, 10) == (3, 4, 8, 9)
    assert propose(drafter, tokens, 2) == (3, 4)  # the step's limit
    # no (0, 8, 9) before: the latest (8, 9), at 11
    assert propose(drafter, [*tokens[:-3], 8, 9], 10) == (5, 0, 8, 9)
    assert propose(drafter, [1, 2, 3, 4, 5], 10) == ()  # nothing repeats
    assert propose(drafter, tokens, 1) == ()  # less than MIN_DRAFT
    assert propose(drafter, [4, 3, 3, 3], 10) == ()  # one token follows (3, 3)


def test_lookup_tells_how_long_the_match_is() -> None:
    drafter = NgramDrafter(max_draft=4, ngram_min=2, ngram_max=3)
    state = drafter.start()
    # the 3-gram (3, 4, 5) matched, and before it 2 (and 1) too: a match of LONG_MATCH
    tokens = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5]
    assert drafter.lookup(state, tokens, 4) == ((6, 7, 1, 2), LONG_MATCH)
    # only the 2-gram (4, 5) matches, and the tokens before it differ (9 against 3)
    assert drafter.lookup(drafter.start(), [*tokens[:7], 9, 4, 5], 4) == ((6, 7, 9, 4), 2)
    assert drafter.lookup(drafter.start(), [1, 2, 3], 4) == ((), 0)


def test_the_index_grows_with_the_sequence_as_if_built_at_once() -> None:
    rng = random.Random(5)
    tokens = [rng.randrange(6) for _ in range(300)]
    drafter = NgramDrafter(max_draft=8, ngram_min=1, ngram_max=4)
    grown = seq_of(tokens[:20], drafter)
    assert isinstance(grown.drafting, NgramState)
    for t in tokens[20:]:
        drafter.lookup(grown.drafting, grown.tokens, 8)
        grown.tokens.append(t)
    whole = seq_of(tokens, drafter)
    assert isinstance(whole.drafting, NgramState)
    assert drafter.lookup(grown.drafting, grown.tokens, 8) == drafter.lookup(
        whole.drafting, whole.tokens, 8
    )
    assert grown.drafting.index == whole.drafting.index
    for n, index in whole.drafting.index.items():  # each n-gram -> after its latest occurrence
        for i in range(len(tokens) - n):
            assert index[tuple(tokens[i : i + n])] >= i + n


def test_step_costs_are_measured_per_size_and_interpolated() -> None:
    assert StepCosts().ratio(1, 8) == pytest.approx(3.0)  # the prior: 0.25 a token
    one = costs(t1=0.01)
    assert one.ratio(1, 8) == pytest.approx(3.0)  # one size measured: the prior's shape
    measured = costs(t1=0.010, t3=0.014, t9=0.026)
    assert measured.ratio(1, 2) == pytest.approx(1.4)
    assert measured.ratio(1, 5) == pytest.approx(2.0)  # 6 tokens: between 3 and 9
    assert measured.ratio(1, 11) == pytest.approx(3.2)  # 12: on from 9 at the mean slope
    assert measured.ratio(3, 6) == pytest.approx(0.026 / 0.014)
    # a dear last token (4 -> 5) does not make every longer step look dear: beyond the
    # largest measured size the slope is the mean one from the smallest
    bumpy = costs(t1=0.010, t4=0.022, t5=0.030)
    assert bumpy.ratio(1, 8) == pytest.approx((0.030 + 4 * 0.005) / 0.010)
    assert costs(t4=0.02, t8=0.03).ratio(2, 0) == 1  # below the smallest: the two smallest
    assert costs(t4=0.02, t8=0.03).cost(2) == pytest.approx(0.015)
    drifting = costs(t1=0.010)
    for _ in range(200):  # a running mean: the machine got slower
        drifting.observe(1, 0.020)
    assert drifting.cost(1) == pytest.approx(0.020, rel=1e-3)


def test_draft_length_weighs_acceptance_against_the_cost_of_tokens() -> None:
    cheap = costs(t1=0.010, t17=0.012)  # a GPU: tokens in a step are almost free
    cpu = costs(t1=0.010, t9=0.030)  # a CPU: a token costs a quarter of a step
    assert DraftStep(cheap, 1, 1).choose(0.9, 16)[0] == 16
    assert DraftStep(cheap, 1, 1).choose(0.5, 16)[0] >= 4  # where a token more is still worth it
    assert DraftStep(cpu, 1, 1).choose(0.97, 16)[0] >= 8  # quoting: long drafts pay
    k, gain = DraftStep(cpu, 1, 1).choose(0.8, 16)
    assert 2 <= k <= 5 and gain > 1.3  # short ones when more are rejected
    assert DraftStep(cpu, 1, 1).choose(0.3, 16)[1] < 1  # free writing: none pays
    # beside seven other decoding sequences a draft slows all eight: it pays less
    busy = costs(t8=0.020, t16=0.040)
    assert DraftStep(busy, 8, 8).choose(0.8, 8)[1] < 1.05 < DraftStep(cpu, 1, 1).choose(0.8, 8)[1]


def test_a_sequence_probes_after_longer_pauses_while_drafts_do_not_pay() -> None:
    drafter = NgramDrafter(max_draft=8, ngram_min=1, ngram_max=1)
    cpu = costs(t1=0.010, t9=0.030)
    seq = seq_of([*range(1, 10), *range(1, 10), 1], drafter)  # every lookup: 8 tokens
    state = seq.drafting
    assert state is not None
    made: list[tuple[int, int, bool]] = []  # (step, tokens, a probe)
    for i in range(210):  # every draft wholly rejected
        draft = drafter.propose(seq, 8, DraftStep(cpu, 1, 1))
        if draft:
            made.append((i, len(draft), state.probing))
            state.record(len(draft), 0)
    assert made[0][1] > MIN_DRAFT and not made[0][2]  # the prior: a draft worth making
    probes = [(i, n) for i, n, probe in made if probe]
    assert len(made) - len(probes) <= 2  # the estimate soon says no
    assert {n for _, n in probes} == {MIN_DRAFT}
    gaps = [b - a - 1 for (a, _), (b, _) in itertools.pairwise(probes)]
    assert gaps == [1, 2, 4, 8, 16, 32, MAX_PAUSE, MAX_PAUSE]
    # probes wholly accepted: the estimate recovers, drafts are no longer probes, and grow
    lengths = []
    while len(lengths) < 20:
        draft = drafter.propose(seq, 8, DraftStep(cpu, 1, 1))
        if draft:
            lengths.append(len(draft))
            state.record(len(draft), len(draft))
    assert lengths[-1] == 8 and state.probes == 0 and state.strong.rate > 0.9
    assert lengths == sorted(lengths)


def test_after_short_matches_drafts_stop_once_they_fail_and_long_ones_still_draft() -> None:
    """Free text: a two-token match is chance. Once drafts after short matches are seen
    to fail, none are made after them, not even probes; a long match is drafted on its
    own estimate."""
    drafter = NgramDrafter(max_draft=8, ngram_min=2, ngram_max=4)
    cpu = costs(t1=0.010, t9=0.030)
    seq = seq_of([50, 1, 2, 3], drafter)
    state = seq.drafting
    assert state is not None
    made = []
    for i in range(200):  # "... x 1 2": the 2-gram (1, 2) again after a new token x
        seq.tokens += [100 + i, 1, 2]
        draft = drafter.propose(seq, 8, DraftStep(cpu, 1, 1))
        if draft:
            made.append(i)
            state.record(len(draft), 0)
        seq.tokens.append(200 + i)  # not what was drafted
    assert 1 <= len(made) <= 2 and made == list(range(len(made)))  # the prior's, then none
    assert state.weak.rate < 0.5 and state.pause == 0
    seq.tokens += [50, 1, 2, 3]  # the prompt's first four tokens again: a long match
    draft = drafter.propose(seq, 8, DraftStep(cpu, 1, 1))
    assert draft == (100, 1, 2, 200, 101, 1, 2, 201)[: len(draft)] and len(draft) >= MIN_DRAFT
    assert not state.probing  # the long matches' estimate is still the prior's: worth it


def test_rare_probes_where_tokens_cost_more_than_a_draft_could_give() -> None:
    # a token more in a step costs more than a step: not even drafts wholly accepted pay
    drafter = NgramDrafter(max_draft=8, ngram_min=1, ngram_max=1)
    dear = costs(t1=0.010, t9=0.100)
    seq = seq_of([*range(1, 10), *range(1, 10), 1], drafter)
    made = []
    for i in range(200):
        draft = drafter.propose(seq, 8, DraftStep(dear, 1, 1))
        if draft:
            made.append((i, len(draft)))
            assert seq.drafting is not None
            seq.drafting.record(len(draft), len(draft))  # wholly accepted, yet not worth it
    assert [i for i, _ in made] == [0, 2, 5, 10, 19, 36, 69, 134, 199]  # waits 1, 2, 4 ... 64
    assert {n for _, n in made} == {MIN_DRAFT}


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
    sched.step_costs = free_step().costs  # every draft as long as it can be
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
    """Where a step's tokens cost time (as on a CPU) and drafts after short matches are
    rejected, a sequence soon stops drafting."""
    # "q" then a new letter each time: every 1-gram lookup of "q" guesses the letter that
    # followed the last "q", and is wrong
    # (never "q" itself as the letter: "qq" would make a guess right)
    reply = "".join(f"q{chr(c)}" for c in range(ord("A"), ord("z")) if chr(c) != "q")
    drafter = NgramDrafter(max_draft=8, ngram_min=1, ngram_max=1)
    # a token in a step costs twice the step's base: far beyond a loaded machine's timing noise
    spec = engines(drafter, reply=reply, step_delay=0.002, token_delay=0.004)
    plain = engines(None, reply=reply)
    outs = await generate(spec, "hi", max_tokens=110)
    assert summary(outs) == summary(await generate(plain, "hi", max_tokens=110))
    usage = outs[-1].usage
    assert usage.draft_accepted == 0
    # Every lookup of "q" found a match, each of one token (weak): a draft or two on the
    # prior's estimate, then none (no probes after short matches)
    assert 0 < usage.draft_tokens <= 2 * 8


async def test_long_drafts_where_they_are_accepted_even_if_tokens_cost(engines) -> None:  # type: ignore[no-untyped-def]
    spec = engines(NgramDrafter(max_draft=8), reply=REPLY, step_delay=0.002, token_delay=0.001)
    outs = await generate(spec, QUOTE, max_tokens=200)
    usage = outs[-1].usage
    assert usage.draft_accepted >= len(REPLY) / 2  # (timings under load are noisy)
    assert spec.stats().steps <= len(REPLY) / 2


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


def test_a_draft_model_is_named_by_path_or_by_a_configured_model(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="speculative_draft"):
        ModelConfig(path=Path("m.gguf"), speculative="draft")
    big, small = tmp_path / "big.gguf", tmp_path / "small.gguf"
    big.write_bytes(b"GGUF")
    small.write_bytes(b"GGUF")

    def draft_of(draft: str) -> str | None:
        models = [
            ModelConfig(path=big, speculative="draft", speculative_draft=draft),
            ModelConfig(path=small, name="tiny", aliases=["t"]),
        ]
        return specs_from_settings(Settings(models=models))[0].config.speculative_draft

    assert draft_of("tiny") == draft_of("t") == draft_of(str(small)) == str(small)
    with pytest.raises(ConfigError, match="'nope' is neither a GGUF file nor"):
        draft_of("nope")
    with pytest.raises(ConfigError, match="needs speculative_draft"):  # a flag, unvalidated
        specs_from_settings(Settings(), {"speculative": "draft"})


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
