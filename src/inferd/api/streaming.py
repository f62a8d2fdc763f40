"""Wire framing for streams (SSE, NDJSON) and disconnect handling for plain responses.

A stream that fails after it started ends with the error table's `error_event`, in the
dialect of the request's route. A stream's events come in batches (what the engine
delivered at once), and each batch goes out in one write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Message, Send

from inferd.api.errors import ClientDisconnected, error_event
from inferd.api.routing import Dialect, dialect_of
from inferd.errors import InferdError

T = TypeVar("T")

DONE = b"data: [DONE]\r\n\r\n"  # the OpenAI stream's last event

# Compact JSON with non-ASCII escaped (an echoed prompt may hold lone surrogates, which
# UTF-8 cannot encode); one encoder for all (`json.dumps` with `separators` builds one a call).
encode_json: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":")).encode

# An event of a stream: a JSON object, as a dict or already encoded (a filled `EventTemplate`).
Event = dict[str, Any] | str

# What a stream writes: lists of events, each list in one write (what one engine step, or
# several when the loop lagged, brought to the connection; never held back for more).
Batches = AsyncIterator[Sequence[Event]]

_HOLE = "\x00hole\x00"


class EventTemplate:
    """An event of a fixed shape but for one string (a token's text), encoded once with
    `EventTemplate.HOLE` in that string's place and filled per event: the same text as
    encoding the filled event whole, for the cost of encoding the string alone."""

    HOLE = _HOLE
    __slots__ = ("_head", "_tail")

    def __init__(self, event: dict[str, Any]) -> None:
        self._head, self._tail = encode_json(event).split(encode_json(_HOLE))

    def fill(self, value: str) -> str:
        return f"{self._head}{encode_json(value)}{self._tail}"


class _EventStream(EventSourceResponse):
    """sse-starlette's response without its cancel scope around each write when no send
    timeout is set (inferd sets none). `anyio.move_on_after(None)` still finds the async
    library (sniffio, twice) and enters and leaves a CancelScope for every write: 17 % of the
    event loop's busy time at one stream on the fake backend (py-spy), more than the JSON.
    What the scope's exit handled stays: a write that fails marks the response interrupted,
    so sse-starlette attempts no closing write."""

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is not None:
            await super()._send_with_timeout(send, message)
            return
        try:
            await send(message)
        except BaseException:
            self._send_interrupted = True
            raise


async def _framed(
    request: Request, batches: Batches, prefix: str, suffix: str, tail: bytes = b""
) -> AsyncIterator[bytes]:
    """Each batch's events as `prefix + JSON + suffix` in one write; a failure after the
    stream started as the dialect's `error_event`; then `tail`."""
    dialect = dialect_of(request.scope) or Dialect.OPENAI
    encode = encode_json
    try:
        async for batch in batches:
            if batch:
                yield "".join(
                    [f"{prefix}{e if e.__class__ is str else encode(e)}{suffix}" for e in batch]
                ).encode()
    except InferdError as exc:
        yield f"{prefix}{encode(error_event(dialect, exc))}{suffix}".encode()
    if tail:
        yield tail


def sse_response(
    request: Request,
    batches: Batches,
    *,
    drain_timeout: float,
    done: bool = False,
) -> EventSourceResponse:
    """Server-sent events: each event one `data:` line of compact JSON, a batch's events in
    one write; then `[DONE]` when `done` (after an error event too). A stream that fails
    after it started ends with the error table's `error_event` in the route's dialect.

    When the client disconnects, sse-starlette cancels the iteration, whose cleanup aborts
    the engine sequences behind it. On server shutdown the stream may run on for
    `drain_timeout` seconds to finish its answer before it is cancelled.
    """
    frames = _framed(request, batches, "data: ", "\r\n\r\n", DONE if done else b"")
    return _EventStream(
        frames,
        ping=15,
        headers={"Cache-Control": "no-cache"},
        shutdown_grace_period=drain_timeout,
    )


def ndjson_response(request: Request, batches: Batches) -> StreamingResponse:
    """Newline-delimited JSON, one object a line, a batch's lines in one write; a stream
    that fails after it started ends with the dialect's `error_event`."""
    return StreamingResponse(_framed(request, batches, "", "\n"), media_type="application/x-ndjson")


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work` unless the client disconnects first; then cancel it (aborting its
    sequences) and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientDisconnected()
