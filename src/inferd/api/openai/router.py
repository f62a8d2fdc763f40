"""OpenAI routes: parse, hand to the adapter and the engine, frame the answer."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from inferd.api.access import acquire_model, admit, check_model
from inferd.api.deps import OptionalStoreDep, RegistryDep, SettingsDep
from inferd.api.embeddings import embed
from inferd.api.generation import (
    check_insert,
    collect_choices,
    infill_tokens,
    render_chat,
    stream_choices,
    tokenize_prompt,
)
from inferd.api.openai import adapter
from inferd.api.openai import schemas as s
from inferd.api.sessions import open_exchange, session_of
from inferd.api.streaming import ClientDisconnected, cancel_on_disconnect, sse_response
from inferd.api.structured import check_format
from inferd.engine.types import GenerateRequest

router = APIRouter(prefix="/v1", tags=["openai"])

_CLIENT_CLOSED = 499


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


@router.post("/chat/completions", response_model=s.ChatCompletion)
async def chat_completions(
    body: s.ChatCompletionRequest,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    store: OptionalStoreDep,
) -> s.ChatCompletion | Response:
    adapter.check_chat(body, settings)
    session = session_of(body.session_id, request)
    messages, exchange = await open_exchange(
        store, settings, session, body.session_history, adapter.chat_messages(body)
    )
    model = await acquire_model(request, registry, body.model)
    engine = model.engine
    prompt = await render_chat(model.template, messages)
    tokens = await tokenize_prompt(engine, prompt)
    rid = adapter.new_id("chatcmpl")
    max_tokens, param = (
        (body.max_completion_tokens, "max_completion_tokens")
        if body.max_completion_tokens is not None
        else (body.max_tokens, "max_tokens")
    )
    reqs = adapter.generate_requests(
        body,
        rid,
        tokens,
        info=engine.info,
        settings=settings,
        max_tokens=max_tokens,
        max_tokens_param=param,
        prompt_param="messages",
        output=adapter.output_format(body),
    )
    await check_format(engine, reqs[0].sampling, param=adapter.RESPONSE_FORMAT_SCHEMA)
    await admit(request, reqs)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        outputs = stream_choices(engine, reqs)
        if exchange is not None:
            outputs = exchange.remembering(outputs, model.name)
        return sse_response(
            adapter.chat_chunks(rid, model.name, body.n, outputs, include_usage=include_usage),
            drain_timeout=settings.drain_timeout,
        )
    try:
        results = await cancel_on_disconnect(request, collect_choices(engine, reqs))
    except ClientDisconnected:
        return Response(status_code=_CLIENT_CLOSED)
    if exchange is not None:
        exchange.remember_results(results, model.name)
    return adapter.chat_completion(rid, model.name, results)


@router.post("/completions", response_model=s.Completion)
async def completions(
    body: s.CompletionRequest, request: Request, registry: RegistryDep, settings: SettingsDep
) -> s.Completion | Response:
    adapter.check_completion(body, settings)
    model = await acquire_model(request, registry, body.model)
    engine = model.engine
    rid = adapter.new_id("cmpl")
    if body.suffix:
        check_insert(engine.info, model.name)
    reqs: list[GenerateRequest] = []
    for p, prompt in enumerate(adapter.prompts(body)):
        if not isinstance(prompt, str):
            adapter.check_token_prompt(prompt, engine.info.n_vocab)
        if body.suffix:  # fill in the middle: the prompt is the prefix
            tokens = await infill_tokens(engine, prompt, body.suffix, model_name=model.name)
        elif isinstance(prompt, str):
            tokens = await tokenize_prompt(engine, prompt)
        else:
            tokens = prompt
        reqs += adapter.generate_requests(
            body,
            f"{rid}-{p}",
            tokens,
            info=engine.info,
            settings=settings,
            max_tokens=body.max_tokens,
            max_tokens_param="max_tokens",
            prompt_param="prompt",
        )
    await admit(request, reqs)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(
            adapter.completion_chunks(
                rid, model.name, body.n, stream_choices(engine, reqs), include_usage=include_usage
            ),
            drain_timeout=settings.drain_timeout,
        )
    try:
        results = await cancel_on_disconnect(request, collect_choices(engine, reqs))
    except ClientDisconnected:
        return Response(status_code=_CLIENT_CLOSED)
    return adapter.completion(rid, model.name, results, body.n)


@router.post("/embeddings", response_model=s.EmbeddingList)
async def embeddings(
    body: s.EmbeddingRequest, request: Request, registry: RegistryDep, settings: SettingsDep
) -> s.EmbeddingList:
    """Unit-length embeddings of texts or token-id lists; too long an input is a 400."""
    adapter.check_embeddings(body, settings)
    model = await acquire_model(request, registry, body.model)
    inputs, indexed = adapter.embedding_inputs(body)
    result = await embed(model.engine, inputs, settings, param="input", indexed=indexed)
    return adapter.embedding_list(model.name, result, body.encoding_format)
