"""Pure translation between OpenAI wire models and engine types."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from inferd.api.embeddings import Embeddings, to_base64
from inferd.api.generation import ChoiceResult, completion_budget, total_usage
from inferd.api.openai import schemas as s
from inferd.api.structured import JSON_OBJECT, TEXT, OutputFormat, schema_format
from inferd.config import Settings
from inferd.engine.backends.base import BackendInfo
from inferd.engine.types import (
    FinishReason,
    GenerateRequest,
    GenerationOutput,
    SamplingParams,
    Usage,
)
from inferd.errors import InvalidRequest, UnsupportedParameter

log = logging.getLogger(__name__)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# ---- validation beyond the schema ---------------------------------------------------------


def _log_extra(req: s._Wire) -> None:
    if req.model_extra:
        log.debug("ignoring unknown fields: %s", sorted(req.model_extra)[:20])


def _stops(req: s.SamplingFields) -> tuple[str, ...]:
    if req.stop is None:
        return ()
    return (req.stop,) if isinstance(req.stop, str) else tuple(req.stop)


def check_limits(req: s.SamplingFields, settings: Settings) -> None:
    """Caps that protect the server, checked before anything is tokenized or allocated."""
    _log_extra(req)
    if req.n > settings.max_n:
        raise InvalidRequest(f"n must be at most {settings.max_n}", param="n")

    stops = _stops(req)
    if len(stops) > settings.max_stop:
        raise InvalidRequest(
            f"at most {settings.max_stop} stop sequences are allowed", param="stop"
        )
    if any(len(x) > settings.max_stop_length for x in stops):
        raise InvalidRequest(
            f"stop sequences may be at most {settings.max_stop_length} characters", param="stop"
        )
    if req.logit_bias and len(req.logit_bias) > settings.max_logit_bias:
        raise InvalidRequest(
            f"logit_bias may have at most {settings.max_logit_bias} entries", param="logit_bias"
        )


def check_chat(req: s.ChatCompletionRequest, settings: Settings) -> None:
    check_limits(req, settings)
    if req.logprobs or req.top_logprobs is not None:
        raise UnsupportedParameter("logprobs are not supported yet", param="logprobs")
    if req.tools:
        raise UnsupportedParameter("tools are not supported yet", param="tools")
    if req.functions:
        raise UnsupportedParameter("functions are not supported yet", param="functions")
    if output_format(req) != TEXT and req.ignore_eos:
        # the grammar ends the output with EOS: forbidding it leaves no token to sample
        raise InvalidRequest(
            "ignore_eos cannot be combined with a JSON response_format", param="ignore_eos"
        )


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
    if req.dimensions is not None:
        raise UnsupportedParameter("dimensions is not supported", param="dimensions")


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


def check_completion(req: s.CompletionRequest, settings: Settings) -> None:
    check_limits(req, settings)
    if len(prompts(req)) * req.n > settings.max_batch_choices:
        raise InvalidRequest(
            f"prompts x n may be at most {settings.max_batch_choices} per request",
            param="prompt",
        )
    if req.echo:
        raise UnsupportedParameter("echo is not supported yet", param="echo")
    if req.logprobs is not None:
        raise UnsupportedParameter("logprobs are not supported yet", param="logprobs")
    if req.best_of is not None and req.best_of != req.n:
        raise UnsupportedParameter("best_of is not supported", param="best_of")


def chat_messages(req: s.ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as the chat template expects them: role and plain-text content."""
    out: list[dict[str, Any]] = []
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
        role = "system" if m.role == "developer" else m.role
        msg: dict[str, Any] = {"role": role, "content": content}
        if m.name:
            msg["name"] = m.name
        out.append(msg)
    return out


def prompts(req: s.CompletionRequest) -> list[str | list[int]]:
    """The prompts of a completion request: text, or token ids."""
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if all(isinstance(x, int) for x in p):
        return [list(p)]  # type: ignore[arg-type]
    return list(p)  # type: ignore[arg-type]


def check_token_prompt(tokens: Sequence[int], n_vocab: int) -> None:
    bad = next((t for t in tokens if t < 0 or t >= n_vocab), None)
    if bad is not None:
        raise InvalidRequest(
            f"token id {bad} is outside the vocabulary (0..{n_vocab - 1})", param="prompt"
        )


# ---- to the engine ------------------------------------------------------------------------


def _logit_bias(req: s.SamplingFields, n_vocab: int) -> tuple[tuple[int, float], ...]:
    out = []
    for key, bias in (req.logit_bias or {}).items():
        if not (key.isascii() and key.isdigit() and len(key) <= 10):
            raise InvalidRequest(
                f"logit_bias key {key[:32]!r} is not a token id", param="logit_bias"
            )
        token = int(key)
        if not 0 <= token < n_vocab:
            raise InvalidRequest(
                f"logit_bias token {token} is outside the vocabulary (0..{n_vocab - 1})",
                param="logit_bias",
            )
        out.append((token, float(bias)))
    return tuple(out)


