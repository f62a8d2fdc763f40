"""The server's limits, the context budget and the one SamplingParams builder.

Every dialect's request goes through the same checks here, so a limit means the same on
every route; errors name the parameter as the client's dialect spells it (`Param.name`).
"""

from __future__ import annotations

import dataclasses
import logging

from inferd.api.pipeline.request import Generation, Options, Param
from inferd.api.structured import TEXT
from inferd.config import Settings
from inferd.engine.backends.base import ModelInfo
from inferd.engine.types import SamplingParams
from inferd.errors import ContextTooLong, InvalidRequest

log = logging.getLogger(__name__)

_SEED_MASK = 0xFFFFFFFF
MAX_TOP_LOGPROBS = 20
_PENALTY_LAST_N = 64


def check_limits(gen: Generation, settings: Settings) -> None:
    """Caps that protect the server, checked before anything is tokenized or allocated."""
    n = gen.n
    if n.value > settings.max_n:
        raise InvalidRequest(f"n must be at most {settings.max_n}", param=n.name)
    if len(gen.prompts) * n.value > settings.max_batch_choices:
        raise InvalidRequest(
            f"prompts x n may be at most {settings.max_batch_choices} per request",
            param=gen.prompt_param,
        )
    o = gen.options
    if o.stop is not None:
        if len(o.stop.value) > settings.max_stop:
            raise InvalidRequest(
                f"at most {settings.max_stop} stop sequences are allowed", param=o.stop.name
            )
        if any(len(x) > settings.max_stop_length for x in o.stop.value):
            raise InvalidRequest(
                f"stop sequences may be at most {settings.max_stop_length} characters",
                param=o.stop.name,
            )
    if o.logit_bias is not None and len(o.logit_bias.value) > settings.max_logit_bias:
        raise InvalidRequest(
            f"logit_bias may have at most {settings.max_logit_bias} entries",
            param=o.logit_bias.name,
        )
    if o.logprobs is not None and not 0 <= o.logprobs.value <= MAX_TOP_LOGPROBS:
        raise InvalidRequest(
            f"{o.logprobs.name} must be between 0 and {MAX_TOP_LOGPROBS}", param=o.logprobs.name
        )
    if o.ignore_eos is not None and o.ignore_eos.value and gen.output != TEXT:
        # the grammar ends the output with EOS: forbidding it leaves no token to sample
        raise InvalidRequest(
            "ignore_eos cannot be combined with a JSON output format", param=o.ignore_eos.name
        )


def context_size(n_ctx: Param[int] | None, info: ModelInfo) -> int:
    """The request's context window: the model's, or a smaller one it asks for. A larger
    one is cut to the model's, with a log line, as Ollama does (the one dialect that asks)."""
    if n_ctx is None:
        return info.n_ctx
    if n_ctx.value > info.n_ctx:
        log.warning(
            "%s %d is above the model's context of %d: using %d",
            n_ctx.name,
            n_ctx.value,
            info.n_ctx,
            info.n_ctx,
        )
        return info.n_ctx
    return n_ctx.value


def completion_budget(
    options: Options, prompt_len: int, n_ctx: int, settings: Settings, *, prompt_param: str
) -> int:
    """How many tokens to generate: what was asked for, within the context and the server's
    limit (a 400 naming the parameter otherwise, unless the request fits it to the room);
    when nothing was asked, fill the context (or the default_max_tokens setting)."""
    if prompt_len == 0:
        raise InvalidRequest("the prompt is empty", param=prompt_param)
    if prompt_len >= n_ctx:
        raise ContextTooLong(
            f"This model's maximum context length is {n_ctx} tokens, "
            f"but the prompt has {prompt_len} tokens",
            param=prompt_param,
        )
    room = n_ctx - prompt_len
    if options.max_tokens is None:
        return min(settings.default_max_tokens or room, room)
    requested, param = options.max_tokens.value, options.max_tokens.name
    if settings.max_tokens_limit is not None and requested > settings.max_tokens_limit:
        raise InvalidRequest(
            f"{param} is {requested}, above this server's limit of {settings.max_tokens_limit}",
            param=param,
        )
    if requested > room:
        if options.fit_max_tokens:
            return room
        raise ContextTooLong(
            f"This model's maximum context length is {n_ctx} tokens: the prompt has "
            f"{prompt_len} tokens, so at most {room} can be generated, but {param} is "
            f"{requested}",
            param=param,
        )
    return requested


def logit_bias(options: Options, n_vocab: int) -> tuple[tuple[int, float], ...]:
    if options.logit_bias is None:
        return ()
    param = options.logit_bias.name
    out = []
    for key, bias in options.logit_bias.value.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 10):
            raise InvalidRequest(f"logit_bias key {key[:32]!r} is not a token id", param=param)
        token = int(key)
        if not 0 <= token < n_vocab:
            raise InvalidRequest(
                f"logit_bias token {token} is outside the vocabulary (0..{n_vocab - 1})",
                param=param,
            )
        out.append((token, float(bias)))
    return tuple(out)


def sampling_params(
    gen: Generation, prompt_len: int, info: ModelInfo, settings: Settings, n_ctx: int
) -> SamplingParams:
    """The sampling parameters of a prompt's first choice (see `choice_sampling`) in a
    context of `n_ctx` tokens (`context_size`)."""
    o = gen.options
    penalty_last_n = _PENALTY_LAST_N if o.penalty_last_n is None else o.penalty_last_n
    return SamplingParams(
        max_tokens=completion_budget(o, prompt_len, n_ctx, settings, prompt_param=gen.prompt_param),
        temperature=settings.temperature if o.temperature is None else o.temperature,
        top_p=settings.top_p if o.top_p is None else o.top_p,
        top_k=settings.top_k if o.top_k is None else o.top_k,
        min_p=settings.min_p if o.min_p is None else o.min_p,
        repetition_penalty=o.repetition_penalty or 1.0,
        presence_penalty=o.presence_penalty or 0.0,
        frequency_penalty=o.frequency_penalty or 0.0,
        penalty_last_n=n_ctx if penalty_last_n == -1 else penalty_last_n,
        seed=None if o.seed is None else o.seed & _SEED_MASK,
        logit_bias=logit_bias(o, info.n_vocab),
        stop=tuple(x for x in o.stop.value if x) if o.stop is not None else (),
        ignore_eos=o.ignore_eos is not None and o.ignore_eos.value,
        json_mode=gen.output.json_mode,
        json_schema=gen.output.json_schema,
        logprobs=None if o.logprobs is None else o.logprobs.value,
        prompt_logprobs=o.logprobs.value if o.logprobs is not None and o.prompt_logprobs else None,
    )


def choice_sampling(base: SamplingParams, index: int) -> SamplingParams:
    """Choice `index` of a prompt: seeded choices get distinct, reproducible seeds."""
    if base.seed is None or index == 0:
        return base
    return dataclasses.replace(base, seed=(base.seed + index) & _SEED_MASK)
