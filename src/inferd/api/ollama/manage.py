"""Ollama's model-management routes: /api/pull, /api/blobs/:digest, /api/create, /api/push.

The work is the models directory's (`models.workshop`); these routes stream its progress as
Ollama's NDJSON status lines (`stream: false`: one answer at the end). A request that fails
before its first status (a bad name, an unknown source) answers with the error's own status;
one that fails later ends its stream with `{"error": ...}`, as Ollama's do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Depends, Request, Response
from fastapi.responses import JSONResponse

from inferd.api.access import require_admin
from inferd.api.ollama import schemas as s
from inferd.api.routing import Dialect, dialect_router
from inferd.api.streaming import ndjson_response
from inferd.errors import InvalidRequest, UnsupportedParameter
from inferd.models.profile import Modelfile, ModelProfile, check_messages, license_text
from inferd.models.workshop import CreateSpec, Report, Workshop

router = dialect_router(Dialect.OLLAMA, tags=["ollama"], dependencies=[Depends(require_admin)])

_UPLOAD_CHUNK = 1 << 20
_NOT_IMPLEMENTED = 501


def _workshop(request: Request) -> Workshop:
    workshop: Workshop | None = getattr(request.app.state, "workshop", None)
    if workshop is None:
        raise InvalidRequest("this server cannot pull or create models (no models directory)")
    return workshop


async def _progress(
    request: Request, work: Callable[[Report], Awaitable[object]], *, stream: bool
) -> Response:
    """Run `work`, streaming its status objects (or answering once it is done)."""
    if not stream:
        await work(lambda _status: None)
        return JSONResponse({"status": "success"})
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def report(status: dict[str, Any]) -> None:  # from the loop or a worker thread
        loop.call_soon_threadsafe(queue.put_nowait, status)

    task = asyncio.ensure_future(work(report))
    first = asyncio.ensure_future(queue.get())
    await asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED)
    if not first.done():  # done (or failed) before its first status: a plain answer
        first.cancel()
        task.result()  # raises the error, in the dialect's shape and status
        return JSONResponse({"status": "success"})

    async def lines() -> AsyncIterator[list[dict[str, Any]]]:
        yield [first.result()]
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield [getter.result()]
                continue
            getter.cancel()
            rest = []
            while not queue.empty():
                rest.append(queue.get_nowait())
            yield rest
            task.result()  # an InferdError ends the stream with {"error": ...}
            return

    return ndjson_response(request, lines())


@router.post("/api/pull")
async def pull(body: s.PullRequest, request: Request) -> Response:
    """A GGUF by path or http(s) URL, `org/repo:file.gguf` or a checkpoint (`org/repo`, a
    folder) from the local Hugging Face cache, converted; registry names are refused."""
    source = body.model or body.name
    if not source:
        raise InvalidRequest("model is required", param="model")
    workshop = _workshop(request)

    async def work(report: Report) -> None:
        await workshop.pull(source, report)

    return await _progress(request, work, stream=body.stream)


@router.post("/api/push", responses={_NOT_IMPLEMENTED: {"description": "inferd never pushes"}})
async def push(body: s.PullRequest, request: Request) -> Response:
    message = (
        "inferd does not push models to a registry; copy the GGUF file from the models "
        "directory instead (`inferd models show NAME` names it)"
    )
    return JSONResponse({"error": message}, status_code=_NOT_IMPLEMENTED)


@router.head("/api/blobs/{digest}")
async def has_blob(digest: str, request: Request) -> Response:
    path = _workshop(request).store.blob_path(digest)
    found = await asyncio.to_thread(path.is_file)
    return Response(status_code=200 if found else 404)


@router.post("/api/blobs/{digest}", status_code=201)
async def upload_blob(digest: str, request: Request) -> Response:
    """Keep the body as the blob `digest` (sha256:<hex>) when it hashes to that."""
    store = _workshop(request).store
    with store.blob_writer(digest) as writer:
        buffer = bytearray()
        async for chunk in request.stream():
            buffer += chunk
            if len(buffer) >= _UPLOAD_CHUNK:
                await asyncio.to_thread(writer.write, bytes(buffer))
                buffer.clear()
        await asyncio.to_thread(writer.write, bytes(buffer))
    return Response(status_code=201)


def create_spec(body: s.CreateRequest) -> CreateSpec:
    """The request with its Modelfile (if any) merged in; the request's fields win."""
    name = body.model or body.name
    if not name:
        raise InvalidRequest("model is required", param="model")
    if body.adapters:
        raise UnsupportedParameter("LoRA adapters are not supported", param="adapters")
    mf = Modelfile.parse(body.modelfile) if body.modelfile else Modelfile()
    parameters = {**mf.parameters, **(body.parameters or {})}
    try:
        s.Options.model_validate(parameters)
    except ValueError as exc:
        raise InvalidRequest(f"invalid parameters: {exc}", param="parameters") from None
    messages = check_messages(body.messages or mf.messages, "messages")
    profile = ModelProfile(
        template=body.template if body.template is not None else mf.template,
        system=body.system if body.system is not None else mf.system,
        parameters=parameters,
        messages=messages,
        license=license_text(body.license) or "\n\n".join(mf.license),
    )
    return CreateSpec(
        name=name,
        from_=body.from_ or mf.from_,
        files=body.files or {},
        quantize=body.quantize,
        profile=profile,
    )


@router.post("/api/create")
async def create(body: s.CreateRequest, request: Request) -> Response:
    """A model from a served one or uploaded GGUF blobs (or checkpoint files), with a
    template, system prompt, parameters, messages, license, and optionally quantized; kept in
    the models directory across restarts."""
    spec = create_spec(body)
    workshop = _workshop(request)

    async def work(report: Report) -> None:
        if body.modelfile:
            report({"status": "parsing modelfile"})
        await workshop.create(spec, report)

    return await _progress(request, work, stream=body.stream)
