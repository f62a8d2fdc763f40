"""Render and tokenize: a neutral prompt becomes the token ids the engine runs.

Tool descriptions and reasoning markers will be added here, once, for every dialect.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from inferd.api.pipeline.request import (
    ChatPrompt,
    InfillPrompt,
    Prompt,
    TemplatePrompt,
    TokenPrompt,
)
from inferd.api.prompting import tokenize_chat, tokenize_prompt, tokenize_rendered
from inferd.api.renders import RenderSlots
from inferd.engine.backends.base import ModelInfo
from inferd.engine.client import EngineClient
from inferd.errors import InvalidRequest, UnsupportedParameter
from inferd.models.registry import LoadedModel

log = logging.getLogger(__name__)


async def prompt_tokens(
    model: LoadedModel,
    prompt: Prompt,
    *,
    renders: RenderSlots,
    n_ctx: int,
    context: Sequence[int] = (),
    param: str,
) -> list[int]:
    """The token ids of `prompt`, after `context` (earlier tokens: then no BOS is added),
    for a context of `n_ctx` tokens (a chat prompt that may trim its history is fitted to
    it). Templates that may be slow render in one of `renders`' slots. Errors name `param`."""
    engine = model.engine
    info = engine.info
    if isinstance(prompt, TokenPrompt):
        check_vocabulary(prompt.tokens, info.n_vocab, param=param)
        return [*context, *prompt.tokens]
    if isinstance(prompt, InfillPrompt):
        if not isinstance(prompt.prefix, str):
            check_vocabulary(prompt.prefix, info.n_vocab, param=param)
        infill = await infill_tokens(
            engine, prompt.prefix, prompt.suffix, model_name=model.name, add_bos=not context
        )
        return [*context, *infill]
    if isinstance(prompt, ChatPrompt):
        # message content is tokenized as text: it can never forge the template's markers
        chat = await tokenize_chat(
            engine,
            model.template,
            prompt.messages,
            renders=renders,
            add_bos=not context,
            tools=prompt.tools,
            variables=prompt.variables,
        )
        if prompt.trim_history and len(context) + len(chat) >= n_ctx:
            chat = await trimmed_chat(model, prompt, chat, n_ctx - len(context), renders)
        return [*context, *chat]
    if isinstance(prompt, TemplatePrompt):
        # a request's own template may be slow to render (within its deadline): never on
        # the event loop
        render = prompt.render
        ids = await tokenize_rendered(
            engine,
            lambda mark: render(mark, info.bos_token, info.eos_token),
            renders=renders,
            add_bos=not context,
        )
        return [*context, *ids]
    return [*context, *await tokenize_prompt(engine, prompt.text, add_bos=not context)]


async def trimmed_chat(
    model: LoadedModel, prompt: ChatPrompt, ids: list[int], room: int, renders: RenderSlots
) -> list[int]:
    """A conversation whose prompt (`ids`) leaves no room in the context: without its
    oldest messages, as Ollama's /api/chat does (system messages and the last one stay),
    dropping as few as fit in fewer than `room` tokens; the full prompt when even the
    shortest does not fit (the budget then refuses it with the numbers)."""
    engine = model.engine
    messages = prompt.messages
    best = ids
    lo, hi = 1, len(messages) - 1  # keep the messages from `start` on, and earlier systems
    while lo <= hi:
        start = (lo + hi) // 2
        kept = [m for m in messages[:start] if m.get("role") == "system"] + messages[start:]
        trial = await tokenize_chat(
            engine,
            model.template,
            kept,
            renders=renders,
            tools=prompt.tools,
            variables=prompt.variables,
        )
        if len(trial) < room:
            best, hi = trial, start - 1
        else:
            lo = start + 1
    if best is not ids:
        log.info(
            "the conversation (%d tokens) is longer than the context (%d): its oldest "
            "messages were dropped, leaving %d tokens",
            len(ids),
            room,
            len(best),
        )
    return best


def check_vocabulary(tokens: Sequence[int], n_vocab: int, *, param: str) -> None:
    bad = next((t for t in tokens if t < 0 or t >= n_vocab), None)
    if bad is not None:
        raise InvalidRequest(
            f"{param} holds token id {bad}, outside the vocabulary (0..{n_vocab - 1})",
            param=param,
        )


def check_insert(info: ModelInfo, model_name: str) -> None:
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
