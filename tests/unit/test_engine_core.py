"""The core loop and scheduler on the fake backend: batching, queueing, aborts, preemption."""

from __future__ import annotations

import asyncio

import pytest

from inferd.engine.backends.fake import FakeBackend
from inferd.engine.client import AsyncEngine
from inferd.engine.detokenizer import Detokenizer
from inferd.engine.scheduler import MIN_PREFILL_CHUNK, Scheduler, StepPlan
from inferd.engine.sequence import Sequence
from inferd.engine.types import FinishReason, GenerateRequest, GenerationOutput, SamplingParams
from tests.conftest import wait_for

PROMPT = tuple(range(1, 11))


async def run(engine: AsyncEngine, rid: str, **sampling: object) -> list[GenerationOutput]:
    req = GenerateRequest(rid, PROMPT, SamplingParams(**sampling))  # type: ignore[arg-type]
    return [out async for out in engine.generate(req)]


def text_of(outs: list[GenerationOutput]) -> str:
    return "".join(o.text for o in outs)


@pytest.fixture
async def engine_factory():  # type: ignore[no-untyped-def]
    engines: list[AsyncEngine] = []

    def make(**kwargs: object) -> AsyncEngine:
        e = AsyncEngine(FakeBackend(**kwargs))  # type: ignore[arg-type]
        e.start()
        engines.append(e)
        return e

    yield make
    for e in engines:
        await e.stop()


