"""Speculative decoding (prompt lookup) on the bundled model: the same tokens as decoding
without it, greedy and seeded, alone and beside other requests; stops and max_tokens
inside accepted drafts are exact; the acceptance shows in the stats, the OpenAI timings
and /metrics.

llama.cpp's CPU kernels compute a micro-batch of one token differently from one of two or
more (on this model up to ~0.4 in a logit; measured while building this), while every
micro-batch of two or more computes each row bit-identically whatever else it holds. A
drafted sequence feeds two tokens or more, so alone, a drafting sequence and a plain one would
see different numerics (greedy answers then part at the first near-tie, as they already do
between a request alone and two together). The comparisons therefore run `beside` a
companion request that keeps every micro-batch at two tokens or more in both engines (with the
split KV cache llama.cpp cuts a step into micro-batches of equal tokens per sequence: the
companion asks for log probabilities, so it never drafts, and drafts are at least two tokens,
so a drafted sequence's tokens beyond the companion's one are never one alone): what is
compared is then the speculation itself, not llama.cpp's one-token kernel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from inferd.config import Settings
from inferd.engine.backends.llamacpp import LlamaCppBackend, NumpySampler
from inferd.engine.client import AsyncEngine
from inferd.engine.detokenizer import Detokenizer
from inferd.engine.scheduler import Scheduler
from inferd.engine.sequence import Chunk, Sequence
from inferd.engine.speculative import Drafter, DraftState, DraftStep, NgramDrafter, StepCosts
from inferd.engine.types import FinishReason, GenerateRequest, GenerationOutput, SamplingParams
from inferd.errors import BackendError
from inferd.models.loading import llamacpp_factory, llamacpp_loader
from inferd.models.registry import ModelRegistry
from tests.conftest import AppHandle, bundled_spec

TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He polished the "
    "great lens, trimmed the wick, and wrote the weather in a leather notebook: wind from "
    "the north-west, a heavy swell, two fishing boats returning late. In forty years he had "
    "never missed a night."
)
CODE = (
    "def total(items):\n    result = 0\n    for item in items:\n        result = result + "
    "item.price * item.count\n    return result\n"
)


def chat(user: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


QUOTE = chat(f"Repeat this text exactly, word for word:\n\n{TEXT}")
REWRITE = chat(f"Rename the function `total` to `order_total` in this code:\n\n{CODE}")
STORY = chat("Write a short story about a dragon who is afraid of the dark.")
COUNT = chat("Count from one to one thousand in words, one number per line.")


@contextlib.asynccontextmanager
async def beside(engine: AsyncEngine) -> AsyncIterator[None]:
    """A companion request decoding while the block runs (see the module docstring)."""
    tokens = tuple(await engine.tokenize(COUNT))
    params = SamplingParams(temperature=0.0, max_tokens=1800, ignore_eos=True, logprobs=0)
    decoding = asyncio.Event()

    async def run() -> None:
        async for _ in engine.generate(GenerateRequest("companion", tokens, params)):
            decoding.set()

    task = asyncio.create_task(run())
    await decoding.wait()
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Eager:
    """A drafter that drafts as long as it may whatever a step costs on this machine: what
    these tests check is the verification (the cost rule has its own tests, on the fake
    backend, where costs are what the test makes them)."""

    def __init__(self, drafter: Drafter) -> None:
        self.drafter = drafter

    def start(self) -> DraftState:
        return self.drafter.start()

    def draft(self, chunks: list[Chunk], spare: int, step: DraftStep) -> None:
        free = StepCosts()
        free.observe(1, 0.01)
        free.observe(64, 0.01)  # a token more in a step costs nothing
        self.drafter.draft(chunks, spare, DraftStep(free, step.tokens, step.expected))

    def drop(self, seq: Sequence) -> None:
        self.drafter.drop(seq)


@pytest.fixture(scope="module")
async def engines(model_path: Path) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """The same model twice, without and with prompt-lookup drafts."""
    spec = bundled_spec(model_path, max_seqs=8)
    plain = AsyncEngine(llamacpp_loader()(spec))
    drafting = AsyncEngine(llamacpp_loader()(spec), drafter=Eager(NgramDrafter(max_draft=8)))
    plain.start()
    drafting.start()
    try:
        yield plain, drafting
    finally:
        await plain.stop()
        await drafting.stop()


Answer = tuple[tuple[int, ...], str, FinishReason | None, int]


async def answer(engine: AsyncEngine, rid: str, prompt: str, **sampling: object) -> Answer:
    async with beside(engine):
        outs = await outputs(engine, rid, prompt, **sampling)
    last = outs[-1]
    tokens = tuple(t for o in outs for t in o.token_ids)
    return tokens, "".join(o.text for o in outs), last.finish_reason, last.usage.completion_tokens


async def outputs(
    engine: AsyncEngine, rid: str, prompt: str, **sampling: object
) -> list[GenerationOutput]:
    tokens = tuple(await engine.tokenize(prompt))
    req = GenerateRequest(rid, tokens, SamplingParams(**sampling))  # type: ignore[arg-type]
    return [o async for o in engine.generate(req)]


GREEDY = {"temperature": 0.0, "max_tokens": 120}


async def test_greedy_quote_is_token_identical_and_takes_fewer_steps(engines) -> None:  # type: ignore[no-untyped-def]
    plain, drafting = engines
    for prompt in (QUOTE, REWRITE):
        steps = (plain.stats().steps, drafting.stats().steps)
        want = await answer(plain, "p", prompt, **GREEDY)
        async with beside(drafting):
            outs = await outputs(drafting, "d", prompt, **GREEDY)
        got = (
            tuple(t for o in outs for t in o.token_ids),
            "".join(o.text for o in outs),
            outs[-1].finish_reason,
            outs[-1].usage.completion_tokens,
        )
        assert got == want
        usage = outs[-1].usage
        assert usage.draft_accepted >= usage.completion_tokens // 3, usage
        taken = (plain.stats().steps - steps[0], drafting.stats().steps - steps[1])
        assert taken[1] < taken[0] * 0.75, taken


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 0.8, "seed": 7, "max_tokens": 100},  # numpy sampler, seeded draws
        {"temperature": 0.7, "top_p": 0.9, "seed": 3, "max_tokens": 100},
        # llama.cpp's chain: penalties keep the tokens they saw, in order
        {"temperature": 0.0, "repetition_penalty": 1.1, "max_tokens": 100},
        {"temperature": 0.9, "frequency_penalty": 0.3, "seed": 11, "max_tokens": 100},
    ],
)
async def test_seeded_and_penalized_sampling_with_drafts(engines, sampling) -> None:  # type: ignore[no-untyped-def]
    """Seeded draws and penalties with drafts: the same seed gives the same answer again,
    drafts are accepted, the usage is exact. Not compared with the undrafted answer token
    for token: with the split KV cache llama.cpp computes the attention of several tokens of
    one sequence in a micro-batch (a drafted step) with other kernels than one token (plain
    decode), so the logits differ by float noise and a draw near a boundary can fall the
    other way (seen after 60-70 tokens here). The sampling itself is exact: the fake
    backend's tests hold it token for token, the backend contract greedy drafts on
    llama.cpp."""
    _, drafting = engines
    before = drafting.stats().draft_accepted_total
    got = await answer(drafting, "d", QUOTE, **sampling)
    assert await answer(drafting, "d", QUOTE, **sampling) == got
    assert got[3] == len(got[0]) and got[2] in (FinishReason.STOP, FinishReason.LENGTH)
    assert drafting.stats().draft_accepted_total > before


async def test_structured_output_with_drafts(engines) -> None:  # type: ignore[no-untyped-def]
    """A grammar stays on with drafts (each accepted token goes through it in order): the
    answer is the JSON the grammar allows."""
    _, drafting = engines
    prompt = chat(f"Give this text as a JSON object with the key text:\n\n{TEXT}")
    sampling = {"temperature": 0.0, "max_tokens": 200, "json_mode": True}
    outs = await outputs(drafting, "d", prompt, **sampling)
    assert outs[-1].finish_reason is FinishReason.STOP
    assert isinstance(json.loads("".join(o.text for o in outs)), dict)
    assert outs[-1].usage.draft_tokens > 0  # drafts went through the grammar


@pytest.mark.parametrize(
    "cut",
    [{"max_tokens": 37}, {"max_tokens": 120, "stop": ("notebook",)}, {"stop": (" swell,",)}],
)
async def test_a_cut_inside_accepted_drafts_is_exact(engines, cut) -> None:  # type: ignore[no-untyped-def]
    plain, drafting = engines
    sampling = {**GREEDY, **cut}
    want = await answer(plain, "p", QUOTE, **sampling)
    async with beside(drafting):
        outs = await outputs(drafting, "d", QUOTE, **sampling)
    tokens = tuple(t for o in outs for t in o.token_ids)
    got = (tokens, "".join(o.text for o in outs), outs[-1].finish_reason)
    assert got == want[:3]
    assert outs[-1].usage.completion_tokens == want[3] == len(tokens)
    assert len(tokens) <= int(sampling["max_tokens"])  # type: ignore[call-overload]
    assert outs[-1].usage.draft_accepted > 0


async def test_concurrent_requests_mixed_with_undrafted_ones(engines) -> None:  # type: ignore[no-untyped-def]
    """Quoting and rewriting sequences (long drafts) decode in the same steps as free
    writing (few drafts) and a request for log probabilities (never drafted): each ends
    where it was asked to, with its usage exact, and the greedy quote is the undrafted
    one."""
    plain, drafting = engines
    cases: list[tuple[str, dict[str, object]]] = [
        (QUOTE, GREEDY),
        (REWRITE, GREEDY),
        (STORY, GREEDY),
        (QUOTE, {"temperature": 0.8, "seed": 5, "max_tokens": 80}),
        (STORY, {**GREEDY, "logprobs": 2, "max_tokens": 40}),
        (QUOTE, {**GREEDY, "max_tokens": 50, "stop": ("swell",)}),
    ]
    want = await answer(plain, "p", QUOTE, **GREEDY)
    before = drafting.stats()
    async with beside(drafting):
        got = await asyncio.gather(
            *(outputs(drafting, f"c{i}", p, **s) for i, (p, s) in enumerate(cases))
        )
    for g, (_, s) in zip(got, cases, strict=True):
        tokens = [t for o in g for t in o.token_ids]
        assert g[-1].usage.completion_tokens == len(tokens) <= int(s["max_tokens"])  # type: ignore[call-overload]
    assert tuple(t for o in got[0] for t in o.token_ids) == want[0]
    assert "swell" not in "".join(o.text for o in got[5])
    assert got[5][-1].finish_reason is FinishReason.STOP
    scored = [(o.token_ids[0], o.logprobs[0].token) for o in got[4] if o.logprobs]
    assert len(scored) >= 39 and all(t == lp for t, lp in scored)
    assert got[4][-1].usage.draft_tokens == 0  # log probabilities: never drafted
    after = drafting.stats()
    assert after.draft_accepted_total - before.draft_accepted_total > 50
    assert after.kv_cells_used <= after.kv_cells_total


async def test_timings_and_metrics_show_the_acceptance(model_path: Path) -> None:
    """Configured per model: the OpenAI timings carry the request's drafts, /metrics the
    model's counters."""
    spec = bundled_spec(model_path, speculative="ngram", speculative_max_draft=6)
    registry = ModelRegistry([spec], llamacpp_factory())
    async with AppHandle(Settings(), registry) as app:
        body = {
            "model": spec.name,
            "messages": [{"role": "user", "content": f"Repeat this text exactly:\n\n{TEXT}"}],
            "temperature": 0,
            "max_tokens": 80,
        }
        r = await app.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        timings = r.json()["timings"]
        assert 0 < timings["draft_accepted"] <= timings["draft_tokens"]
        metrics = (await app.client.get("/metrics")).text

        def counter(name: str) -> float:
            m = re.search(rf'^inferd_{name}_total{{model="{spec.name}"}} (\S+)$', metrics, re.M)
            assert m, name
            return float(m.group(1))

        assert counter("engine_draft_tokens") >= timings["draft_tokens"]
        assert counter("engine_draft_accepted_tokens") >= timings["draft_accepted"] > 0


