"""Pure translation between native wire models and engine types."""

from __future__ import annotations

import logging
from typing import Any

from inferd.api.native import schemas as s
from inferd.api.pipeline.request import ChatPrompt, Generation, Options, Param, Session, TextPrompt
from inferd.api.pipeline.run import ChoiceResult
from inferd.api.pipeline.template_vars import template_variables
from inferd.engine.types import FinishReason, SamplingParams
from inferd.errors import InvalidRequest
from inferd.models import describe
from inferd.models.registry import ModelEntry

log = logging.getLogger(__name__)


def generation(body: s.GenerateBody | s.ChatBody, *, chat_template: bool = False) -> Generation:
    """A native request as the pipeline's request; a prompt goes through the model's chat
    template when `chat_template` (the route's default) or the request's `raw: false` asks."""
    if body.model_extra:
        log.debug("ignoring unknown fields: %s", sorted(body.model_extra)[:20])
    stop = None
    if body.stop is not None:
        stop = Param((body.stop,) if isinstance(body.stop, str) else tuple(body.stop), "stop")
    options = Options(
        max_tokens=None if body.max_tokens is None else Param(body.max_tokens, "max_tokens"),
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        stop=stop,
    )
    variables = template_variables(body.chat_template_kwargs, enable_thinking=body.enable_thinking)
    if isinstance(body, s.GenerateBody):
        prompt = generate_prompt(body, chat_template, variables)
        return Generation(body.model, [prompt], "prompt", options)
    messages = [m.model_dump() for m in body.messages]
    return Generation(
        body.model,
        [ChatPrompt(messages, variables=variables)],
        "messages",
        options,
        session=Session(body.session_id, body.session_history),
    )


def generate_prompt(
    body: s.GenerateBody, chat_template: bool, variables: dict[str, Any] | None
) -> TextPrompt | ChatPrompt:
    """The prompt as it is (raw), or a user message (after `system`) in the model's chat
    template with the request's template variables."""
    raw = body.raw if body.raw is not None else not chat_template
    if raw:
        if variables is not None:
            given = body.chat_template_kwargs is not None
            param = "chat_template_kwargs" if given else "enable_thinking"
            raise InvalidRequest(
                f"{param} needs the chat template: this prompt is raw (send raw: false)",
                param=param,
            )
        return TextPrompt(body.prompt)
    system = [] if body.system is None else [{"role": "system", "content": body.system}]
    return ChatPrompt([*system, {"role": "user", "content": body.prompt}], variables=variables)


def parameters(sp: SamplingParams) -> dict[str, Any]:
    """The effective parameters, echoed in every answer."""
    return {
        "max_tokens": sp.max_tokens,
        "temperature": sp.temperature,
        "top_k": sp.top_k,
        "top_p": sp.top_p,
        "min_p": sp.min_p,
        "repetition_penalty": sp.repetition_penalty,
        "stop": list(sp.stop),
        "seed": sp.seed,
    }


def result(
    r: ChoiceResult, *, model: str, prompt: str | None, sp: SamplingParams, elapsed: float
) -> s.GenerationResult:
    reason = "length" if r.finish_reason is FinishReason.LENGTH else "stop"
    n = r.usage.completion_tokens
    return s.GenerationResult(
        text=r.text,
        generated_text=r.text,
        prompt=prompt,
        model=model,
        model_used=model,
        finish_reason=reason,
        prompt_tokens=r.usage.prompt_tokens,
        cached_tokens=r.usage.cached_tokens,
        tokens_generated=n,
        generation_time=round(elapsed, 6),
        time_to_first_token=(
            None if r.time_to_first_token is None else round(r.time_to_first_token, 6)
        ),
        tokens_per_second=round(n / elapsed, 3) if elapsed > 0 else 0.0,
        parameters=parameters(sp),
    )


def model_info(entry: ModelEntry) -> s.ModelInfo:
    spec, p = entry.spec, entry.progress
    size = describe.disk_size(spec.path)
    config: dict[str, Any] = {}
    meta = entry.metadata
    arch = describe.family(meta)

    def num(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}", "")
        return int(value) if value.isdigit() else None

    if meta:  # from the last load, or read from the file's header
        vocab = entry.array_lengths.get("tokenizer.ggml.tokens") or num("vocab_size")
        config = {
            "architecture": arch,
            "parameters": entry.n_params,
            "parameter_size": describe.parameter_size(entry.n_params),
            "quantization": describe.quantization(meta),
            "context_length": num("context_length"),
            "context_length_train": num("context_length"),
            "vocab_size": vocab,
            "embedding_size": num("embedding_length"),
            "layers": num("block_count"),
            "heads": num("attention.head_count"),
            "heads_kv": num("attention.head_count_kv"),
        }
        if num("expert_count"):  # a Mixture-of-Experts model
            config.update(experts=num("expert_count"), experts_used=num("expert_used_count"))
    if entry.model is not None:
        info = entry.model.engine.info
        facts = entry.model.engine.facts()
        config.update(
            parameters=info.n_params,
            parameter_size=describe.parameter_size(info.n_params),
            context_length=info.n_ctx,
            context_length_train=info.n_ctx_train,
            vocab_size=info.n_vocab,
            max_seqs=info.max_seqs,
            kv_cells=facts.get("kv_cells"),
            kv_split=facts.get("kv_layout") == "split",
            flash_attn=facts.get("flash_attn"),
        )
    return s.ModelInfo(
        name=spec.name,
        aliases=list(spec.aliases),
        status=entry.status.value,
        loaded=entry.model is not None,
        path=spec.path.name,
        size=size,
        error=entry.error,
        progress=None if p is None else s.LoadProgress(phase=p.phase, fraction=p.fraction),
        config=config,
    )
