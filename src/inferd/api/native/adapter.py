"""Pure translation between native wire models and engine types."""

from __future__ import annotations

import logging
from typing import Any

from inferd.api.generation import ChoiceResult, completion_budget
from inferd.api.native import schemas as s
from inferd.config import Settings
from inferd.engine.backends.base import BackendInfo
from inferd.engine.types import FinishReason, SamplingParams
from inferd.errors import InvalidRequest
from inferd.models import describe
from inferd.models.registry import ModelEntry

log = logging.getLogger(__name__)


def sampling(
    body: s.GenerateBody | s.ChatBody, prompt_len: int, info: BackendInfo, settings: Settings
) -> SamplingParams:
    if body.model_extra:
        log.debug("ignoring unknown fields: %s", sorted(body.model_extra)[:20])
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stops) > settings.max_stop or any(len(x) > settings.max_stop_length for x in stops):
        raise InvalidRequest(
            f"at most {settings.max_stop} stop strings of {settings.max_stop_length} characters",
            param="stop",
        )
    return SamplingParams(
        max_tokens=completion_budget(
            body.max_tokens,
            prompt_len,
            info,
            settings,
            param="max_tokens",
            prompt_param="prompt" if isinstance(body, s.GenerateBody) else "messages",
        ),
        temperature=settings.temperature if body.temperature is None else body.temperature,
        top_p=settings.top_p if body.top_p is None else body.top_p,
        top_k=settings.top_k if body.top_k is None else body.top_k,
        min_p=settings.min_p if body.min_p is None else body.min_p,
        repetition_penalty=body.repetition_penalty or 1.0,
        seed=None if body.seed is None else body.seed & 0xFFFFFFFF,
        stop=tuple(x for x in stops if x),
    )


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
    if r.finish_reason is FinishReason.ABORT:
        reason = "cancelled"
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
    spec = entry.spec
    try:
        size = spec.path.stat().st_size
    except OSError:
        size = 0
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
        )
    return s.ModelInfo(
        name=spec.name,
        aliases=list(spec.aliases),
        status=entry.status.value,
        loaded=entry.model is not None,
        path=spec.path.name,
        size=size,
        error=entry.error,
        config=config,
    )
