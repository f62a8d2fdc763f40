"""The asyncio side of the engine: submit requests, stream their outputs, abort them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Protocol

from inferd.engine.backends.base import Backend, ModelInfo
from inferd.engine.core import DEFAULT_PREFIX_CACHE_BYTES, EngineCore
from inferd.engine.progress import RequestProgress
from inferd.engine.speculative import Drafter
from inferd.engine.types import (
    EngineStats,
    GenerateRequest,
    GenerationOutput,
    SamplingParams,
)
from inferd.errors import EngineStopped

# Tokenizing longer texts than this moves off the event loop.
_INLINE_TOKENIZE_CHARS = 8192

log = logging.getLogger(__name__)

# Called with (model name, the final output, seconds from submit to finish) when a request
# finishes in the engine, in the task that consumed it. A request its consumer left early gets
# a final ABORT output with the usage so far.
FinishHook = Callable[[str, GenerationOutput, float], None]

# A consumer's own view of the same ends (`generate_many`'s `on_end`): each request's final
# output, or the ABORT one of a request left early, and the seconds since it was submitted.
EndHook = Callable[[GenerationOutput, float], None]


class EngineClient(Protocol):
    """What the API layer and the registry see of an engine: the only face they use. A
    whole engine with its own scheduler, KV manager and sampler enters here."""

    @property
    def info(self) -> ModelInfo: ...

    def facts(self) -> dict[str, Any]:
        """What the runtime knows beyond `info`, as plain data to show (for llama.cpp its KV
        layout and the GGUF metadata under "metadata")."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationOutput, None]: ...

    def generate_many(
        self, requests: Sequence[GenerateRequest], *, on_end: EndHook | None = None
    ) -> AsyncGenerator[list[GenerationOutput], None]:
        """The outputs of several requests (one HTTP request's choices) as they arrive: all
        that arrived by the time the consumer runs, in one list (each request's outputs in
        order), so a consumer wakes once per engine step, however many requests and tokens
        that step brought. Leaving early aborts the requests not finished.

        `on_end` is called once per request as it ends: with its final output, before the
        batch holding it is yielded, or, for a request left early, with an ABORT output
        holding its usage so far, as the iteration closes. The engine client tracks each
        request's progress for this; its consumers track none. A stopped engine raises
        EngineStopped on the first iteration, before any request is submitted (no end)."""
        ...

    def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    async def stop(self) -> None:
        """Abort what is left and release the model (the engine is not used again)."""
        ...

    async def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]: ...

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        """The text of the ids as answers write it (control tokens: none), or with control
        tokens written out as their text (`special`)."""
        ...

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The bytes a token contributes to the text (a control token: none, or its text
        with `special`)."""
        ...

    async def check_sampling(self, params: SamplingParams) -> None:
        """InvalidRequest when the backend cannot sample with `params` (a JSON schema it
        cannot compile into a grammar)."""
        ...

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """Pooled, unnormalized embeddings of token-id inputs (validated by the caller)."""
        ...


class AsyncEngine:
    """Bridges asyncio to an `EngineCore` thread.

    `generate` yields outputs as the core emits them; leaving the iteration early (client
    gone, task cancelled) aborts the request so its sequence and KV cells are freed at the
    next step boundary.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        name: str = "model",
        on_finish: FinishHook | None = None,
        prefix_cache: bool = True,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
        drafter: Drafter | None = None,
    ) -> None:
        self._backend = backend
        self._on_finish: EndHook | None = (
            None if on_finish is None else functools.partial(on_finish, name)
        )
        self._core = EngineCore(
            backend,
            self._on_outputs,
            name=name,
            prefix_cache=prefix_cache,
            prefix_cache_bytes=prefix_cache_bytes,
            drafter=drafter,
        )
        self._inboxes: dict[str, _Inbox] = {}  # by request id; one per generate_many
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self.submitted = 0  # requests handed to the core so far (also in stats())

    @property
    def info(self) -> ModelInfo:
        return self._backend.info

    def facts(self) -> dict[str, Any]:
        return self._backend.facts()

    @property
    def backend(self) -> Backend:
        """The backend this engine steps: for tests; nothing outside the engine uses it."""
        return self._backend

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._core.start()

    async def stop(self) -> None:
        """Abort what is left, end the core thread and release the model."""
        self._stopped = True
        await asyncio.to_thread(self._core.stop)
        # off the loop: closing waits for an embeddings batch still running on the model
        await asyncio.to_thread(self._backend.close)

    def stats(self) -> EngineStats:
        return self._core.stats()

    async def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        if len(text) <= _INLINE_TOKENIZE_CHARS:
            return self._backend.tokenize(
                text, add_special=add_special, parse_special=parse_special
            )
        return await asyncio.to_thread(
            self._backend.tokenize, text, add_special=add_special, parse_special=parse_special
        )

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        return b"".join(self.token_bytes(t, special=special) for t in tokens).decode(
            "utf-8", "replace"
        )

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        return self._backend.token_text(token) if special else self._backend.token_piece(token)

    async def check_sampling(self, params: SamplingParams) -> None:
        if params.constrained:  # compiling a schema is Python work: off the event loop
            await asyncio.to_thread(self._backend.check_sampling, params)

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """Embeddings run beside the core loop, not in it: the backend computes them on a
        second context of the same weights (llama.cpp contexts are independent; one
        context must never be used from two threads at once, and the backend serializes
        its embeddings context). So a long embeddings batch never stalls token streams."""
        if self._stopped or self._loop is None:
            raise EngineStopped("the engine is not running")
        return await asyncio.to_thread(self._backend.embed, inputs)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerationOutput, None]:
        async with contextlib.aclosing(self.generate_many([request])) as batches:
            async for batch in batches:
                for out in batch:
                    yield out

    async def generate_many(
        self, requests: Sequence[GenerateRequest], *, on_end: EndHook | None = None
    ) -> AsyncGenerator[list[GenerationOutput], None]:
        if self._stopped or self._loop is None:
            raise EngineStopped("the engine is not running")
        inbox = _Inbox(self._loop)
        started = time.monotonic()
        runs = {r.request_id: RequestProgress(r, started) for r in requests}
        for rid in runs:
            self._inboxes[rid] = inbox
        self.submitted += len(requests)
        unfinished = len(runs)
        try:
            for r in requests:
                self._core.submit(r)
            while unfinished:
                batch = await inbox.take()
                for out in batch:
                    runs[out.request_id].seen(out)
                    if out.finish_reason is not None:
                        unfinished -= 1
                        self._ended(out, started, on_end)
                yield batch
        finally:
            for rid, run in runs.items():
                self._inboxes.pop(rid, None)
                if not run.ended:
                    self._core.abort(rid)
                    self._ended(run.abandoned(), started, on_end)

    def _ended(self, out: GenerationOutput, started: float, on_end: EndHook | None) -> None:
        """A request's end, to the engine's finish hook and the consumer's `on_end`."""
        seconds = time.monotonic() - started
        for hook in (self._on_finish, on_end):
            if hook is not None:
                try:
                    hook(out, seconds)
                except Exception:  # accounting must never break a generation nor leak one
                    log.exception("a generation's end hook failed")

    def abort(self, request_id: str) -> None:
        self._core.abort(request_id)

    def drop_prefix_cache(self) -> None:
        """Free every cached prefix at the next step boundary."""
        self._core.drop_prefix_cache()

    # ---- called from the core thread -------------------------------------------------------

    def _on_outputs(self, outputs: list[GenerationOutput]) -> None:
        loop = self._loop
        if loop is None:
            return
        # a closed event loop raises RuntimeError: nobody is listening any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list[GenerationOutput]) -> None:
        for out in outputs:
            inbox = self._inboxes.get(out.request_id)
            if inbox is not None:
                inbox.put(out)


class _Inbox:
    """Where the core's outputs wait for one consumer: a list, and the consumer's waiter,
    woken by the first output put while it waits (the rest ride along)."""

    __slots__ = ("_loop", "_outputs", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._outputs: list[GenerationOutput] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, out: GenerationOutput) -> None:
        self._outputs.append(out)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[GenerationOutput]:
        """Everything put since the last take, waiting for the first of it."""
        while not self._outputs:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        taken, self._outputs = self._outputs, []
        return taken
