"""Native routes: plain JSON answers with timing statistics, SSE streams, model management."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from inferd.api.access import acquire_model, admit, check_model, require_admin
from inferd.api.deps import OptionalStoreDep, RegistryDep, SettingsDep
from inferd.api.generation import (
    ChoiceResult,
    collect_choices,
    render_chat,
    stream_choices,
    tokenize_prompt,
)
from inferd.api.native import adapter
from inferd.api.native import schemas as s
from inferd.api.sessions import Exchange, open_exchange, session_of
from inferd.api.streaming import ClientDisconnected, cancel_on_disconnect, sse_response
from inferd.config import Settings
from inferd.engine.types import FinishReason, GenerateRequest
from inferd.models.registry import LoadedModel, ModelRegistry
from inferd.storage.store import Store

router = APIRouter(tags=["native"])

_CLIENT_CLOSED = 499


async def _prepare(
    request: Request,
    registry: ModelRegistry,
    settings: Settings,
    store: Store | None,
    body: s.GenerateBody | s.ChatBody,
) -> tuple[LoadedModel, list[int], str | None, Exchange | None]:
    exchange = None
    if isinstance(body, s.ChatBody):
        session = session_of(body.session_id, request)
        messages, exchange = await open_exchange(
            store,
            settings,
            session,
            body.session_history,
            [m.model_dump() for m in body.messages],
        )
    model = await acquire_model(request, registry, body.model)
    if isinstance(body, s.GenerateBody):
        text, prompt = body.prompt, body.prompt
    else:
        text = await render_chat(model.template, messages)
        prompt = None
    return model, await tokenize_prompt(model.engine, text), prompt, exchange


async def _answer(
    request: Request,
    registry: ModelRegistry,
    settings: Settings,
    store: Store | None,
    body: s.GenerateBody | s.ChatBody,
) -> s.GenerationResult | Response:
    started = time.perf_counter()
    model, tokens, prompt, exchange = await _prepare(request, registry, settings, store, body)
    sp = adapter.sampling(body, len(tokens), model.engine.info, settings)
    req = GenerateRequest(f"native-{uuid.uuid4().hex}", tuple(tokens), sp)
    await admit(request, [req])
    try:
        results = await cancel_on_disconnect(request, collect_choices(model.engine, [req]))
    except ClientDisconnected:
        return Response(status_code=_CLIENT_CLOSED)
    if exchange is not None:
        exchange.remember_results(results, model.name)
    elapsed = time.perf_counter() - started
    return adapter.result(results[0], model=model.name, prompt=prompt, sp=sp, elapsed=elapsed)


async def _stream(
    request: Request,
    registry: ModelRegistry,
    settings: Settings,
    store: Store | None,
    body: s.GenerateBody | s.ChatBody,
) -> Response:
    started = time.perf_counter()
    model, tokens, prompt, exchange = await _prepare(request, registry, settings, store, body)
    sp = adapter.sampling(body, len(tokens), model.engine.info, settings)
    req = GenerateRequest(f"native-{uuid.uuid4().hex}", tuple(tokens), sp)
    await admit(request, [req])

    async def events() -> AsyncIterator[dict[str, Any]]:
        r = ChoiceResult(0)
        outputs = stream_choices(model.engine, [req])
        if exchange is not None:
            outputs = exchange.remembering(outputs, model.name)
        async for _, out in outputs:
            if out.finish_reason is FinishReason.ERROR:
                yield {
                    "error": {
                        "message": out.error or "generation failed",
                        "type": "server_error",
                        "param": None,
                        "code": "backend_error",
                    }
                }
                return
            r.text += out.text
            r.token_ids.extend(out.token_ids)
            if out.text:
                yield {"text": out.text, "done": False}
            if out.finish_reason is not None:
                r.finish_reason = out.finish_reason
                r.usage = out.usage
                r.time_to_first_token = out.time_to_first_token
                elapsed = time.perf_counter() - started
                final = adapter.result(r, model=model.name, prompt=prompt, sp=sp, elapsed=elapsed)
                yield {**final.model_dump(), "done": True}

    return sse_response(events(), drain_timeout=settings.drain_timeout)


@router.post("/generate", response_model=s.GenerationResult)
async def generate(
    body: s.GenerateBody, request: Request, registry: RegistryDep, settings: SettingsDep
) -> s.GenerationResult | Response:
    """Complete a prompt; the answer carries `text` (and `generated_text`) with statistics."""
    return await _answer(request, registry, settings, None, body)


@router.post("/chat", response_model=s.GenerationResult)
async def chat(
    body: s.ChatBody,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    store: OptionalStoreDep,
) -> s.GenerationResult | Response:
    """Answer a conversation rendered with the model's chat template; `session_id` stores
    the exchange, `session_history: true` prepends the stored conversation."""
    return await _answer(request, registry, settings, store, body)


@router.post("/generate/stream")
@router.post("/api/generate/stream")
async def generate_stream(
    body: s.GenerateBody, request: Request, registry: RegistryDep, settings: SettingsDep
) -> Response:
    """SSE: `{"text", "done": false}` per delta, then the statistics with `"done": true`."""
    return await _stream(request, registry, settings, None, body)


@router.post("/chat/stream")
@router.post("/api/chat/stream")
async def chat_stream(
    body: s.ChatBody,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    store: OptionalStoreDep,
) -> Response:
    """SSE, as /generate/stream, for a conversation (sessions as /chat)."""
    return await _stream(request, registry, settings, store, body)


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
