"""Running a request's choices on the engine, for every dialect."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferd.config import Settings
from inferd.engine.backends.base import BackendInfo
from inferd.engine.client import EngineClient
from inferd.engine.types import FinishReason, GenerateRequest, GenerationOutput, Usage
from inferd.errors import BackendError, ContextTooLong, InvalidRequest, UnsupportedParameter
from inferd.models.chat_template import ChatTemplate

# Conversations longer than this (messages, or characters of content) are rendered off the
# event loop: a sandboxed render costs ~9 us a message here, 18 ms for 2,000 messages, and
# every stream's next token would wait for it.
_INLINE_RENDER_MESSAGES = 32
_INLINE_RENDER_CHARS = 16384


@dataclass
class ChoiceResult:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    usage: Usage = field(default_factory=Usage)
    time_to_first_token: float | None = None
    queue_time: float | None = None
    seconds: float | None = None  # from submitting to the engine to the last token


async def stream_choices(
    engine: EngineClient, requests: list[GenerateRequest]
) -> AsyncIterator[tuple[int, GenerationOutput]]:
    """Outputs of all choices as they come, tagged with the choice index.

    Leaving the iteration early (client gone) closes every choice's generator, which
    aborts its sequence in the engine.
    """
    if len(requests) == 1:
        async with contextlib.aclosing(engine.generate(requests[0])) as gen:
            async for out in gen:
                yield 0, out
        return
    queue: asyncio.Queue[tuple[int, GenerationOutput] | None] = asyncio.Queue()

    async def pump(index: int, req: GenerateRequest) -> None:
        try:
            async with contextlib.aclosing(engine.generate(req)) as gen:
                async for out in gen:
                    await queue.put((index, out))
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect_choices(
    engine: EngineClient, requests: list[GenerateRequest]
) -> list[ChoiceResult]:
    """Run all choices to the end. An engine error becomes a BackendError."""
    results = [ChoiceResult(i) for i in range(len(requests))]
    started = time.monotonic()
    async for i, out in stream_choices(engine, requests):
        r = results[i]
        r.text += out.text
        r.token_ids.extend(out.token_ids)
        r.usage = out.usage
        if out.finish_reason is not None:
            if out.finish_reason is FinishReason.ERROR:
                raise BackendError(out.error or "generation failed")
            r.finish_reason = out.finish_reason
            r.time_to_first_token = out.time_to_first_token
            r.queue_time = out.queue_time
            r.seconds = time.monotonic() - started
    return results


def total_usage(usages: list[Usage]) -> Usage:
    """Choices share one prompt: count it once, add up the completions."""
    if not usages:
        return Usage()
    return Usage(
        prompt_tokens=usages[0].prompt_tokens,
        completion_tokens=sum(u.completion_tokens for u in usages),
        cached_tokens=usages[0].cached_tokens,
    )


async def render_chat(template: ChatTemplate, messages: list[dict[str, Any]]) -> str:
    """The chat template applied to `messages`: inline when short, else on a worker thread."""
    if len(messages) <= _INLINE_RENDER_MESSAGES:
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        if chars <= _INLINE_RENDER_CHARS:
            return template.render(messages)
    return await asyncio.to_thread(template.render, messages)


async def tokenize_prompt(engine: EngineClient, text: str) -> list[int]:
    """Tokenize a rendered prompt: special tokens parsed, BOS added once if the model wants it."""
    info = engine.info
    has_bos = bool(info.bos_token) and text.startswith(info.bos_token)
    return await engine.tokenize(text, add_special=not has_bos, parse_special=True)


def check_insert(info: BackendInfo, model_name: str) -> None:
    """A 400 naming `suffix` unless the model can fill in the middle (in Ollama's words)."""
    if not info.supports_insert:
        raise UnsupportedParameter(
            f"{model_name} does not support insert: suffix needs a model with "
            "fill-in-the-middle tokens",
            param="suffix",
        )


async def infill_tokens(
    engine: EngineClient,
    prefix: str | Sequence[int],
    suffix: str,
    *,
    model_name: str,
    add_bos: bool = True,
) -> list[int]:
    """A fill-in-the-middle prompt in PSM order, as llama.cpp's server builds it:
    [BOS] FIM_PRE prefix FIM_SUF suffix FIM_MID. Prefix and suffix are tokenized as plain
    text (special-token text in them stays text); token ids are taken as they are. BOS only
    where the model adds one, and not when `add_bos` is false (the prompt continues a
    context). No chat template: the model generates the middle."""
    info = engine.info
    check_insert(info, model_name)
    pre = (
        await engine.tokenize(prefix, add_special=False, parse_special=False)
        if isinstance(prefix, str)
        else list(prefix)
    )
    suf = await engine.tokenize(suffix, add_special=False, parse_special=False)
    # tokenizing nothing with special tokens gives exactly the BOS the model wants, if any
    bos = await engine.tokenize("", add_special=True, parse_special=False) if add_bos else []
    return [*bos, info.fim_pre, *pre, info.fim_suf, *suf, info.fim_mid]


def completion_budget(
    requested: int | None,
    prompt_len: int,
    info: BackendInfo,
    settings: Settings,
    *,
    param: str,
    prompt_param: str,
) -> int:
    """How many tokens to generate: what was asked for, within the context and the server's
    limit (a 400 naming `param` otherwise); when nothing was asked, fill the context."""
    n_ctx = info.n_ctx
    if prompt_len == 0:
        raise InvalidRequest("the prompt is empty", param=prompt_param)
    if prompt_len >= n_ctx:
        raise ContextTooLong(
            f"This model's maximum context length is {n_ctx} tokens, "
            f"but the prompt has {prompt_len} tokens",
            param=prompt_param,
        )
    room = n_ctx - prompt_len
    if requested is None:
        return min(settings.default_max_tokens or room, room)
    if settings.max_tokens_limit is not None and requested > settings.max_tokens_limit:
        raise InvalidRequest(
            f"{param} is {requested}, above this server's limit of {settings.max_tokens_limit}",
            param=param,
        )
    if requested > room:
        raise ContextTooLong(
            f"This model's maximum context length is {n_ctx} tokens: the prompt has "
            f"{prompt_len} tokens, so at most {room} can be generated, but {param} is "
            f"{requested}",
            param=param,
        )
    return requested
