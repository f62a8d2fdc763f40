"""The record of one generation request: made when a request reaches a route that generates,
filled in explicitly by the pipeline, and read once the response has ended by the usage
writer, the key's token limits, the access log and the request's span.

Its `request_id` is the id the client sees in `X-Request-ID`; the response ids
(`chatcmpl-<id>`, `cmpl-<id>`) and the engine's request ids (`<id>-<choice>`) derive from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from inferd.engine.types import FinishReason, GenerationOutput, Usage
from inferd.storage.records import UsageStatus

CLIENT_CLOSED = 499  # the status of a response the client did not wait for


@dataclass
class RequestRecord:
    request_id: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    load_seconds: float = 0.0  # from arrival until the model was resolved (loaded if need be)
    # engine request id -> index of the prompt it answers (choices of one prompt share it)
    prompts: dict[str, int] = field(default_factory=dict)
    # engine request id -> its final output (finished, or abandoned with the usage so far)
    finals: dict[str, GenerationOutput] = field(default_factory=dict)

    def resolved(self, model: str) -> None:
        """The pipeline found (or loaded) the request's model."""
        self.model = model
        self.load_seconds = time.perf_counter() - self.started

    def admitted(self, prompts: dict[str, int]) -> None:
        """The pipeline hands the request's sequences to the model's engine."""
        self.prompts = prompts

    def finished(self, out: GenerationOutput) -> None:
        """A sequence's last output (the pipeline makes an ABORT one for a sequence it left)."""
        self.finals.setdefault(out.request_id, out)

    @property
    def usage(self) -> Usage:
        """Every prompt counted once (its first choice's count), every choice's completion."""
        firsts: dict[int, Usage] = {}
        completion = 0
        for rid, prompt in self.prompts.items():
            out = self.finals.get(rid)
            if out is not None:
                firsts.setdefault(prompt, out.usage)
                completion += out.usage.completion_tokens
        return Usage(
            prompt_tokens=sum(u.prompt_tokens for u in firsts.values()),
            completion_tokens=completion,
            cached_tokens=sum(u.cached_tokens for u in firsts.values()),
        )

    @property
    def finish_reasons(self) -> list[FinishReason]:
        return [out.finish_reason for out in self.finals.values() if out.finish_reason]

    @property
    def time_to_first_token(self) -> float | None:
        """The earliest first token of the request's choices (seconds, engine time)."""
        firsts = [o.time_to_first_token for o in self.finals.values()]
        return min((t for t in firsts if t is not None), default=None)

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def status(self, http_status: int, *, ended: bool) -> UsageStatus:
        """An error anywhere wins, then a cancellation, then a refusal, then a length cut."""
        reasons = self.finish_reasons
        if FinishReason.ERROR in reasons or (http_status >= 500 and http_status != 503):
            return UsageStatus.ERROR
        if FinishReason.ABORT in reasons or http_status == CLIENT_CLOSED or not ended:
            return UsageStatus.CANCELLED
        if http_status >= 400:
            return UsageStatus.REJECTED
        if FinishReason.LENGTH in reasons:
            return UsageStatus.LENGTH
        return UsageStatus.OK