def generate_requests(
    req: s.SamplingFields,
    request_id: str,
    prompt_tokens: list[int],
    *,
    info: BackendInfo,
    settings: Settings,
    max_tokens: int | None,
    max_tokens_param: str,
    prompt_param: str,
    output: OutputFormat = TEXT,
) -> list[GenerateRequest]:
    """One engine request per choice; seeded choices get distinct, reproducible seeds."""
    limit = completion_budget(
        max_tokens,
        len(prompt_tokens),
        info,
        settings,
        param=max_tokens_param,
        prompt_param=prompt_param,
    )
    base = SamplingParams(
        max_tokens=limit,
        temperature=settings.temperature if req.temperature is None else req.temperature,
        top_p=settings.top_p if req.top_p is None else req.top_p,
        top_k=settings.top_k if req.top_k is None else req.top_k,
        min_p=settings.min_p if req.min_p is None else req.min_p,
        repetition_penalty=req.repetition_penalty or 1.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=_logit_bias(req, info.n_vocab),
        stop=_stops(req),
        ignore_eos=req.ignore_eos,
        json_mode=output.json_mode,
        json_schema=output.json_schema,
    )
    prompt = tuple(prompt_tokens)
    out = []
    for i in range(req.n):
        seed = None if req.seed is None else (req.seed + i) & 0xFFFFFFFF
        sampling = dataclasses.replace(base, seed=seed)
        out.append(GenerateRequest(f"{request_id}-{i}", prompt, sampling))
    return out


# ---- from the engine ------------------------------------------------------------------------


def finish_reason(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason is FinishReason.LENGTH else "stop"


def usage_info(usage: Usage) -> s.UsageInfo:
    return s.UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=s.PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def grouped_usage(usages: dict[int, Usage], n: int) -> Usage:
    """Usage of choices `index // n` sharing a prompt: each prompt counted once."""
    groups: dict[int, list[Usage]] = {}
    for index in sorted(usages):
        groups.setdefault(index // n, []).append(usages[index])
    parts = [total_usage(g) for g in groups.values()]
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in parts),
        completion_tokens=sum(u.completion_tokens for u in parts),
        cached_tokens=sum(u.cached_tokens for u in parts),
    )


def timings(results: list[ChoiceResult]) -> s.Timings:
    """The request's queue wait (longest of its choices), first token (earliest) and decode
    speed (tokens after each choice's first, over the longest decode)."""
    queues = [r.queue_time for r in results if r.queue_time is not None]
    firsts = [r.time_to_first_token for r in results if r.time_to_first_token is not None]
    decode_tokens = sum(max(r.usage.completion_tokens - 1, 0) for r in results)
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
    )


def chat_completion(request_id: str, model: str, results: list[ChoiceResult]) -> s.ChatCompletion:
    return s.ChatCompletion(
        id=request_id,
        created=now(),
        model=model,
        choices=[
            s.ChatChoice(
                index=r.index,
                message=s.AssistantMessage(content=r.text),
                finish_reason=finish_reason(r.finish_reason),
            )
            for r in results
        ],
        usage=usage_info(total_usage([r.usage for r in results])),
        timings=timings(results),
    )


def completion(request_id: str, model: str, results: list[ChoiceResult], n: int) -> s.Completion:
    return s.Completion(
        id=request_id,
        created=now(),
        model=model,
        choices=[
            s.CompletionChoice(
                index=r.index, text=r.text, finish_reason=finish_reason(r.finish_reason)
            )
            for r in results
        ],
        usage=usage_info(grouped_usage({r.index: r.usage for r in results}, n)),
        timings=timings(results),
    )


def stream_error(out: GenerationOutput) -> dict[str, Any]:
    return {
        "error": {
            "message": out.error or "generation failed",
            "type": "server_error",
            "param": None,
            "code": "backend_error",
        }
    }


async def chat_chunks(
    request_id: str,
    model: str,
    n: int,
    outputs: AsyncIterator[tuple[int, GenerationOutput]],
    *,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any] | str]:
    """chat.completion.chunk objects, then the usage chunk if asked for, then [DONE]."""
    created = now()

    def chunk(choices: list[dict[str, Any]], usage: s.UsageInfo | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage.model_dump() if usage else None
        return body

    for i in range(n):
        yield chunk(
            [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )
    usages: dict[int, Usage] = {}
    async for i, out in outputs:
        if out.finish_reason is FinishReason.ERROR:
            yield stream_error(out)
            break
        if out.text:
            yield chunk([{"index": i, "delta": {"content": out.text}, "finish_reason": None}])
        if out.finish_reason is not None:
            usages[i] = out.usage
            yield chunk(
                [{"index": i, "delta": {}, "finish_reason": finish_reason(out.finish_reason)}]
            )
    else:
        if include_usage:
            yield chunk([], usage_info(total_usage([usages[i] for i in sorted(usages)])))
    yield "[DONE]"


async def completion_chunks(
    request_id: str,
    model: str,
    n: int,
    outputs: AsyncIterator[tuple[int, GenerationOutput]],
    *,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any] | str]:
    """text_completion chunks, then the usage chunk if asked for, then [DONE]."""
    created = now()

    def chunk(choices: list[dict[str, Any]], usage: s.UsageInfo | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage.model_dump() if usage else None
        return body

    usages: dict[int, Usage] = {}
    async for i, out in outputs:
        if out.finish_reason is FinishReason.ERROR:
            yield stream_error(out)
            break
        reason = finish_reason(out.finish_reason)
        if out.text or reason:
            yield chunk([{"index": i, "text": out.text, "finish_reason": reason, "logprobs": None}])
        if out.finish_reason is not None:
            usages[i] = out.usage
    else:
        if include_usage:
            yield chunk([], usage_info(grouped_usage(usages, n)))
    yield "[DONE]"