# ---- a draft model --------------------------------------------------------------------------


def greedy_together(backend: LlamaCppBackend, prompts: list[str], drafts: bool) -> list[list[int]]:
    """The first 40 greedy tokens of the answers to `prompts`, decoded together by the
    scheduler on the backend's pool beside an undrafted companion (no step of one token),
    with the backend's draft model drafting 8 tokens a step once every prompt is in, or
    without it."""
    drafter = Eager(backend.drafter) if drafts and backend.drafter else None
    sched = Scheduler(backend.pool, max_seqs=8, max_batch_tokens=128)
    seqs = []
    for i, prompt in enumerate([COUNT, *prompts]):
        tokens = backend.tokenize(prompt, add_special=False, parse_special=True)
        req = GenerateRequest(f"r{i}", tuple(tokens), SamplingParams(temperature=0.0))
        seq = Sequence(req, Detokenizer(backend.token_piece), len(tokens) + 1000, list(tokens))
        seq.n_prompt = len(tokens)
        seq.drafting = drafter.start() if drafter and i else None
        sched.add(seq)
        seqs.append(seq)
    while min(s.n_generated for s in seqs[1:]) < 40:
        if all(s.decoding for s in seqs):
            sched.drafter = drafter
        plan = sched.schedule()
        sampled = backend.execute(plan.chunks)
        assert sampled is not None
        sched.commit(plan)
        for c, token in zip([c for c in plan.chunks if c.samples], sampled, strict=True):
            c.seq.tokens += [*c.draft[: c.accepted], token]
    for seq in seqs:
        sched.finish(seq, keep_prefix=False)
        backend.drop(seq)
        if drafter is not None:
            drafter.drop(seq)
    sched.settle()
    if drafter is not None:  # the same model guesses: most draft tokens are accepted
        states = [s.drafting for s in seqs[1:] if s.drafting is not None]
        proposed, accepted = sum(d.proposed for d in states), sum(d.accepted for d in states)
        assert len(states) == 3 and accepted >= 0.8 * proposed > 60, (accepted, proposed)
    return [s.tokens[s.n_prompt : s.n_prompt + 40] for s in seqs[1:]]


