"""Pure translation between OpenAI wire models and engine types."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from inferd.api.embeddings import Embeddings, to_base64
from inferd.api.openai import logprobs as lp
from inferd.api.openai import schemas as s
from inferd.api.pipeline.logprobs import Describer, ScoredToken
from inferd.api.pipeline.request import (
    ChatPrompt,
    Generation,
    InfillPrompt,
    Options,
    Param,
    Prompt,
    Session,
    TextPrompt,
    TokenPrompt,
)
from inferd.api.pipeline.run import ChoiceResult, Run
from inferd.api.pipeline.template_vars import template_variables
from inferd.api.pipeline.tools import ToolOutput, ToolRequest, tool_request
from inferd.api.streaming import Event, EventTemplate
from inferd.api.structured import JSON_OBJECT, TEXT, OutputFormat, schema_format
from inferd.config import Settings
from inferd.engine.types import FinishReason, GenerationOutput, Usage
from inferd.errors import InvalidRequest, UnsupportedParameter

log = logging.getLogger(__name__)


def now() -> int:
    return int(time.time())


# ---- to the pipeline ----------------------------------------------------------------------


def _log_extra(req: s._Wire) -> None:
    if req.model_extra:
        log.debug("ignoring unknown fields: %s", sorted(req.model_extra)[:20])


def options(
    req: s.SamplingFields,
    max_tokens: Param[int] | None,
    logprobs: Param[int] | None = None,
    *,
    prompt_logprobs: bool = False,
) -> Options:
    stop = None
    if req.stop is not None:
        stop = Param((req.stop,) if isinstance(req.stop, str) else tuple(req.stop), "stop")
    return Options(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        seed=req.seed,
        stop=stop,
        logit_bias=None if req.logit_bias is None else Param(req.logit_bias, "logit_bias"),
        ignore_eos=Param(req.ignore_eos, "ignore_eos"),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


def chat_generation(req: s.ChatCompletionRequest) -> Generation:
    """A chat completion request as the pipeline's request."""
    _log_extra(req)
    check_chat(req)
    max_tokens = (
        Param(req.max_completion_tokens, "max_completion_tokens")
        if req.max_completion_tokens is not None
        else None
        if req.max_tokens is None
        else Param(req.max_tokens, "max_tokens")
    )
    return Generation(
        model=req.model,
        prompts=[ChatPrompt(chat_messages(req), variables=chat_variables(req))],
        prompt_param="messages",
        options=options(req, max_tokens, chat_logprobs(req)),
        n=Param(req.n, "n"),
        output=output_format(req),
        output_param=RESPONSE_FORMAT_SCHEMA,
        session=Session(req.session_id, req.session_history),
        tools=chat_tools(req),
    )


def chat_variables(req: s.ChatCompletionRequest) -> dict[str, Any] | None:
    return template_variables(
        req.chat_template_kwargs,
        enable_thinking=req.enable_thinking,
        reasoning_effort=req.reasoning_effort,
    )


def completion_generation(req: s.CompletionRequest) -> Generation:
    """A text completion request (text or token prompts; a suffix: fill in the middle)."""
    _log_extra(req)
    check_completion(req)
    max_tokens = None if req.max_tokens is None else Param(req.max_tokens, "max_tokens")
    prompts: list[Prompt] = []
    for p in completion_prompts(req):
        prefix = p if isinstance(p, str) else tuple(p)
        if req.suffix:
            prompts.append(InfillPrompt(prefix, req.suffix))
        elif isinstance(prefix, str):
            prompts.append(TextPrompt(prefix))
        else:
            prompts.append(TokenPrompt(prefix))
    return Generation(
        model=req.model,
        prompts=prompts,
        prompt_param="prompt",
        options=options(
            req,
            max_tokens,
            None if req.logprobs is None else Param(req.logprobs, "logprobs"),
            prompt_logprobs=req.echo,
        ),
        n=Param(req.n, "n"),
    )


def chat_logprobs(req: s.ChatCompletionRequest) -> Param[int] | None:
    """`logprobs: true`, with `top_logprobs` alternatives (which need logprobs)."""
    if not req.logprobs:
        if req.top_logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        return None
    return Param(req.top_logprobs or 0, "top_logprobs")


def check_chat(req: s.ChatCompletionRequest) -> None:
    if req.tools and req.functions:
        raise InvalidRequest("send tools or the legacy functions, not both", param="functions")


def chat_tools(req: s.ChatCompletionRequest) -> ToolRequest | None:
    """`tools`, `tool_choice` and `parallel_tool_calls`, or the legacy `functions` and
    `function_call` on the same path."""
    if req.functions:
        return tool_request(
            [{"type": "function", "function": f} for f in req.functions],
            req.function_call,
            False,
            param="functions",
            choice_param="function_call",
        )
    return tool_request(req.tools, req.tool_choice, req.parallel_tool_calls)


