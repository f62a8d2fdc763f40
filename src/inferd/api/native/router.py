"""Native routes: plain JSON answers with timing statistics, SSE streams, model management."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, Request, Response
from sse_starlette import EventSourceResponse

from inferd.api import tokenizer
from inferd.api.access import check_model, require_admin, use_model
from inferd.api.deps import RegistryDep, SettingsDep
from inferd.api.native import adapter
from inferd.api.native import schemas as s
from inferd.api.openapi import MODEL_QUERY, SSE
from inferd.api.pipeline.run import ChoiceResult, prepare
from inferd.api.routing import Dialect, RecordDep, dialect_router
from inferd.api.streaming import sse_response
from inferd.config import Settings

router = dialect_router(Dialect.NATIVE, tags=["native"])


async def _answer(
    request: Request, record: RecordDep, body: s.GenerateBody | s.ChatBody
) -> s.GenerationResult:
    run = await prepare(request, adapter.generation(body), record)
    prompt = body.prompt if isinstance(body, s.GenerateBody) else None
    results = await run.collect(request)
    return adapter.result(
        results[0], model=run.model.name, prompt=prompt, sp=run.sampling, elapsed=record.seconds()
    )


async def _stream(
    request: Request,
    record: RecordDep,
    settings: Settings,
    body: s.GenerateBody | s.ChatBody,
    *,
    chat_template: bool = False,
) -> Response:
    run = await prepare(request, adapter.generation(body, chat_template=chat_template), record)
    prompt = body.prompt if isinstance(body, s.GenerateBody) else None

    async def events() -> AsyncIterator[list[dict[str, Any]]]:
        r = ChoiceResult(0)
        async for batch in run.stream():
            written: list[dict[str, Any]] = []
            for _, out in batch:
                r.text += out.text
                r.token_ids.extend(out.token_ids)
                if out.text:
                    written.append({"text": out.text, "done": False})
                if out.finish_reason is not None:
                    r.finish_reason = out.finish_reason
                    r.usage = out.usage
                    r.time_to_first_token = out.time_to_first_token
                    final = adapter.result(
                        r,
                        model=run.model.name,
                        prompt=prompt,
                        sp=run.sampling,
                        elapsed=record.seconds(),
                    )
                    written.append({**final.model_dump(), "done": True})
            yield written

    return sse_response(request, events(), drain_timeout=settings.drain_timeout)


@router.post("/generate", response_model=s.GenerationResult)
async def generate(
    body: s.GenerateBody, request: Request, record: RecordDep
) -> s.GenerationResult | Response:
    """Complete a prompt; the answer carries `text` (and `generated_text`) with statistics."""
    return await _answer(request, record, body)


@router.post("/chat", response_model=s.GenerationResult)
async def chat(
    body: s.ChatBody, request: Request, record: RecordDep
) -> s.GenerationResult | Response:
    """Answer a conversation rendered with the model's chat template; `session_id` stores
    the exchange, `session_history: true` prepends the stored conversation."""
    return await _answer(request, record, body)


@router.post("/generate/stream", response_class=EventSourceResponse, responses=SSE)
async def generate_stream(
    body: s.GenerateBody, request: Request, record: RecordDep, settings: SettingsDep
) -> Response:
    """SSE: `{"text", "done": false}` per delta, then the statistics with `"done": true`."""
    return await _stream(request, record, settings, body)


@router.post("/api/generate/stream", response_class=EventSourceResponse, responses=SSE)
async def platform_generate_stream(
    body: s.GenerateBody, request: Request, record: RecordDep, settings: SettingsDep
) -> Response:
    """As /generate/stream, but the prompt is a user message in the model's chat template
    (as Ollama's /api/generate does); `raw: true` sends the text as it is."""
    return await _stream(request, record, settings, body, chat_template=True)


@router.post("/chat/stream", response_class=EventSourceResponse, responses=SSE)
@router.post("/api/chat/stream", response_class=EventSourceResponse, responses=SSE)
async def chat_stream(
    body: s.ChatBody, request: Request, record: RecordDep, settings: SettingsDep
) -> Response:
    """SSE, as /generate/stream, for a conversation (sessions as /chat)."""
    return await _stream(request, record, settings, body)


@router.post("/tokenize", response_model=s.TokenizeResult)
async def tokenize(body: s.TokenizeBody, request: Request, registry: RegistryDep) -> Response:
    """The ids of `content` (llama-server) or `prompt` (vLLM) in the model's vocabulary;
    `add_special`, `parse_special`, `with_pieces`, `return_token_strs`."""
    async with use_model(request, registry, body.model) as model:
        return await tokenizer.tokenize(model, body)


@router.post("/detokenize", response_model=s.DetokenizeResult)
async def detokenize(body: s.DetokenizeBody, request: Request, registry: RegistryDep) -> Response:
    """The text of `tokens`, as `content` (llama-server) and `prompt` (vLLM)."""
    async with use_model(request, registry, body.model) as model:
        return await tokenizer.detokenize(model, body)


@router.get("/tokenizer_info", response_model=s.TokenizerInfo, responses=MODEL_QUERY)
async def tokenizer_info(
    request: Request, registry: RegistryDep, model: str | None = None
) -> s.TokenizerInfo:
    """The model's special tokens, vocabulary size, context and chat template (vLLM's)."""
    async with use_model(request, registry, model) as loaded:
        return tokenizer.tokenizer_info(loaded)


@router.get("/api/llms")
async def llms(registry: RegistryDep) -> dict[str, Any]:
    """The models clients may ask for, by every name."""
    names = [n for e in registry.entries() for n in e.spec.names]
    return {"llms": names, "default": registry.default_name}


@router.get("/models", response_model=s.ModelList)
async def list_models(registry: RegistryDep) -> s.ModelList:
    """Every model clients may ask for, loaded or not, with its config from GGUF metadata."""
    entries = registry.entries()
    await registry.describe(entries)
    return s.ModelList(
        models=[adapter.model_info(e) for e in entries], default=registry.default_name
    )


@router.get("/models/{name:path}/", include_in_schema=False)
@router.get("/models/{name:path}", response_model=s.ModelInfo)
async def get_model(name: str, request: Request, registry: RegistryDep) -> s.ModelInfo:
    check_model(request, registry, name)
    entry = registry.entry(name)
    await registry.describe([entry])
    return adapter.model_info(entry)


@router.post(
    "/models/{name}/load",
    status_code=202,
    response_model=s.LoadAccepted,
    dependencies=[Depends(require_admin)],
)
async def load_model(name: str, registry: RegistryDep) -> s.LoadAccepted:
    """Start loading in the background and answer at once; concurrent calls share one load."""
    entry = registry.load(name)
    return s.LoadAccepted(name=entry.spec.name, status=entry.status.value)


@router.delete(
    "/models/{name}/unload",
    response_model=s.LoadAccepted,
    dependencies=[Depends(require_admin)],
)
async def unload_model(name: str, registry: RegistryDep) -> s.LoadAccepted:
    entry = registry.entry(name)
    await registry.unload(name)
    return s.LoadAccepted(name=entry.spec.name, status=entry.status.value)
