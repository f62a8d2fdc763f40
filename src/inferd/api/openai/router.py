"""OpenAI routes: parse, hand to the adapter and the engine, frame the answer."""

from __future__ import annotations

from fastapi import Request, Response

from inferd.api.access import acquire_model, check_model
from inferd.api.deps import RegistryDep, SettingsDep
from inferd.api.embeddings import embed
from inferd.api.openai import adapter
from inferd.api.openai import schemas as s
from inferd.api.openapi import SSE
from inferd.api.pipeline.run import prepare
from inferd.api.routing import Dialect, RecordDep, dialect_router
from inferd.api.streaming import sse_response

router = dialect_router(Dialect.OPENAI, prefix="/v1", tags=["openai"])


@router.get("/models", response_model=s.ModelList)
async def list_models(registry: RegistryDep) -> s.ModelList:
    cards = []
    for entry in registry.entries():
        model = entry.model
        cards.append(
            s.ModelCard(
                id=entry.spec.name,
                created=model.created if model else 0,
                aliases=list(entry.spec.aliases),
                context_length=model.engine.info.n_ctx if model else None,
            )
        )
    return s.ModelList(data=cards)


@router.get("/models/{model:path}", response_model=s.ModelCard)
async def get_model(model: str, request: Request, registry: RegistryDep) -> s.ModelCard:
    check_model(request, registry, model)
    loaded = registry.get(model)
    return s.ModelCard(
        id=loaded.name,
        created=loaded.created,
        aliases=list(loaded.spec.aliases),
        context_length=loaded.engine.info.n_ctx,
    )


@router.post("/chat/completions", response_model=s.ChatCompletion, responses=SSE)
async def chat_completions(
    body: s.ChatCompletionRequest, request: Request, record: RecordDep, settings: SettingsDep
) -> s.ChatCompletion | Response:
    run = await prepare(request, adapter.chat_generation(body), record)
    rid = f"chatcmpl-{record.request_id}"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        legacy = adapter.legacy_functions(body)
        chunks = adapter.chat_chunks(rid, run, body.n, include_usage=include_usage, legacy=legacy)
        return sse_response(request, chunks, drain_timeout=settings.drain_timeout, done=True)
    results = await run.collect(request)
    return adapter.chat_completion(rid, run, results, legacy=adapter.legacy_functions(body))


@router.post("/completions", response_model=s.Completion, responses=SSE)
async def completions(
    body: s.CompletionRequest, request: Request, record: RecordDep, settings: SettingsDep
) -> s.Completion | Response:
    run = await prepare(request, adapter.completion_generation(body), record)
    rid = f"cmpl-{record.request_id}"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = adapter.completion_chunks(rid, run, include_usage=include_usage)
        return sse_response(request, chunks, drain_timeout=settings.drain_timeout, done=True)
    return adapter.completion(rid, run, await run.collect(request))


@router.post("/embeddings", response_model=s.EmbeddingList)
async def embeddings(
    body: s.EmbeddingRequest, request: Request, registry: RegistryDep, settings: SettingsDep
) -> s.EmbeddingList:
    """Unit-length embeddings of texts or token-id lists; too long an input is a 400."""
    adapter.check_embeddings(body, settings)
    model = await acquire_model(request, registry, body.model)
    inputs, indexed = adapter.embedding_inputs(body)
    result = await embed(
        model.engine,
        inputs,
        settings,
        param="input",
        indexed=indexed,
        dimensions=body.dimensions,
    )
    return adapter.embedding_list(model.name, result, body.encoding_format)
