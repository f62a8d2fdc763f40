"""RequestProgress: what the engine client accounts for a request it streams, one left
early included (its finish hook and its consumer's `on_end` get that final)."""

from __future__ import annotations

import time

from inferd.engine.progress import RequestProgress
from inferd.engine.types import FinishReason, GenerateRequest, GenerationOutput, Usage

REQUEST = GenerateRequest("r-0", (1, 2, 3, 4))


def output(
    tokens: tuple[int, ...], completion: int, finish: FinishReason | None = None
) -> GenerationOutput:
    usage = Usage(prompt_tokens=4, completion_tokens=completion, cached_tokens=2)
    return GenerationOutput("r-0", "x" * len(tokens), tokens, usage, finish, queue_time=0.25)


def test_a_request_left_before_any_output_accounts_for_its_prompt() -> None:
    progress = RequestProgress(REQUEST, time.monotonic())
    assert not progress.ended
    final = progress.abandoned()
    assert final == GenerationOutput(
        "r-0", "", (), Usage(prompt_tokens=4), FinishReason.ABORT, queue_time=None
    )
    assert final.time_to_first_token is None


def test_a_request_left_midway_accounts_for_what_it_generated() -> None:
    started = time.monotonic() - 10.0  # its first token came ~10 s after it started
    progress = RequestProgress(REQUEST, started)
    progress.seen(output((), 0))  # the prompt's output: no token yet
    assert progress.first_token is None
    progress.seen(output((7,), 1))
    first = progress.first_token
    assert first is not None and 10.0 <= first < 20.0
    progress.seen(output((8, 9), 3))
    assert progress.first_token == first  # the first token's time, not the latest
    assert not progress.ended
    final = progress.abandoned()
    assert final.finish_reason is FinishReason.ABORT
    assert (final.text, final.token_ids) == ("", ())  # what it generated was delivered
    assert final.usage == Usage(prompt_tokens=4, completion_tokens=3, cached_tokens=2)
    assert final.queue_time == 0.25
    assert final.time_to_first_token == first


def test_a_final_output_ends_the_request() -> None:
    progress = RequestProgress(REQUEST, time.monotonic())
    progress.seen(output((7,), 1))
    progress.seen(output((), 1, FinishReason.STOP))
    assert progress.ended
    assert progress.last is not None and progress.last.finish_reason is FinishReason.STOP
