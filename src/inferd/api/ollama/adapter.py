"""Pure translation between Ollama wire models and engine types."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from inferd.api.embeddings import Embeddings
from inferd.api.ollama import prompt
from inferd.api.ollama import schemas as s
from inferd.api.pipeline.reasoning import thinks
from inferd.api.pipeline.request import (
    ChatPrompt,
    Generation,
    InfillPrompt,
    Options,
    Param,
    Prompt,
    TemplatePrompt,
    TextPrompt,
)
from inferd.api.pipeline.sampling import context_size
from inferd.api.pipeline.template_vars import template_variables
from inferd.api.pipeline.tools import ToolOutput, tool_request
from inferd.api.structured import JSON_OBJECT, TEXT, OutputFormat, schema_format
from inferd.engine.backends.base import ModelInfo
from inferd.engine.types import FinishReason, Usage
from inferd.errors import InvalidRequest, UnsupportedParameter
from inferd.models import describe
from inferd.models.profile import ModelProfile
from inferd.models.registry import LoadedModel, ModelEntry
from inferd.models.spec import ModelSpec

log = logging.getLogger(__name__)

# The Ollama API version inferd speaks (clients check it).
OLLAMA_API_VERSION = "0.9.0"

_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_HUGE = 10**300  # ints beyond this cannot be floats; as keep_alive they mean forever anyway
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: s.KeepAlive) -> float | None:
    """Seconds to keep the model loaded; None: the server default; negative: forever (a
    huge finite value is forever too, decided by the registry's residency policy)."""
    if value is None or value == "":
        return None
    if isinstance(value, int):  # a huge one is forever, as a huge float is
        number = float(max(-_HUGE, min(value, _HUGE)))
    elif isinstance(value, float):
        number = value
    else:
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            number = _parse_duration(text)
    if not math.isfinite(number):
        raise InvalidRequest("keep_alive must be a finite duration or number", param="keep_alive")
    return number


def _parse_duration(text: str) -> float:
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise InvalidRequest(f"invalid keep_alive duration {text[:40]!r}", param="keep_alive")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def check_common(req: s.GenerateRequest | s.ChatRequest) -> None:
    if req.model_extra:
        log.debug("ignoring unknown fields: %s", sorted(req.model_extra)[:20])
    if req.options is not None and req.options.model_extra:
        log.debug("ignoring unknown options: %s", sorted(req.options.model_extra)[:20])
    output_format(req)


def output_format(req: s.GenerateRequest | s.ChatRequest) -> OutputFormat:
    """`format`: "json" (any JSON object), a JSON schema, or nothing."""
    fmt = req.format
    if fmt is None or fmt == "":
        return TEXT
    if fmt == "json":
        return JSON_OBJECT
    if isinstance(fmt, dict):
        return schema_format(fmt, param="format")
    raise InvalidRequest('format must be "json" or a JSON schema object', param="format")


def check_generate(req: s.GenerateRequest) -> None:
    check_common(req)
    if req.images:
        raise UnsupportedParameter("images are not supported", param="images")


def check_chat(req: s.ChatRequest) -> None:
    check_common(req)
    for i, m in enumerate(req.messages):
        if m.images:
            raise UnsupportedParameter("images are not supported", param=f"messages[{i}].images")


def check(req: s.GenerateRequest | s.ChatRequest) -> None:
    if isinstance(req, s.GenerateRequest):
        check_generate(req)
    else:
        check_chat(req)


def check_embed(req: s.EmbedRequest | s.EmbeddingsRequest) -> None:
    if req.model_extra:
        log.debug("ignoring unknown fields: %s", sorted(req.model_extra)[:20])
    if req.options is not None and req.options.model_extra:
        log.debug("ignoring unknown options: %s", sorted(req.options.model_extra)[:20])


def embed_inputs(req: s.EmbedRequest) -> list[str]:
    """The texts to embed; none (absent, "" or []) only loads the model, as in Ollama."""
    if req.input is None or req.input == "":
        return []
    return [req.input] if isinstance(req.input, str) else list(req.input)


def embed_context(options: s.Options | None, info: ModelInfo) -> int:
    """The context an input is truncated to (or checked against): num_ctx (at most the
    model's) or the model's."""
    num_ctx = options.num_ctx if options is not None else None
    return context_size(None if num_ctx is None else Param(num_ctx, "options.num_ctx"), info)


def embed_response(
    model: str, result: Embeddings | None, started: float, load_seconds: float
) -> s.EmbedResponse:
    return s.EmbedResponse(
        model=model,
        embeddings=result.vectors if result else [],
        total_duration=int((time.perf_counter() - started) * 1e9),
        load_duration=int(load_seconds * 1e9),
        prompt_eval_count=result.prompt_tokens if result else 0,
    )


def chat_messages(req: s.ChatRequest) -> list[dict[str, Any]]:
    """Messages as chat templates take them (Hugging Face's convention): an assistant's
    `tool_calls`, a tool result's function as `name`."""
    out: list[dict[str, Any]] = []
    for m in req.messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls and m.role == "assistant":
            msg["tool_calls"] = [
                {
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in m.tool_calls
            ]
        if m.role == "tool" and m.tool_name:
            msg["name"] = m.tool_name
        out.append(msg)
    return out


def tool_calls(out: ToolOutput) -> list[dict[str, Any]]:
    """A message's `tool_calls`, as Ollama writes them (arguments as an object)."""
    return [
        {"id": c.id, "function": {"index": k, "name": c.name, "arguments": c.arguments}}
        for k, c in enumerate(out.calls)
    ]


def options(req: s.GenerateRequest | s.ChatRequest) -> Options:
    """Ollama's options (and the top-level aliases platform clients send). num_predict is
    cut to the room the context leaves, as Ollama does; negative: fill the context."""
    o = req.options or s.Options()
    wanted = (
        Param(o.num_predict, "options.num_predict")
        if o.num_predict is not None
        else None
        if req.max_tokens is None
        else Param(req.max_tokens, "max_tokens")
    )
    if wanted is not None and wanted.value == 0:
        raise InvalidRequest("num_predict must not be 0", param=wanted.name)
    temperature = o.temperature if o.temperature is not None else req.temperature
    return Options(
        max_tokens=wanted if wanted is not None and wanted.value > 0 else None,
        fit_max_tokens=True,
        n_ctx=None if o.num_ctx is None else Param(o.num_ctx, "options.num_ctx"),
        temperature=temperature,
        top_p=o.top_p if o.top_p is not None else req.top_p,
        top_k=o.top_k,
        min_p=o.min_p,
        repetition_penalty=o.repeat_penalty,
        presence_penalty=o.presence_penalty,
        frequency_penalty=o.frequency_penalty,
        penalty_last_n=o.repeat_last_n,
        seed=None if o.seed is None or o.seed < 0 else o.seed,
        stop=None if o.stop is None else Param(tuple(o.stop), "options.stop"),
        logprobs=logprobs(req),
    )


def logprobs(req: s.GenerateRequest | s.ChatRequest) -> Param[int] | None:
    """`logprobs: true`, with `top_logprobs` alternatives (which need logprobs)."""
    if not req.logprobs:
        if req.top_logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
        return None
    return Param(req.top_logprobs or 0, "top_logprobs")


def generate_prompt(req: s.GenerateRequest) -> tuple[Prompt, Param[tuple[int, ...]] | None]:
    """The prompt of /api/generate and the `context` (earlier tokens) before it: fill in
    the middle for a suffix (unless a request template places it), the prompt as it is
    (raw: no context), the request's own template, or the model's chat template."""
    context = None if not req.context else Param(tuple(req.context), "context")
    if req.suffix and (req.raw or not req.template):
        if req.system:
            log.debug("system is ignored with suffix: a fill-in-the-middle prompt has none")
        return InfillPrompt(req.prompt, req.suffix), context
    if req.raw:
        return TextPrompt(req.prompt), None
    if req.template:

        def render(mark: Callable[[str], str], bos: str, eos: str) -> str:
            marked = req.model_copy(
                update={
                    "prompt": mark(req.prompt or ""),
                    "system": mark(req.system) if req.system else req.system,
                    "suffix": mark(req.suffix) if req.suffix else req.suffix,
                }
            )
            return prompt.render(marked, bos_token=bos, eos_token=eos)

        return TemplatePrompt(render), context
    return ChatPrompt(prompt.generate_messages(req), variables=think_variables(req)), context


def think_variables(req: s.GenerateRequest | s.ChatRequest) -> dict[str, Any] | None:
    """`think` for a Jinja template, as `enable_thinking` (Qwen 3's templates read it)."""
    if req.think is None:
        return None
    return template_variables(None, enable_thinking=req.think is not False, thinking_param="think")


def chat_template_prompt(req: s.ChatRequest, template: str) -> TemplatePrompt:
    """/api/chat's messages rendered by the model's own template (Go or Jinja)."""

    def render(mark: Callable[[str], str], bos: str, eos: str) -> str:
        messages = [{"role": m.role, "content": mark(m.content)} for m in req.messages]
        return prompt.render_chat(template, messages, bos_token=bos, eos_token=eos)

    return TemplatePrompt(render)


def loads_only(req: s.GenerateRequest | s.ChatRequest) -> bool:
    """Nothing to generate: the request only loads (or, keep_alive 0, unloads) the model."""
    if isinstance(req, s.GenerateRequest):
        return not req.prompt and not req.suffix and not req.context
    return not req.messages


def with_profile(
    req: s.GenerateRequest | s.ChatRequest, profile: ModelProfile
) -> s.GenerateRequest | s.ChatRequest:
    """The request with what /api/create gave its model where the request sets nothing:
    options under its own, the system prompt, the template, leading messages."""
    own = req.options.model_dump(exclude_none=True) if req.options is not None else {}
    update: dict[str, Any] = {"options": s.Options.model_validate({**profile.parameters, **own})}
    if isinstance(req, s.GenerateRequest):
        if req.system is None and profile.system:
            update["system"] = profile.system
        if req.template is None and profile.template and not req.raw:
            update["template"] = profile.template
        return req.model_copy(update=update)
    lead = [s.Message.model_validate(m) for m in profile.messages]
    if profile.system and not any(m.role == "system" for m in req.messages):
        lead.insert(0, s.Message(role="system", content=profile.system))
    update["messages"] = [*lead, *req.messages]
    return req.model_copy(update=update)


def generation(
    req: s.GenerateRequest | s.ChatRequest, profile: ModelProfile | None = None
) -> Generation:
    """An /api/generate or /api/chat request as the pipeline's request (`profile`: what
    /api/create gave the model)."""
    check(req)
    if profile is not None:
        req = with_profile(req, profile)
    if isinstance(req, s.GenerateRequest):
        first, context = generate_prompt(req)
    elif profile is not None and profile.template:
        first, context = chat_template_prompt(req, profile.template), None
    else:
        first = ChatPrompt(chat_messages(req), trim_history=True, variables=think_variables(req))
        context = None
    tools = tool_request(req.tools) if isinstance(req, s.ChatRequest) else None
    return Generation(
        model=req.model,
        prompts=[first],
        prompt_param="prompt" if isinstance(req, s.GenerateRequest) else "messages",
        options=options(req),
        output=output_format(req),
        output_param="format",
        context=context,
        tools=tools,
        think=None if req.think is None else req.think is not False,
    )


def done_reason(reason: FinishReason | None) -> str:
    return "length" if reason is FinishReason.LENGTH else "stop"


def final_stats(
    usage: Usage, started: float, ttft: float | None, load_seconds: float
) -> dict[str, int]:
    """Ollama's counters and durations, in nanoseconds."""
    total = time.perf_counter() - started
    first = ttft if ttft is not None else total
    return {
        "total_duration": int(total * 1e9),
        "load_duration": int(load_seconds * 1e9),
        # the whole prompt, as Ollama counts it (clients report it as the input tokens);
        # cached tokens are not subtracted
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": int(first * 1e9),
        "eval_count": usage.completion_tokens,
        "eval_duration": int(max(total - first, 0.0) * 1e9),
    }


# ---- model descriptions ---------------------------------------------------------------------


def digest(spec: ModelSpec) -> str:
    """A stable identity for the file (name, size, mtime), not a content hash."""
    try:
        st = spec.path.stat()
        ident = f"{spec.path.name}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        ident = spec.path.name
    return hashlib.sha256(ident.encode()).hexdigest()


def modified_at(spec: ModelSpec) -> str:
    try:
        ts = spec.path.stat().st_mtime
    except OSError:
        ts = 0.0
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def file_size(spec: ModelSpec) -> int:
    return describe.disk_size(spec.path)


def details(entry: ModelEntry) -> s.ModelDetails:
    """From what the model's last load learnt: still known after an unload."""
    if not entry.metadata:
        return s.ModelDetails()
    fam = describe.family(entry.metadata)
    return s.ModelDetails(
        family=fam,
        families=[fam],
        parameter_size=describe.parameter_size(entry.n_params),
        quantization_level=describe.quantization(entry.metadata),
    )


def running(
    entry: ModelEntry,
    *,
    size: int,
    expires_at: str | None = None,
    context_length: int | None = None,
) -> s.RunningModel:
    """One model of /api/ps: a loaded one (until `expires_at`), or one being converted or
    loaded, with how far it is."""
    p = entry.progress
    return s.RunningModel(
        name=entry.spec.name,
        model=entry.spec.name,
        size=size,
        digest=digest(entry.spec),
        details=details(entry),
        expires_at=expires_at,
        context_length=context_length,
        status=entry.status.value,
        progress=None if p is None else s.LoadStep(phase=p.phase, fraction=p.fraction),
    )


def capabilities(model: LoadedModel) -> list[str]:
    """What the model can do, in Ollama's words."""
    found = ["completion"]
    if model.tools is not None:
        found.append("tools")
    if model.engine.info.supports_insert:
        found.append("insert")
    if thinks(model):
        found.append("thinking")
    return found


def show(model: LoadedModel, entry: ModelEntry, profile: ModelProfile | None) -> s.ShowResponse:
    info = model.engine.info
    meta = model.metadata
    made = profile or ModelProfile()
    params: dict[str, Any] = {"num_ctx": info.n_ctx, "stop": info.eos_token, **made.parameters}
    lines = [f"{k:<16}{v}" for k, v in params.items() if not isinstance(v, list)]
    lines += [f"{k:<16}{x}" for k, v in params.items() if isinstance(v, list) for x in v]
    template = made.template or model.template.source
    return s.ShowResponse(
        modelfile=modelfile(model.spec.path.name, template, made),
        parameters="\n".join(lines),
        template=template,
        system=made.system or None,
        license=made.license or None,
        messages=[dict(m) for m in made.messages] or None,
        details=details(entry),
        model_info=describe.model_info(meta, info.n_params),
        capabilities=capabilities(model),
        modified_at=modified_at(model.spec),
    )


def modelfile(file: str, template: str, profile: ModelProfile) -> str:
    """The model as a Modelfile (what /api/create would make it again from)."""
    out = ["# Served by inferd", f"FROM {file}", f'TEMPLATE """{template}"""']
    if profile.system:
        out.append(f'SYSTEM """{profile.system}"""')
    for key, value in profile.parameters.items():
        for v in value if isinstance(value, list) else [value]:
            out.append(f"PARAMETER {key} {json.dumps(v) if isinstance(v, str) else v}")
    out += [f'MESSAGE {m["role"]} """{m["content"]}"""' for m in profile.messages]
    if profile.license:
        out.append(f'LICENSE """{profile.license}"""')
    return "\n".join(out) + "\n"
