"""The generation pipeline, for every dialect:

validate -> resolve model -> render/tokenize -> budget -> admit -> run -> stream or collect
-> account.

`prepare` does everything up to admission (each failure a status, before any byte of the
response); the `Run` it returns streams or collects the choices. Every sequence's end, or its
abandonment, goes on the request's record and to the generation observer (metrics, spans),
once, as the engine client reports it (`generate_many`'s `on_end`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from fastapi import Request

from inferd.api.access import acquire_model, admit
from inferd.api.pipeline.prompt import check_vocabulary, prompt_tokens
from inferd.api.pipeline.reasoning import (
    ReasoningSplitter,
    Split,
    check_think,
    opens_section,
)
from inferd.api.pipeline.request import (
    ChatPrompt,
    Generation,
    InfillPrompt,
    TextPrompt,
    TokenPrompt,
)
from inferd.api.pipeline.sampling import (
    check_limits,
    choice_sampling,
    context_size,
    sampling_params,
)
from inferd.api.pipeline.tools import ToolOutput, ToolUse, tool_use
from inferd.api.record import RequestRecord
from inferd.api.sessions import Exchange, open_exchange, session_of
from inferd.api.streaming import cancel_on_disconnect
from inferd.api.structured import check_format
from inferd.config import Settings
from inferd.engine.types import (
    FinishReason,
    GenerateRequest,
    GenerationOutput,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from inferd.errors import BackendError, GenerationInterrupted
from inferd.models.registry import LoadedModel

if TYPE_CHECKING:
    from inferd.observability.middleware import GenerationObserver


@dataclass
class ChoiceResult:
    index: int
    text: str = ""  # the answer (without its reasoning section, for a thinking model)
    reasoning: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    usage: Usage = field(default_factory=Usage)
    time_to_first_token: float | None = None
    queue_time: float | None = None
    seconds: float | None = None  # from submitting to the engine to the last token
    logprobs: list[TokenLogprob] = field(default_factory=list)  # when asked for
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


@dataclass
class Run:
    """A prepared request: its model, one engine request per choice (prompt p's choices
    are p*n .. p*n+n-1), and where its accounting goes."""

    model: LoadedModel
    requests: list[GenerateRequest]
    prompts: list[list[int]]  # each prompt's tokens
    record: RequestRecord
    observe: GenerationObserver | None = None
    exchange: Exchange | None = None
    tools: ToolUse | None = None  # parses the answers of a request with tools
    # each choice's text split into reasoning and content (a thinking model), else None
    splitters: list[ReasoningSplitter] | None = None

    def split(self, index: int, out: GenerationOutput) -> Split:
        """Choice `index`'s output text as reasoning and content (all content unless the
        model thinks); the last output of a choice brings what was held back."""
        if self.splitters is None:
            return Split(content=out.text)
        splitter = self.splitters[index]
        part = splitter.feed(out.text)
        if out.finish_reason is not None:
            rest = splitter.flush()
            part.reasoning += rest.reasoning
            part.content += rest.content
        return part

    @property
    def sampling(self) -> SamplingParams:
        return self.requests[0].sampling

    def answer(self, result: ChoiceResult) -> ToolOutput:
        """A finished choice's content and tool calls (none for a request without tools)."""
        if self.tools is None:
            return ToolOutput(result.text)
        return self.tools.parse(result.text, truncated=result.finish_reason is FinishReason.LENGTH)

    @property
    def usage(self) -> Usage:
        """The request's usage so far (all of it once every choice has ended)."""
        return self.record.usage

    def stream(self) -> AsyncIterator[list[tuple[int, GenerationOutput]]]:
        """Outputs of all choices as they come, tagged with the choice index: what the
        engine delivered by the time the consumer ran (one step's, or several when it
        lagged) in one list, each choice's in order. An engine failure raises BackendError
        (streams end with an error event). Leaving early (the client is gone) aborts every
        choice's sequence."""
        outputs = self._outputs()
        if self.exchange is not None:
            outputs = self.exchange.remembering(outputs, self.model.name)
        return outputs

    async def collect(self, request: Request) -> list[ChoiceResult]:
        """Run every choice to its end; ClientDisconnected (answered 499) if the client
        leaves first."""
        results = await cancel_on_disconnect(request, self._collect())
        if self.exchange is not None:
            self.exchange.remember_results(results, self.model.name)
        return results

    async def _collect(self) -> list[ChoiceResult]:
        results = [ChoiceResult(i) for i in range(len(self.requests))]
        started = time.monotonic()
        async for batch in self._outputs():
            for i, out in batch:
                r = results[i]
                part = self.split(i, out)
                r.text += part.content
                r.reasoning += part.reasoning
                r.token_ids.extend(out.token_ids)
                r.usage = out.usage
                if out.logprobs:
                    r.logprobs.extend(out.logprobs)
                if out.prompt_logprobs is not None:
                    r.prompt_logprobs = out.prompt_logprobs
                if out.finish_reason is not None:
                    r.finish_reason = out.finish_reason
                    r.time_to_first_token = out.time_to_first_token
                    r.queue_time = out.queue_time
                    r.seconds = time.monotonic() - started
        return results

    async def _outputs(self) -> AsyncIterator[list[tuple[int, GenerationOutput]]]:
        """Every choice's outputs, from one engine stream for all of them. Each sequence's
        end goes on the record and to the observer as the engine client reports it (its
        final output, or an ABORT one with the usage so far when it is left early); an
        ERROR final raises BackendError, an ABORT one (its engine stopped: an unload, a
        shutdown) GenerationInterrupted, after the outputs before it."""
        index = {r.request_id: i for i, r in enumerate(self.requests)}
        engine = self.model.engine
        async with contextlib.aclosing(
            engine.generate_many(self.requests, on_end=self._ended)
        ) as gen:
            async for batch in gen:
                tagged: list[tuple[int, GenerationOutput]] = []
                for out in batch:
                    if out.finish_reason is not None and out.finish_reason in _FAILED:
                        if tagged:
                            yield tagged
                        raise _failure(out)
                    tagged.append((index[out.request_id], out))
                yield tagged

    def _ended(self, out: GenerationOutput, seconds: float) -> None:
        self.record.finished(out)
        if self.observe is not None:
            self.observe(self.model.name, out, seconds)


