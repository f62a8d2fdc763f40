"""Ollama routes: NDJSON streams, final chunks with Ollama's counters and durations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse

from inferd import __version__
from inferd.api.access import acquire_model, require_admin, use_model
from inferd.api.deps import RegistryDep, SettingsDep
from inferd.api.embeddings import embed as embed_inputs
from inferd.api.ollama import adapter
from inferd.api.ollama import schemas as s
from inferd.api.openapi import NDJSON
from inferd.api.pipeline.logprobs import Describer, token_entries
from inferd.api.pipeline.run import ChoiceResult, prepare
from inferd.api.pipeline.tools import ToolOutput
from inferd.api.routing import Dialect, RecordDep, dialect_router
from inferd.api.streaming import ndjson_response
from inferd.engine.types import FinishReason, GenerationOutput
from inferd.errors import InvalidRequest, ModelNotFound
from inferd.models.registry import LoadedModel, ModelRegistry, ModelStatus

log = logging.getLogger(__name__)

router = dialect_router(Dialect.OLLAMA, tags=["ollama"])


@router.get("/", response_class=PlainTextResponse)
@router.head("/", response_class=PlainTextResponse)
async def root(request: Request) -> Response:
    """Ollama tools probe this; a browser (it accepts text/html) is sent to the chat page."""
    vary = {"Vary": "Accept"}
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/ui", status_code=307, headers=vary)
    return PlainTextResponse("Ollama is running", headers=vary)


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": adapter.OLLAMA_API_VERSION, "inferd": __version__}


@router.get("/api/tags", response_model=s.Tags)
async def tags(registry: RegistryDep) -> s.Tags:
    models = []
    entries = registry.entries()
    await registry.describe(entries)
    for entry in entries:
        for name in entry.spec.names:
            full = name if ":" in name else f"{name}:latest"
            models.append(
                s.TagModel(
                    name=full,
                    model=full,
                    modified_at=adapter.modified_at(entry.spec),
                    size=adapter.file_size(entry.spec),
                    digest=adapter.digest(entry.spec),
                    details=adapter.details(entry),
                )
            )
    return s.Tags(models=models)


@router.get("/api/ps", response_model=s.Running)
async def ps(registry: RegistryDep) -> s.Running:
    """The loaded models, and those being converted or loaded (as Ollama lists a model whose
    runner is starting), with inferd's `status` and `progress`."""
    now = datetime.now(UTC)
    out = []
    for entry in registry.entries():
        if entry.status is ModelStatus.READY and entry.model is not None:
            info = entry.model.engine.info
            left = registry.expires_in(entry)
            expires = now + (timedelta(days=36500) if left is None else timedelta(seconds=left))
            out.append(
                adapter.running(
                    entry,
                    size=info.size_bytes or adapter.file_size(entry.spec),
                    expires_at=expires.isoformat().replace("+00:00", "Z"),
                    context_length=info.n_ctx,
                )
            )
        elif entry.status in (ModelStatus.LOADING, ModelStatus.CONVERTING):
            out.append(adapter.running(entry, size=entry.memory_estimate))
    return s.Running(models=out)


@router.post("/api/show", response_model=s.ShowResponse)
async def show(body: s.ShowRequest, request: Request, registry: RegistryDep) -> s.ShowResponse:
    name = body.model or body.name
    if not name:
        raise InvalidRequest("model is required", param="model")
    async with use_model(request, registry, name) as model:
        return adapter.show(model, registry.entry(name), registry.profile(name))


async def _after(registry: ModelRegistry, model: LoadedModel, keep_alive: float | None) -> None:
    """keep_alive 0: unload once the response is done (and nothing else runs on it);
    otherwise it sets when the idle model is unloaded (None: the configured default)."""
    if keep_alive is not None and keep_alive == 0:
        stats = model.engine.stats()
        if stats.running == 0 and stats.waiting == 0:
            await registry.unload(model.name)
    else:
        _keep(registry, model, keep_alive)


