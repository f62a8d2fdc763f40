"""How the engine hands outputs to the event loop: one consumer for all of a request's
choices, woken once for whatever arrived meanwhile (a step's outputs of every choice, or
several steps' when the loop lagged), each request's outputs in order."""

from __future__ import annotations

import asyncio
import time

import pytest

from inferd.engine.backends.fake import FakeBackend
from inferd.engine.client import AsyncEngine
from inferd.engine.types import FinishReason, GenerateRequest, GenerationOutput, SamplingParams
from tests.conftest import wait_for

PROMPT = tuple(range(1, 11))
REPLY = "abcdefghijklmnopqrstuvwxyz"


def request(rid: str, max_tokens: int) -> GenerateRequest:
    return GenerateRequest(rid, PROMPT, SamplingParams(max_tokens=max_tokens, ignore_eos=True))


@pytest.fixture
async def engine() -> object:
    finished: list[tuple[str, FinishReason | None]] = []
    e = AsyncEngine(
        FakeBackend(reply=REPLY, step_delay=0.002),  # type: ignore[arg-type]
        on_finish=lambda _name, out, _s: finished.append((out.request_id, out.finish_reason)),
    )
    e.finished = finished  # type: ignore[attr-defined]
    e.start()
    yield e
    await e.stop()


async def test_a_lagging_consumer_gets_every_queued_output_in_one_batch(
    engine: AsyncEngine,
) -> None:
    batches: list[list[GenerationOutput]] = []
    async for batch in engine.generate_many([request("a", 26)]):
        batches.append(batch)
        if len(batches) == 2:
            time.sleep(0.1)  # noqa: ASYNC251 (a busy loop: ~50 steps of 2 ms go by)
    lagged = batches[2]
    assert len(lagged) >= 5, [len(b) for b in batches]
    outs = [o for b in batches for o in b]
    assert "".join(o.text for o in outs) == REPLY  # every token once, in order
    assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
    assert outs[-1].finish_reason is FinishReason.LENGTH


async def test_choices_share_one_wakeup_per_step(engine: AsyncEngine) -> None:
    requests = [request(f"c{i}", 20) for i in range(3)]
    batches = [b async for b in engine.generate_many(requests)]
    outs = [o for b in batches for o in b]
    for r in requests:
        mine = [o for o in outs if o.request_id == r.request_id]
        assert "".join(o.text for o in mine) == REPLY[:20]
        assert mine[-1].finish_reason is FinishReason.LENGTH
    # the three sequences decode in the same steps: a step's three outputs come together
    assert len(batches) < len(outs)
    assert max(len({o.request_id for o in b}) for b in batches) == 3
    assert sorted(engine.finished) == [(r.request_id, FinishReason.LENGTH) for r in requests]  # type: ignore[attr-defined]


async def test_leaving_early_aborts_the_choices_not_finished(engine: AsyncEngine) -> None:
    short, long = request("short", 2), request("long", 10_000)
    gen = engine.generate_many([short, long])
    seen: list[GenerationOutput] = []
    async for batch in gen:
        seen += batch
        if any(o.request_id == "short" and o.finished for o in seen):
            break
    await gen.aclose()  # what a disconnecting client does
    assert await wait_for(lambda: engine.stats().running == 0, 1.0)
    backend: FakeBackend = engine.backend  # type: ignore[assignment]
    assert await wait_for(lambda: backend.cells_used == 0, 1.0)
    assert dict(engine.finished) == {  # type: ignore[attr-defined]
        "short": FinishReason.LENGTH,
        "long": FinishReason.ABORT,
    }


async def test_one_request_stream_is_the_flat_outputs(engine: AsyncEngine) -> None:
    outs = [o async for o in engine.generate(request("one", 5))]
    assert "".join(o.text for o in outs) == REPLY[:5]
    assert outs[-1].finish_reason is FinishReason.LENGTH
    await asyncio.sleep(0)
    assert engine.finished == [("one", FinishReason.LENGTH)]  # type: ignore[attr-defined]


async def test_the_consumer_gets_each_end_once_as_the_finish_hook_does(
    engine: AsyncEngine,
) -> None:
    """`on_end` hands the consumer the engine client's own accounting: each request's final
    output, and for one left early an ABORT final with the usage of what was read."""
    ends: list[tuple[GenerationOutput, float]] = []
    short, long = request("short", 2), request("long", 10_000)
    gen = engine.generate_many([short, long], on_end=lambda out, s: ends.append((out, s)))
    long_read = 0
    async for batch in gen:
        long_read += sum(len(o.token_ids) for o in batch if o.request_id == "long")
        if long_read >= 5 and any(o.request_id == "short" for o, _ in ends):
            break
    await gen.aclose()
    assert [(o.request_id, o.finish_reason) for o, _ in ends] == [
        ("short", FinishReason.LENGTH),
        ("long", FinishReason.ABORT),
    ]
    assert [(o.request_id, o.finish_reason) for o, _ in ends] == engine.finished  # type: ignore[attr-defined]
    left = ends[1][0]
    assert left.usage.prompt_tokens == len(PROMPT)
    assert left.usage.completion_tokens == long_read  # what was read, not what ran on
    assert left.time_to_first_token is not None and left.time_to_first_token > 0
    assert all(seconds > 0 for _, seconds in ends)
