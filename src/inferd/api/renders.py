"""Prompt templates rendered off the event loop, a bounded number at once.

A request's own template (and a long conversation under the model's chat template) may take
up to the sandbox's deadline to render. Each render runs on a worker thread, so the event
loop keeps answering, but the worker threads are shared with tokenizing, grammars,
embeddings and model loads, and every rendering thread competes for the interpreter: so at
most `max_concurrent_renders` render at once (one per app: `app.state.renders`). A render
that cannot start within `render_wait_timeout` seconds is refused with Overloaded (503 and
Retry-After, in the route's dialect).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from inferd.errors import Overloaded

A = TypeVar("A")
T = TypeVar("T")


class RenderSlots:
    def __init__(self, max_concurrent: int, wait_timeout: float) -> None:
        self.max_concurrent = max_concurrent
        self.wait_timeout = wait_timeout
        self._slots = asyncio.Semaphore(max_concurrent)
        self.running = 0

    async def run(self, render: Callable[[A], T], arg: A) -> T:
        """`render(arg)` on a worker thread once a slot is free."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait_timeout)
        except TimeoutError:
            raise Overloaded(
                f"{self.max_concurrent} prompt templates are rendering and this one waited "
                f"{self.wait_timeout:g} s for its turn; retry shortly"
            ) from None
        self.running += 1
        # the slot is held until the thread ends, even when the request is cancelled first
        work = asyncio.ensure_future(asyncio.to_thread(render, arg))
        work.add_done_callback(self._release)
        return await asyncio.shield(work)

    def _release(self, work: asyncio.Future[Any]) -> None:
        self.running -= 1
        self._slots.release()
        if not work.cancelled():
            work.exception()  # retrieved: a render nobody waits for any more may have failed