def _keep(registry: ModelRegistry, model: LoadedModel, keep_alive: float | None) -> None:
    with contextlib.suppress(ModelNotFound):  # deleted meanwhile
        if registry.entry(model.name).model is model:  # not unloaded or reloaded meanwhile
            registry.set_keep_alive(model.name, keep_alive)


async def _load_only(
    registry: ModelRegistry, model: LoadedModel, keep_alive: float | None, chat: bool
) -> dict[str, Any]:
    stats = model.engine.stats()
    idle = stats.running == 0 and stats.waiting == 0
    # like Ollama, never cut other clients short: a busy model stays loaded
    unloading = keep_alive is not None and keep_alive == 0 and idle
    if unloading:
        await registry.unload(model.name)
    elif keep_alive != 0:
        _keep(registry, model, keep_alive)
    body: dict[str, Any] = {
        "model": model.name,
        "created_at": adapter.now_rfc3339(),
        "done": True,
        "done_reason": "unload" if unloading else "load",
    }
    if chat:
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    return body


async def _run(
    request: Request,
    record: RecordDep,
    body: s.GenerateRequest | s.ChatRequest,
    *,
    chat: bool,
) -> Response:
    """/api/generate and /api/chat: no prompt (or no messages) only loads (or unloads) the
    model; keep_alive sets how long it stays loaded afterwards."""
    registry: ModelRegistry = request.app.state.registry
    if adapter.loads_only(body):
        adapter.check(body)
        keep_alive = adapter.parse_keep_alive(body.keep_alive)
        model = await acquire_model(request, registry, body.model)
        return JSONResponse(await _load_only(registry, model, keep_alive, chat=chat))
    gen = adapter.generation(body, registry.profile(body.model))
    keep_alive = adapter.parse_keep_alive(body.keep_alive)
    run = await prepare(request, gen, record)
    model = run.model
    load_seconds = record.load_seconds

    def piece(text: str, thinking: str = "") -> dict[str, Any]:
        if chat:
            message = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            return {"message": message}
        return {"response": text, "thinking": thinking} if thinking else {"response": text}

    def final(result: ChoiceResult) -> dict[str, Any]:
        last: dict[str, Any] = {
            "model": model.name,
            "created_at": adapter.now_rfc3339(),
            **piece(""),
            "done": True,
            "done_reason": adapter.done_reason(result.finish_reason),
            **adapter.final_stats(
                result.usage, record.started, result.time_to_first_token, load_seconds
            ),
        }
        if not chat:
            last["context"] = [*run.prompts[0], *result.token_ids]
        return last

    scoring = run.sampling.logprobs is not None
    describer = Describer(model.engine)

    if not body.stream:
        results = await run.collect(request)
        out = run.answer(results[0])
        answer = {**final(results[0]), **piece(out.content, results[0].reasoning)}
        if out.calls:
            answer["message"]["tool_calls"] = adapter.tool_calls(out)
        if scoring:
            answer["logprobs"] = token_entries(describer.scored(results[0].logprobs))
        await _after(registry, model, keep_alive)
        return JSONResponse(answer)

    def chunk(text: str, calls: ToolOutput | None = None, thinking: str = "") -> dict[str, Any]:
        body = {"model": model.name, "created_at": adapter.now_rfc3339(), **piece(text, thinking)}
        if calls is not None:
            body["message"]["tool_calls"] = adapter.tool_calls(calls)
        return {**body, "done": False}

    result = ChoiceResult(0)
    # with tools, text that may start a call is held back; the calls come in one chunk
    tools = run.tools.stream() if run.tools is not None else None

    def chunks_of(out: GenerationOutput) -> Iterator[dict[str, Any]]:
        result.token_ids.extend(out.token_ids)
        part = run.split(0, out)
        text = part.content if tools is None else tools.feed(part.content)
        if text or part.reasoning or (scoring and out.logprobs):
            part_chunk = chunk(text, thinking=part.reasoning)
            if scoring:
                part_chunk["logprobs"] = token_entries(describer.scored(out.logprobs))
            yield part_chunk
        if out.finish_reason is not None:
            if tools is not None:
                tail = tools.finish(truncated=out.finish_reason is FinishReason.LENGTH)
                if tail.content or tail.calls:
                    yield chunk(tail.content, tail if tail.calls else None)
            result.finish_reason = out.finish_reason
            result.usage = out.usage
            result.time_to_first_token = out.time_to_first_token
            yield final(result)

    async def chunks() -> AsyncIterator[list[dict[str, Any]]]:
        try:
            async for batch in run.stream():
                yield [c for _, out in batch for c in chunks_of(out)]
        finally:
            await asyncio.shield(_after(registry, model, keep_alive))

    return ndjson_response(request, chunks())


