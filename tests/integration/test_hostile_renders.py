"""Slow request templates render a bounded number at a time, off the event loop (issue 23
item 2): a burst of them never stalls /health/live or a plain request, and the excess gets a
503 with Retry-After in the route's dialect once it has waited `render_wait_timeout`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from inferd.config import Settings
from inferd.models.jinja_sandbox import MAX_RENDER_SECONDS
from tests.conftest import AppHandle, FakeFactory

# A Jinja template that loops until the sandbox's 2 s deadline stops it (a 400 naming it).
SLOW = (
    "{% for i in range(99000) %}{% set x = (i ~ i) | replace('1', '22') %}{% endfor %}"
    "{{ messages[0].content }}"
)
BURST = 6


def body(**fields: Any) -> dict[str, Any]:
    options = {"num_predict": 2}
    return {"model": "fake", "prompt": "hi", "stream": False, "options": options} | fields


async def rendering(app: AppHandle, count: int) -> None:
    """Wait until `count` renders are running."""
    for _ in range(500):
        if app.app.state.renders.running == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{app.app.state.renders.running} renders running, not {count}")


async def test_a_burst_of_slow_templates_is_bounded(fake_app: FakeFactory) -> None:
    settings = Settings(max_concurrent_renders=2, render_wait_timeout=0.5)
    async with fake_app(settings) as app:
        slowest_live = 0.0
        most_rendering = 0
        plain: list[httpx.Response] = []

        async def watch(done: asyncio.Event) -> None:
            nonlocal slowest_live, most_rendering
            while not done.is_set():
                most_rendering = max(most_rendering, app.app.state.renders.running)
                started = time.monotonic()
                resp = await app.client.get("/health/live")
                slowest_live = max(slowest_live, time.monotonic() - started)
                assert resp.status_code == 200
                if len(plain) < 3:  # a request without a template is not held up
                    started = time.monotonic()
                    plain.append(await app.client.post("/api/generate", json=body()))
                    assert time.monotonic() - started < 1.0
                await asyncio.sleep(0.02)

        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        try:
            slow = await asyncio.gather(
                *(app.client.post("/api/generate", json=body(template=SLOW)) for _ in range(BURST))
            )
        finally:
            done.set()
            await watcher

        statuses = sorted(r.status_code for r in slow)
        assert statuses == [400] * 2 + [503] * (BURST - 2), [r.text for r in slow]
        for r in slow:
            assert set(r.json()) == {"error"}  # Ollama's shape
            if r.status_code == 400:
                assert "takes too long" in r.json()["error"]
            else:
                assert r.headers["Retry-After"] == "1"
                assert "retry" in r.json()["error"]
        assert most_rendering == 2
        # a render on the event loop would hold it for the whole deadline (2 s, sandbox's
        # MAX_RENDER_SECONDS); off it, the loop answers between the render threads' turns
        assert slowest_live < MAX_RENDER_SECONDS / 2, slowest_live
        assert len(plain) == 3 and all(r.status_code == 200 for r in plain)
        assert app.app.state.renders.running == 0
        resp = await app.client.post("/api/generate", json=body(template="{{ .Prompt }}"))
        assert resp.status_code == 200, resp.text


async def test_a_render_cut_off_by_its_client_keeps_its_slot_until_it_ends(
    fake_app: FakeFactory,
) -> None:
    """The worker thread cannot be stopped: its slot stays taken until it ends, so the bound
    holds for renders whose requests were cancelled."""
    settings = Settings(max_concurrent_renders=1, render_wait_timeout=0.2)
    async with fake_app(settings) as app:
        first = asyncio.create_task(app.client.post("/api/generate", json=body(template=SLOW)))
        await rendering(app, 1)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert app.app.state.renders.running == 1
        resp = await app.client.post("/api/generate", json=body(template=SLOW))
        assert resp.status_code == 503, resp.text
        await rendering(app, 0)
        resp = await app.client.post("/api/generate", json=body(template="{{ .Prompt }}"))
        assert resp.status_code == 200, resp.text
