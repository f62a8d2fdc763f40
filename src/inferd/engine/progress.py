"""One request's progress as its consumer reads it, for its accounting.

The engine client tracks every request it streams (`generate_many`) with one of these and
reports each end once, a request left early included, to the engine's finish hook and to
the consumer's `on_end` (the API pipeline: the request's record and the generation
observer); this is the one place that knows what such a request's final output says.
"""

from __future__ import annotations

import time

from inferd.engine.types import FinishReason, GenerateRequest, GenerationOutput, Usage


class RequestProgress:
    """The last output read of one request, when its first token came (seconds after
    `started`, a `time.monotonic()`), and whether its final output was read. `seen` runs
    per output read (per streamed token): it allocates nothing."""

    __slots__ = ("ended", "first_token", "last", "request", "started")

    def __init__(self, request: GenerateRequest, started: float) -> None:
        self.request = request
        self.started = started
        self.last: GenerationOutput | None = None
        self.first_token: float | None = None
        self.ended = False

    def seen(self, out: GenerationOutput) -> None:
        self.last = out
        if self.first_token is None and out.token_ids:
            self.first_token = time.monotonic() - self.started
        if out.finish_reason is not None:
            self.ended = True

    def abandoned(self) -> GenerationOutput:
        """The final output of a request left early: the usage of what it had generated
        (its prompt alone before its first output), its timings so far, finish ABORT."""
        last = self.last
        if last is None:
            usage, queue_time = Usage(prompt_tokens=len(self.request.prompt_tokens)), None
        else:
            usage, queue_time = last.usage, last.queue_time
        return GenerationOutput(
            self.request.request_id,
            "",
            (),
            usage,
            FinishReason.ABORT,
            queue_time=queue_time,
            time_to_first_token=self.first_token,
        )