@router.post("/api/generate", responses=NDJSON)
async def generate(body: s.GenerateRequest, request: Request, record: RecordDep) -> Response:
    return await _run(request, record, body, chat=False)


@router.post("/api/chat", responses=NDJSON)
async def chat(body: s.ChatRequest, request: Request, record: RecordDep) -> Response:
    return await _run(request, record, body, chat=True)


@router.post("/api/copy", dependencies=[Depends(require_admin)])
async def copy(body: s.CopyRequest, registry: RegistryDep) -> Response:
    """Give a model another name; it is kept in the models directory and survives restarts."""
    registry.copy(body.source, body.destination)
    return Response(status_code=200)


@router.delete("/api/delete", dependencies=[Depends(require_admin)])
async def delete(body: s.DeleteRequest, registry: RegistryDep) -> Response:
    """Remove a name made by /api/copy, or a model file of the models directory. Bundled
    and configured models answer 403."""
    name = body.model or body.name
    if not name:
        raise InvalidRequest("model is required", param="model")
    await registry.delete(name)
    return Response(status_code=200)


@router.post("/api/embed", response_model=s.EmbedResponse)
async def embed(
    body: s.EmbedRequest, request: Request, registry: RegistryDep, settings: SettingsDep
) -> Any:
    """Embeddings of a text or a list of texts, L2-normalized as Ollama returns them."""
    started = time.perf_counter()
    adapter.check_embed(body)
    keep_alive = adapter.parse_keep_alive(body.keep_alive)
    async with use_model(request, registry, body.model) as model:
        load_seconds = time.perf_counter() - started
        inputs = adapter.embed_inputs(body)
        result = None
        if inputs:
            result = await embed_inputs(
                model.engine,
                inputs,
                settings,
                param="input",
                indexed=isinstance(body.input, list),
                n_ctx=adapter.embed_context(body.options, model.engine.info),
                truncate=body.truncate,
                dimensions=body.dimensions,
            )
    await _after(registry, model, keep_alive)
    return adapter.embed_response(model.name, result, started, load_seconds)


@router.post("/api/embeddings", response_model=s.EmbeddingsResponse)
async def embeddings(
    body: s.EmbeddingsRequest, request: Request, registry: RegistryDep, settings: SettingsDep
) -> Any:
    """The legacy route: one prompt, its embedding not normalized (as in Ollama)."""
    adapter.check_embed(body)
    keep_alive = adapter.parse_keep_alive(body.keep_alive)
    vector: list[float] = []
    async with use_model(request, registry, body.model) as model:
        if body.prompt:
            result = await embed_inputs(
                model.engine,
                [body.prompt],
                settings,
                param="prompt",
                n_ctx=adapter.embed_context(body.options, model.engine.info),
                truncate=True,
                normalize=False,
            )
            vector = result.vectors[0]
    await _after(registry, model, keep_alive)
    return s.EmbeddingsResponse(embedding=vector)