def legacy_functions(req: s.ChatCompletionRequest) -> bool:
    """Answer in the legacy shape: `function_call`, finish_reason "function_call"."""
    return bool(req.functions)


RESPONSE_FORMAT_SCHEMA = "response_format.json_schema.schema"


def output_format(req: s.ChatCompletionRequest) -> OutputFormat:
    """`response_format`: text, json_object, or json_schema with its `schema`."""
    rf = req.response_format
    if rf is None or rf.type == "text":
        return TEXT
    if rf.type == "json_object":
        return JSON_OBJECT
    if rf.json_schema is None:
        raise InvalidRequest(
            "response_format of type json_schema needs a json_schema object",
            param="response_format.json_schema",
        )
    if rf.json_schema.schema_ is None:
        raise InvalidRequest(
            "response_format.json_schema needs a schema", param=RESPONSE_FORMAT_SCHEMA
        )
    return schema_format(rf.json_schema.schema_, param=RESPONSE_FORMAT_SCHEMA)


def check_embeddings(req: s.EmbeddingRequest, settings: Settings) -> None:
    _log_extra(req)


def embedding_inputs(req: s.EmbeddingRequest) -> tuple[list[str] | list[list[int]], bool]:
    """The inputs, and whether the client sent a list of them (errors then name an index):
    a string, a list of strings, one list of token ids, or a list of token-id lists."""
    p = req.input
    if isinstance(p, str):
        return [p], False
    if p and all(isinstance(x, int) for x in p):
        return [[x for x in p if isinstance(x, int)]], False
    if all(isinstance(x, str) for x in p):
        return [x for x in p if isinstance(x, str)], True
    return [x for x in p if isinstance(x, list)], True


def embedding_list(model: str, result: Embeddings, encoding: str) -> s.EmbeddingList:
    return s.EmbeddingList(
        data=[
            s.Embedding(index=i, embedding=to_base64(v) if encoding == "base64" else v)
            for i, v in enumerate(result.vectors)
        ],
        model=model,
        usage=s.EmbeddingUsage(
            prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens
        ),
    )


def check_completion(req: s.CompletionRequest) -> None:
    if req.max_tokens == 0 and not req.echo:
        raise InvalidRequest("max_tokens may be 0 only with echo", param="max_tokens")
    if req.echo and req.suffix:
        raise UnsupportedParameter("echo cannot be combined with suffix", param="echo")
    if req.best_of is not None and req.best_of != req.n:
        raise UnsupportedParameter("best_of is not supported", param="best_of")


def chat_messages(req: s.ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as chat templates take them (Hugging Face's convention): role, plain-text
    content; an assistant's `tool_calls` with arguments as objects; a tool result with its
    `tool_call_id` and the called function's `name`."""
    out: list[dict[str, Any]] = []
    called: dict[str, str] = {}  # call id -> function name
    for i, m in enumerate(req.messages):
        content = m.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise UnsupportedParameter(
                        f"content parts of type {part.type!r} are not supported",
                        param=f"messages[{i}].content[{j}]",
                    )
                texts.append(part.text)
            content = "".join(texts)
        if content is None:
            if m.role != "assistant":
                raise InvalidRequest("content is required", param=f"messages[{i}].content")
            content = ""
        role = {"developer": "system", "function": "tool"}.get(m.role, m.role)
        msg: dict[str, Any] = {"role": role, "content": content}
        if m.name:
            msg["name"] = m.name
        calls = m.tool_calls or (
            [s.MessageToolCall(function=m.function_call)] if m.function_call else []
        )
        if calls and m.role == "assistant":
            msg["tool_calls"] = [_history_call(c) for c in calls]
            called.update((c.id, c.function.name) for c in calls if c.id)
        if m.role == "tool":
            if m.tool_call_id is None:
                raise InvalidRequest(
                    "a tool message needs tool_call_id", param=f"messages[{i}].tool_call_id"
                )
            msg["tool_call_id"] = m.tool_call_id
            if m.tool_call_id in called:
                msg["name"] = called[m.tool_call_id]
        out.append(msg)
    return out


def _history_call(call: s.MessageToolCall) -> dict[str, Any]:
    """A call as templates take it: arguments as an object (kept as text when the text is
    not a JSON object)."""
    try:
        arguments: Any = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        arguments = call.function.arguments
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.function.name, "arguments": arguments},
    }


def completion_prompts(req: s.CompletionRequest) -> list[str | list[int]]:
    """The prompts of a completion request: text, or token ids."""
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if all(isinstance(x, int) for x in p):
        return [list(p)]  # type: ignore[arg-type]
    return list(p)  # type: ignore[arg-type]


# ---- from the engine ------------------------------------------------------------------------