# llama.cpp's batch-shape noise in a logit on this model (see the module docstring): a gap
# between the two best logits below this is a near-tie it may turn
KERNEL_NOISE = 1.0


def gaps(backend: LlamaCppBackend, prompt: str, answer: list[int]) -> list[float]:
    """At each position of the answer, the gap between the model's two best logits (the
    answer teacher-forced through the model on a free slot)."""
    prompt_tokens = backend.tokenize(prompt, add_special=False, parse_special=True)
    tokens = prompt_tokens + answer
    reader = backend.new_sampler(SamplingParams(temperature=0.0))
    assert isinstance(reader, NumpySampler)
    out: list[float] = []
    for lo in range(0, len(tokens) - 1, 64):
        part = tokens[lo : min(lo + 64, len(tokens) - 1)]  # the last token predicts nothing
        wanted = [lo + i >= len(prompt_tokens) - 1 for i in range(len(part))]
        assert backend.decode(part, range(lo, lo + len(part)), [7] * len(part), wanted)
        for row in [i for i, w in enumerate(wanted) if w]:
            top = np.partition(reader.logits(row), -2)[-2:]
            out.append(float(top[1] - top[0]))
    backend.free_seq(7)
    return out


def test_a_draft_model_drafts_for_sequences_together(model_path: Path) -> None:
    """The bundled model as its own draft model, three sequences drafting in the same steps:
    most draft tokens are accepted (the same model guesses: the draft context follows each
    sequence through its accepted and rejected drafts), and each answer is the undrafted
    one, or parts from it at a near-tie (what differs is the batch shape's float noise, not
    the sampling: see the module docstring)."""
    spec = bundled_spec(
        model_path, max_seqs=8, speculative="draft", speculative_draft=str(model_path)
    )
    backend = llamacpp_loader()(spec)
    try:
        assert isinstance(backend, LlamaCppBackend) and backend.drafter is not None
        prompts = [QUOTE, chat(f"Repeat this code exactly:\n\n{CODE}"), STORY]
        drafted = greedy_together(backend, prompts, drafts=True)
        plain = greedy_together(backend, prompts, drafts=False)
        same = 0
        for prompt, d, p in zip(prompts, drafted, plain, strict=True):
            n = next((i for i, (a, b) in enumerate(zip(d, p, strict=True)) if a != b), len(p))
            if n < len(p):  # they part only where the model hesitates
                assert gaps(backend, prompt, p)[n] < KERNEL_NOISE
            same += n
        assert same >= 60
    finally:
        backend.close()


async def test_a_draft_model_configured_per_model(model_path: Path) -> None:
    """speculative = "draft" with the draft model named by its path: served, the answer is
    the one without drafts and the timings count the drafts; a draft model whose
    vocabulary differs (here: another EOS token) is refused at load, saying why."""
    spec = bundled_spec(model_path, speculative="draft", speculative_draft=str(model_path))
    registry = ModelRegistry([spec], llamacpp_factory())
    body = {
        "model": spec.name,
        "messages": [{"role": "user", "content": f"Repeat this text exactly:\n\n{TEXT}"}],
        "temperature": 0,
        "max_tokens": 60,
    }
    async with AppHandle(Settings(), registry) as app:
        r = await app.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        timings = r.json()["timings"]
        assert 0 < timings["draft_accepted"] <= timings["draft_tokens"]
    other_eos = bundled_spec(
        model_path,
        speculative="draft",
        speculative_draft=str(model_path),
        kv_overrides={"tokenizer.ggml.eos_token_id": 1},
    )
    with pytest.raises(BackendError, match="another EOS token"):
        llamacpp_loader()(other_eos)