_FAILED = (FinishReason.ERROR, FinishReason.ABORT)


def _failure(out: GenerationOutput) -> Exception:
    """What a sequence's failed end raises: the engine failed (BackendError), or it stopped
    under a request still read (an unload, a shutdown: never a normal end)."""
    if out.finish_reason is FinishReason.ERROR:
        return BackendError(out.error or "generation failed")
    return GenerationInterrupted(
        "the model was unloaded, or the server shut down, before this answer was finished; "
        "retry the request"
    )


async def prepare(request: Request, gen: Generation, record: RequestRecord) -> Run:
    """Everything before the first token, each failure a status: validate, resolve the
    model, render and tokenize, budget, admit."""
    state = request.app.state
    settings: Settings = state.settings
    check_limits(gen, settings)
    prompts = gen.prompts
    exchange = None
    if gen.session is not None and isinstance(prompts[0], ChatPrompt):
        session = session_of(gen.session.id, request)
        messages, exchange = await open_exchange(
            state.store, settings, session, gen.session.history, prompts[0].messages, record
        )
        prompts = [replace(prompts[0], messages=messages)]
    model = await acquire_model(request, state.registry, gen.model)
    record.resolved(model.name)
    tools = None if gen.tools is None else tool_use(model, gen.tools, gen.output)
    if tools is not None:
        prompts = [tools.prompt(p) for p in prompts]
    context: tuple[int, ...] = ()
    if gen.context is not None:
        context = gen.context.value
        check_vocabulary(context, model.engine.info.n_vocab, param=gen.context.name)
    n_ctx = context_size(gen.options.n_ctx, model.engine.info)
    tokens = [
        await prompt_tokens(
            model, p, renders=state.renders, n_ctx=n_ctx, context=context, param=gen.prompt_param
        )
        for p in prompts
    ]
    requests: list[GenerateRequest] = []
    splitters = None
    raw = isinstance(prompts[0], TextPrompt | TokenPrompt | InfillPrompt)
    if check_think(model, gen.think) and not raw:
        # a prompt that leaves the model inside the section starts its answers there
        inside = [opens_section(model.engine.detokenize(p[-8:])) for p in tokens]
        splitters = [
            ReasoningSplitter(inside=inside[i // gen.n.value])
            for i in range(len(tokens) * gen.n.value)
        ]
    for p, prompt in enumerate(tokens):
        base = sampling_params(gen, len(prompt), model.engine.info, settings, n_ctx)
        if tools is not None:
            base = tools.constrain(base)
        if p == 0 and base.constrained:
            await check_format(model.engine, base, param=gen.output_param)
        for i in range(gen.n.value):
            rid = f"{record.request_id}-{len(requests)}"
            requests.append(GenerateRequest(rid, tuple(prompt), choice_sampling(base, i)))
    await admit(request, requests, record)
    record.admitted({r.request_id: i // gen.n.value for i, r in enumerate(requests)})
    observe = getattr(state, "observe_generation", None)
    return Run(model, requests, tokens, record, observe, exchange, tools=tools, splitters=splitters)
