"""OpenAI routes: parse, hand to the adapter and the engine, frame the answer."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse

from inferd.api.access import check_model, use_model
from inferd.api.deps import RegistryDep, SettingsDep, StoreDep
from inferd.api.embeddings import embed
from inferd.api.openai import adapter, responses
from inferd.api.openai import schemas as s
from inferd.api.openapi import SSE
from inferd.api.pipeline.run import ChoiceResult, prepare
from inferd.api.routing import Dialect, RecordDep, dialect_router
from inferd.api.streaming import sse_response

router = dialect_router(Dialect.OPENAI, prefix="/v1", tags=["openai"])


@router.get("/models", response_model=s.ModelList)
async def list_models(registry: RegistryDep) -> s.ModelList:
    cards = []
    for entry in registry.entries():
        model, p = entry.model, entry.progress
        cards.append(
            s.ModelCard(
                id=entry.spec.name,
                created=model.created if model else 0,
                aliases=list(entry.spec.aliases),
                context_length=model.engine.info.n_ctx if model else None,
                status=entry.status.value,
                progress=None if p is None else s.LoadStep(phase=p.phase, fraction=p.fraction),
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
        chunks = adapter.completion_chunks(rid, run, body, include_usage=include_usage)
        return sse_response(request, chunks, drain_timeout=settings.drain_timeout, done=True)
    return adapter.completion(rid, run, await run.collect(request), body)


@router.post("/embeddings", response_model=s.EmbeddingList)
async def embeddings(
    body: s.EmbeddingRequest, request: Request, registry: RegistryDep, settings: SettingsDep
) -> s.EmbeddingList:
    """Unit-length embeddings of texts or token-id lists; too long an input is a 400."""
    adapter.check_embeddings(body, settings)
    inputs, indexed = adapter.embedding_inputs(body)
    async with use_model(request, registry, body.model) as model:
        result = await embed(
            model.engine,
            inputs,
            settings,
            param="input",
            indexed=indexed,
            dimensions=body.dimensions,
        )
    return adapter.embedding_list(model.name, result, body.encoding_format)


@router.post("/responses", responses=SSE)
async def create_response(
    body: responses.ResponsesRequest,
    request: Request,
    record: RecordDep,
    settings: SettingsDep,
) -> Response:
    """The Responses API: one answer to instructions, the history of
    `previous_response_id` and the input; stored under its id when `store` (the default) and
    the server keeps a store."""
    store = request.app.state.store if body.store or body.previous_response_id else None
    earlier: list[Any] = []
    if body.previous_response_id is not None:
        earlier = await responses.earlier_messages(store, request, body.previous_response_id)
    run = await prepare(request, responses.generation(body, earlier), record)
    rid = responses.response_id(record.request_id)
    inputs = responses.stored_inputs(body, earlier)
    kept = store if body.store else None
    if body.stream:
        result = ChoiceResult(0)

        async def events() -> Any:
            last: dict[str, Any] = {}
            async for batch in responses.events(rid, run, body, result):
                last = batch[-1] if batch else last
                yield batch
            # the last event (response.completed or .incomplete) carries the whole response
            responses.keep(kept, request, record, inputs, result, last.get("response", {}))

        return sse_response(request, events(), drain_timeout=settings.drain_timeout)
    result = (await run.collect(request))[0]
    sent = responses.response(rid, run, body, result)
    responses.keep(kept, request, record, inputs, result, sent)
    return JSONResponse(sent)


@router.get("/responses/{response_id}")
async def get_response(response_id: str, request: Request, store: StoreDep) -> dict[str, Any]:
    """A stored response, as it was sent (output items, usage, status)."""
    session = responses.stored_id(response_id)
    records = await store.conversation(responses.session_of(session, request) or session)
    found = responses.stored_response(response_id, records)
    if found is None:
        raise HTTPException(404, f"Response with id '{response_id}' not found.")
    return found