def finish_reason(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason is FinishReason.LENGTH else "stop"


def chat_finish(reason: FinishReason | None, out: ToolOutput, legacy: bool) -> str | None:
    if out.calls:
        return "function_call" if legacy else "tool_calls"
    return finish_reason(reason)


def assistant_message(out: ToolOutput, legacy: bool) -> s.AssistantMessage:
    if not out.calls:
        return s.AssistantMessage(content=out.content)
    functions = [s.ToolCallFunction(name=c.name, arguments=c.arguments_json) for c in out.calls]
    content = out.content if out.content.strip() else None
    if legacy:
        return s.AssistantMessage(content=content, function_call=functions[0])
    return s.AssistantMessage(
        content=content,
        tool_calls=[
            s.ToolCall(id=c.id, function=f) for c, f in zip(out.calls, functions, strict=True)
        ],
    )


def usage_info(usage: Usage) -> s.UsageInfo:
    return s.UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=s.PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def timings(results: list[ChoiceResult]) -> s.Timings:
    """The request's queue wait (longest of its choices), first token (earliest), decode
    speed (tokens after each choice's first, over the longest decode) and, when drafts were
    verified (speculative decoding), their tokens and the accepted ones (all choices)."""
    queues = [r.queue_time for r in results if r.queue_time is not None]
    firsts = [r.time_to_first_token for r in results if r.time_to_first_token is not None]
    decode_tokens = sum(max(r.usage.completion_tokens - 1, 0) for r in results)
    drafted = sum(r.usage.draft_tokens for r in results)
    decode_time = max(
        (
            r.seconds - r.time_to_first_token
            for r in results
            if r.seconds is not None and r.time_to_first_token is not None
        ),
        default=0.0,
    )
    return s.Timings(
        queue_s=round(max(queues), 6) if queues else None,
        time_to_first_token_s=round(min(firsts), 6) if firsts else None,
        decode_tokens_per_s=round(decode_tokens / decode_time, 3)
        if decode_tokens and decode_time > 0
        else None,
        draft_tokens=drafted or None,
        draft_accepted=sum(r.usage.draft_accepted for r in results) if drafted else None,
    )


def chat_completion(
    rid: str, run: Run, results: list[ChoiceResult], *, legacy: bool = False
) -> s.ChatCompletion:
    scoring = run.sampling.logprobs is not None
    choices = []
    for r in results:
        out = run.answer(r)
        message = assistant_message(out, legacy)
        if run.splitters is not None:
            message.reasoning_content = r.reasoning
        choices.append(
            s.ChatChoice(
                index=r.index,
                message=message,
                finish_reason=chat_finish(r.finish_reason, out, legacy),
                logprobs=lp.chat_logprobs(Describer(run.model.engine), r.logprobs)
                if scoring
                else None,
            )
        )
    return s.ChatCompletion(
        id=rid,
        created=now(),
        model=run.model.name,
        choices=choices,
        usage=usage_info(run.usage),
        timings=timings(results),
    )


def echo_texts(req: s.CompletionRequest, run: Run) -> list[str] | None:
    """With `echo`, each prompt's text as echoed before its completions: a text prompt as
    sent, token ids as their text."""
    if not req.echo:
        return None
    return [
        p if isinstance(p, str) else run.model.engine.detokenize(p) for p in completion_prompts(req)
    ]


def _completion_choice(
    run: Run, r: ChoiceResult, echo: list[str] | None, n: int
) -> s.CompletionChoice:
    prompt = r.index // n
    text = r.text if echo is None else echo[prompt] + r.text
    logprobs = None
    if run.sampling.logprobs is not None:
        describer = Describer(run.model.engine)
        scored = []
        if echo is not None:
            scored = lp.echoed(describer, run.prompts[prompt], r.prompt_logprobs, echo[prompt])
        scored += describer.scored(r.logprobs)
        logprobs = lp.completion_logprobs(scored)
    return s.CompletionChoice(
        index=r.index, text=text, finish_reason=finish_reason(r.finish_reason), logprobs=logprobs
    )


def completion(
    rid: str, run: Run, results: list[ChoiceResult], req: s.CompletionRequest
) -> s.Completion:
    echo = echo_texts(req, run)
    return s.Completion(
        id=rid,
        created=now(),
        model=run.model.name,
        choices=[_completion_choice(run, r, echo, req.n) for r in results],
        usage=usage_info(run.usage),
        timings=timings(results),
    )


async def chat_chunks(
    rid: str, run: Run, n: int, *, include_usage: bool, legacy: bool = False
) -> AsyncIterator[list[Event]]:
    """chat.completion.chunk objects, then the usage chunk if asked for; a list of them per
    batch of the engine's outputs (written together). With tools, text that may start a
    call is held back; each call then comes as OpenAI streams it: a delta with its index,
    id, type, function name and empty arguments, then its arguments."""
    created = now()

    def chunk(choices: list[dict[str, Any]], usage: s.UsageInfo | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": run.model.name,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage.model_dump() if usage else None
        return body

    describers = [Describer(run.model.engine) for _ in range(n)]
    scoring = run.sampling.logprobs is not None
    yield [
        chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for i in range(n)
    ]
    streams = [run.tools.stream() for _ in range(n)] if run.tools is not None else None
    # a choice's text delta, the chunk of nearly every token: encoded once, filled per token
    deltas = [
        EventTemplate(
            chunk([{"index": i, "delta": {"content": EventTemplate.HOLE}, "finish_reason": None}])
        )
        for i in range(n)
    ]

    def chunks_of(i: int, out: GenerationOutput) -> Iterator[Event]:
        part = run.split(i, out)
        if part.reasoning:
            delta = {"reasoning_content": part.reasoning}
            yield chunk([{"index": i, "delta": delta, "finish_reason": None}])
        text = part.content if streams is None else streams[i].feed(part.content)
        if scoring and (text or out.logprobs):
            choice: dict[str, Any] = {
                "index": i,
                "delta": {"content": text},
                "finish_reason": None,
                "logprobs": lp.chat_logprobs(describers[i], out.logprobs),
            }
            yield chunk([choice])
        elif text:
            yield deltas[i].fill(text)
        if out.finish_reason is not None:
            truncated = out.finish_reason is FinishReason.LENGTH
            tail = ToolOutput("") if streams is None else streams[i].finish(truncated=truncated)
            for delta in _tail_deltas(tail, legacy):
                yield chunk([{"index": i, "delta": delta, "finish_reason": None}])
            reason = chat_finish(out.finish_reason, tail, legacy)
            yield chunk([{"index": i, "delta": {}, "finish_reason": reason}])

    async for batch in run.stream():
        yield [c for i, out in batch for c in chunks_of(i, out)]
    if include_usage:
        yield [chunk([], usage_info(run.usage))]


def _tail_deltas(tail: ToolOutput, legacy: bool) -> list[dict[str, Any]]:
    """The held-back end of an answer: its text, or its calls."""
    if not tail.calls:
        return [{"content": tail.content}] if tail.content else []
    if legacy:
        call = tail.calls[0]
        return [
            {"function_call": {"name": call.name, "arguments": ""}},
            {"function_call": {"arguments": call.arguments_json}},
        ]
    deltas: list[dict[str, Any]] = []
    for k, call in enumerate(tail.calls):
        head = {"name": call.name, "arguments": ""}
        deltas.append(
            {"tool_calls": [{"index": k, "id": call.id, "type": "function", "function": head}]}
        )
        deltas.append(
            {"tool_calls": [{"index": k, "function": {"arguments": call.arguments_json}}]}
        )
    return deltas


async def completion_chunks(
    rid: str, run: Run, req: s.CompletionRequest, *, include_usage: bool
) -> AsyncIterator[list[Event]]:
    """text_completion chunks (with `echo`, a choice's first one starts with its prompt),
    then the usage chunk if asked for; a list of them per batch of the engine's outputs."""
    created = now()
    echo = echo_texts(req, run)
    scoring = run.sampling.logprobs is not None
    describers: dict[int, Describer] = {}

    def chunk(choices: list[dict[str, Any]], usage: s.UsageInfo | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": run.model.name,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage.model_dump() if usage else None
        return body

    # a choice's text, the chunk of nearly every token: encoded once, filled per token
    texts = [
        EventTemplate(
            chunk(
                [{"index": i, "text": EventTemplate.HOLE, "finish_reason": None, "logprobs": None}]
            )
        )
        for i in range(len(run.requests))
    ]

    def chunks_of(i: int, out: GenerationOutput) -> Iterator[Event]:
        reason = finish_reason(out.finish_reason)
        text = out.text
        scored: list[ScoredToken] = []
        describer = describers.get(i)
        if describer is None:  # the choice's first output
            describer = describers[i] = Describer(run.model.engine)
            if echo is not None:
                prompt = i // req.n
                text = echo[prompt] + text
                if scoring:
                    scored = lp.echoed(
                        describer, run.prompts[prompt], out.prompt_logprobs, echo[prompt]
                    )
        if scoring:
            scored += describer.scored(out.logprobs)
        if not scoring and reason is None:
            if text:
                yield texts[i].fill(text)
        elif text or reason or scored:
            logprobs = lp.completion_logprobs(scored) if scoring else None
            yield chunk([{"index": i, "text": text, "finish_reason": reason, "logprobs": logprobs}])

    async for batch in run.stream():
        yield [c for i, out in batch for c in chunks_of(i, out)]
    if include_usage:
        yield [chunk([], usage_info(run.usage))]
