"""A request cut off by an unload or a shutdown never looks like a normal completion (issue 23
item 7): a stream ends with an error event in its dialect's shape (no finish_reason, no
`done`), a plain response is a 503 with Retry-After, and the usage record says cancelled with
the tokens generated so far."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from inferd.config import Settings
from inferd.storage.records import UsageRecord, UsageStatus
from tests.conftest import AppHandle, FakeFactory

REPLY = "word " * 60  # 300 tokens, one every 10 ms: the unload lands mid-answer


class Records:
    """A store that keeps the usage records it is given."""

    writer = None

    def __init__(self) -> None:
        self.rows: list[UsageRecord] = []

    def record(self, row: UsageRecord) -> None:
        self.rows.append(row)


# route, body, streamed
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "openai-chat": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 250},
    ),
    "openai-completions": ("/v1/completions", {"prompt": "hi", "max_tokens": 250}),
    "ollama-chat": (
        "/api/chat",
        {"messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 250}},
    ),
    "ollama-generate": ("/api/generate", {"prompt": "hi", "options": {"num_predict": 250}}),
    "native-generate": ("/generate", {"prompt": "hi", "max_tokens": 250}),
}


async def some_tokens(app: AppHandle) -> None:
    """Wait until the engine has generated a few tokens."""
    engine = app.engine()
    for _ in range(500):
        if engine.stats().generated_tokens_total >= 5:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no tokens generated")


async def unload_after_tokens(app: AppHandle) -> None:
    await some_tokens(app)
    assert await app.registry.unload(None)


def check_record(records: Records, http_status: int) -> None:
    (row,) = records.rows
    assert row.status is UsageStatus.CANCELLED
    assert row.finish_reason == "abort"
    assert row.http_status == http_status
    assert 5 <= row.completion_tokens < 250


@pytest.mark.parametrize("case", list(CASES))
async def test_an_unload_mid_answer_is_a_503(fake_app: FakeFactory, case: str) -> None:
    path, body = CASES[case]
    records = Records()
    async with fake_app(Settings(), store=records, reply=REPLY, step_delay=0.01) as app:  # type: ignore[arg-type]
        post = app.client.post(path, json={"model": "fake", "stream": False} | body)
        resp, _ = await asyncio.gather(post, unload_after_tokens(app))
        assert resp.status_code == 503, resp.text
        assert resp.headers["Retry-After"] == "1"
        error = resp.json()["error"]
        if path.startswith("/api/"):
            assert isinstance(error, str) and "unloaded" in error  # Ollama's shape
        else:
            assert error["code"] == "generation_interrupted"
            assert "unloaded" in error["message"]
        check_record(records, 503)


def stream_events(path: str, text: str) -> list[Any]:
    """The stream's objects (SSE data lines, or NDJSON lines), `[DONE]` as a string."""
    if path.startswith("/api/"):
        return [json.loads(line) for line in text.splitlines() if line]
    datas = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in datas]


@pytest.mark.parametrize("case", list(CASES))
async def test_an_unload_mid_stream_ends_with_an_error_event(
    fake_app: FakeFactory, case: str
) -> None:
    path, body = CASES[case]
    if path == "/generate":
        path = "/generate/stream"
    records = Records()
    async with fake_app(Settings(), store=records, reply=REPLY, step_delay=0.01) as app:  # type: ignore[arg-type]
        post = app.client.post(path, json={"model": "fake", "stream": True} | body)
        resp, _ = await asyncio.gather(post, unload_after_tokens(app))
        assert resp.status_code == 200
        events = stream_events(path, resp.text)
        if events[-1] == "[DONE]":  # OpenAI ends every stream so, an error's too
            events.pop()
        *chunks, last = events
        assert chunks, "the stream began before the unload"
        if path.startswith("/api/"):
            assert set(last) == {"error"} and "unloaded" in last["error"]
            assert not any(c.get("done") for c in chunks)
        else:
            assert last["error"]["code"] == "generation_interrupted"
            assert not any(_finished(c) for c in chunks)
        check_record(records, 200)


def _finished(chunk: dict[str, Any]) -> bool:
    """Whether an OpenAI or native chunk says its choice has ended."""
    if chunk.get("finish_reason"):
        return True
    return any(c.get("finish_reason") for c in chunk.get("choices", []))


async def test_a_shutdown_mid_answer_is_a_503(fake_app: FakeFactory) -> None:
    """The registry closing (the server's shutdown, after its drain) cuts it the same way."""
    records = Records()
    async with fake_app(Settings(), store=records, reply=REPLY, step_delay=0.01) as app:  # type: ignore[arg-type]

        async def close() -> None:
            await some_tokens(app)
            await app.registry.close()

        body = {"model": "fake", "prompt": "hi", "max_tokens": 250}
        resp, _ = await asyncio.gather(app.client.post("/v1/completions", json=body), close())
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "generation_interrupted"
        check_record(records, 503)


async def test_a_model_loaded_again_serves_normally(fake_app: FakeFactory) -> None:
    async with fake_app(Settings(), reply=REPLY, step_delay=0.001) as app:
        await app.registry.unload(None)
        body = {"model": "fake", "prompt": "hi", "max_tokens": 3}
        resp: httpx.Response = await app.client.post("/v1/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["finish_reason"] == "length"