async def test_generates_reply_then_stops_on_eos(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(reply="Hi there")
    outs = await run(engine, "a", max_tokens=100)
    assert text_of(outs) == "Hi there"
    assert outs[-1].finish_reason is FinishReason.STOP
    assert outs[-1].usage.prompt_tokens == len(PROMPT)
    assert outs[-1].usage.completion_tokens == len("Hi there") + 1  # + EOS


async def test_a_failing_sampler_fails_only_its_request(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(reply="Hi there", reject_grammar=True)
    bad, good = await asyncio.gather(
        run(engine, "bad", json_mode=True), run(engine, "good", max_tokens=100)
    )
    assert bad[-1].finish_reason is FinishReason.ERROR and "grammar" in (bad[-1].error or "")
    assert text_of(good) == "Hi there" and good[-1].finish_reason is FinishReason.STOP
    assert engine.stats().running == 0


async def test_max_tokens_gives_length(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(reply="abcdefgh")
    outs = await run(engine, "a", max_tokens=3)
    assert text_of(outs) == "abc"
    assert outs[-1].finish_reason is FinishReason.LENGTH
    assert outs[-1].usage.completion_tokens == 3


async def test_ignore_eos_generates_exactly_max_tokens(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(reply="ab")
    outs = await run(engine, "a", max_tokens=7, ignore_eos=True)
    assert text_of(outs) == "abababa"
    assert outs[-1].usage.completion_tokens == 7


async def test_stop_string_ends_generation(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(reply="one, two, three")
    outs = await run(engine, "a", max_tokens=100, stop=(", t",))
    assert text_of(outs) == "one"
    assert outs[-1].finish_reason is FinishReason.STOP


async def test_sequences_decode_together_in_one_step(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(reply="x" * 20, max_seqs=4, step_delay=0.002)
    results = await asyncio.gather(*(run(engine, f"r{i}", max_tokens=20) for i in range(4)))
    assert all(text_of(r) == "x" * 20 for r in results)
    backend: FakeBackend = engine.backend  # type: ignore[assignment]
    # once all four are prefilled, each step carries one token of each sequence
    assert max(seqs for _, seqs in backend.batches) == 4
    assert backend.steps < 4 * 21


async def test_requests_beyond_the_slots_wait_and_all_complete(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(reply="y" * 10, max_seqs=2, step_delay=0.001)
    results = await asyncio.gather(*(run(engine, f"r{i}", max_tokens=10) for i in range(7)))
    assert [text_of(r) for r in results] == ["y" * 10] * 7
    assert all(r[-1].finish_reason is FinishReason.LENGTH for r in results)
    backend: FakeBackend = engine.backend  # type: ignore[assignment]
    assert max(seqs for _, seqs in backend.batches) <= 2


async def test_long_prompt_is_prefilled_in_chunks_beside_decoding(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(reply="z" * 50, max_batch_tokens=16, step_delay=0.001)
    short = asyncio.create_task(run(engine, "short", max_tokens=50))
    await asyncio.sleep(0.02)
    long_req = GenerateRequest("long", tuple([5] * 100), SamplingParams(max_tokens=5))
    long_outs = [o async for o in engine.generate(long_req)]
    assert long_outs[-1].finish_reason is FinishReason.LENGTH
    assert text_of(await short) == "z" * 50
    backend: FakeBackend = engine.backend  # type: ignore[assignment]
    assert max(tokens for tokens, _ in backend.batches) <= 16


async def test_abort_frees_the_slot_and_cells_at_once(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(reply="w", step_delay=0.01)
    req = GenerateRequest("gone", PROMPT, SamplingParams(max_tokens=10_000, ignore_eos=True))
    gen = engine.generate(req)
    for _ in range(3):
        await gen.__anext__()
    await gen.aclose()  # what a disconnecting client does
    assert await wait_for(lambda: engine.stats().running == 0, 1.0)
    backend: FakeBackend = engine.backend  # type: ignore[assignment]
    assert await wait_for(lambda: backend.cells_used == 0, 1.0)
    assert engine.stats().kv_cells_used == 0


async def test_kv_pressure_preempts_and_output_is_unchanged(engine_factory) -> None:  # type: ignore[no-untyped-def]
    reply = "the quick brown fox jumps"
    # 4 slots, but the cache holds only ~2.5 sequences' worth: some must be preempted
    engine = engine_factory(reply=reply, kv_cells=90, n_ctx=60, max_seqs=4)
    results = await asyncio.gather(
        *(run(engine, f"p{i}", max_tokens=30, ignore_eos=True) for i in range(4))
    )
    expected = (reply * 2)[:30]
    assert [text_of(r) for r in results] == [expected] * 4
    assert all(r[-1].usage.completion_tokens == 30 for r in results)
    backend: FakeBackend = engine.backend  # type: ignore[assignment]
    # finished sequences leave no cells behind (their prefixes are saved in host memory,
    # right after their last outputs are sent)
    assert await wait_for(lambda: backend.cells_used == 0, 1.0)
    stats = engine.stats()
    assert stats.preemptions > 0
    assert stats.kv_cells_used == backend.cells_used == 0


async def test_invalid_prompts_finish_with_an_error(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(n_ctx=32)
    for prompt in [(), tuple([1] * 32), (1, 2, 999)]:
        outs = [o async for o in engine.generate(GenerateRequest("bad", prompt))]
        assert outs[-1].finish_reason is FinishReason.ERROR
        assert outs[-1].error


async def test_backend_failure_ends_every_sequence_with_an_error(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(fail_after_steps=5)
    outs = await run(engine, "f", max_tokens=100, ignore_eos=True)
    assert outs[-1].finish_reason is FinishReason.ERROR
    assert "fake backend failure" in (outs[-1].error or "")
    assert engine.stats().running == 0


def test_scheduler_gives_decoding_sequences_their_token_first() -> None:
    backend = FakeBackend(max_seqs=2, kv_cells=1000)
    sched = Scheduler(backend.pool, max_seqs=2, max_batch_tokens=8)

    def run(plan: StepPlan) -> None:
        assert backend.execute(plan.chunks) is not None
        sched.commit(plan)

    def seq(rid: str, n: int) -> Sequence:
        req = GenerateRequest(rid, tuple(range(1, n + 1)))
        return Sequence(
            req,
            Detokenizer(lambda t: b""),
            max_len=n + 10,
            tokens=list(req.prompt_tokens),
            n_prompt=n,
        )

    a = seq("a", 4)
    sched.add(a)
    plan = sched.schedule()
    # the prompt but its last token, then the last token alone (it gets sampled)
    assert [(c.seq.request_id, c.start, c.end, c.samples) for c in plan.chunks] == [
        ("a", 0, 3, False)
    ]
    run(plan)
    plan = sched.schedule()
    assert [(c.seq.request_id, c.start, c.end, c.samples) for c in plan.chunks] == [
        ("a", 3, 4, True)
    ]
    run(plan)
    a.tokens.append(99)  # sampled (the core appends what the step sampled)
    b = seq("b", 20)
    sched.add(b)
    plan = sched.schedule()
    # a decodes its one token; b shares a's first 4 tokens and gets the rest of the budget
    # as a prefill chunk
    assert [(c.seq.request_id, c.start, c.end, c.samples) for c in plan.chunks] == [
        ("a", 4, 5, True),
        ("b", 4, 11, False),
    ]


async def test_prefill_is_capped_per_decoding_sequence(engine_factory) -> None:  # type: ignore[no-untyped-def]
    engine = engine_factory(
        reply="s" * 60, max_batch_tokens=64, prefill_per_decode=2, step_delay=0.001
    )
    streams = [asyncio.create_task(run(engine, f"s{i}", max_tokens=60)) for i in range(3)]
    await asyncio.sleep(0.03)  # all three decoding
    long_req = GenerateRequest("long", tuple(range(1, 200)), SamplingParams(max_tokens=2))
    outs = [o async for o in engine.generate(long_req)]
    assert outs[-1].finish_reason is FinishReason.LENGTH
    await asyncio.gather(*streams)
    backend: FakeBackend = engine.backend  # type: ignore[assignment]
    mixed = [tokens for tokens, seqs in backend.batches if seqs == 4]
    # 3 decode tokens + at most max(MIN_PREFILL_CHUNK, 2 * 3) prompt tokens in steps shared
    # with the streams, and the prompt does use that room
    assert mixed and max(mixed) == 3 + max(MIN_PREFILL_CHUNK, 2 * 3)


async def test_split_kv_keeps_running_slots_consecutive_and_in_order(engine_factory) -> None:  # type: ignore[no-untyped-def]
    """With a KV stream per slot, llama.cpp runs one micro-batch per run of consecutive
    sequence ids: every step's batch must list its slots in order, without gaps, even as
    sequences in the middle finish; nothing is ever preempted for cells."""
    backend = FakeBackend(reply="x" * 64, max_seqs=4, kv_split=True, kv_cells=4 * 48)
    engine = AsyncEngine(backend)
    engine.start()
    try:
        lengths = [30, 6, 12, 30]  # the second and third finish while the others run on
        results = await asyncio.gather(
            *(run(engine, f"r{i}", max_tokens=n, ignore_eos=True) for i, n in enumerate(lengths))
        )
        assert [r[-1].usage.completion_tokens for r in results] == lengths
        assert backend.moves  # the sequence in the highest slot moved down
        for seq_ids in backend.seq_id_batches:
            slots = list(dict.fromkeys(seq_ids))  # in batch order, each once
            assert slots == list(range(len(slots))), seq_ids
        assert engine.stats().preemptions == 0
        assert engine.stats().kv_moves == len(backend.moves)
    finally:
        await engine.stop()
