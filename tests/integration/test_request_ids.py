"""One id per request: the X-Request-ID header, the access log line and the usage row carry
it, and the response id is made from it; the dialect comes from the route (fake backend)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from inferd.observability.logging import JsonFormatter, RequestIdFilter
from inferd.storage.store import Store
from tests.conftest import FakeFactory

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def access_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("inferd.access")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in stream.getvalue().splitlines() if x]


def sse(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(x[len("data: ") :])
        for x in text.splitlines()
        if x.startswith("data: ") and x != "data: [DONE]"
    ]


async def test_header_log_line_and_usage_row_carry_one_id(
    fake_app: FakeFactory, store: Store, access_log: io.StringIO
) -> None:
    async with fake_app(store=store) as h:
        c = h.client
        r = await c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3})
        chat_id = r.headers["x-request-id"]
        assert r.json()["id"] == f"chatcmpl-{chat_id}"
        r = await c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "stream": True})
        completion_id = r.headers["x-request-id"]
        assert {e["id"] for e in sse(r.text)} == {f"cmpl-{completion_id}"}
        r = await c.post("/api/chat", json={"model": "fake", "messages": USER, "stream": False})
        ollama_id = r.headers["x-request-id"]
        r = await c.post("/generate/stream", json={"prompt": "hi", "max_tokens": 3})
        native_id = r.headers["x-request-id"]
        r = await c.post("/v1/chat/completions", json={"messages": [], "max_tokens": 3})
        assert r.status_code == 400
        rejected_id = r.headers["x-request-id"]
    ids = [chat_id, completion_id, ollama_id, native_id, rejected_id]
    assert len(set(ids)) == 5
    rows = {row.request_id: row for row in await store.usage_records()}
    assert set(rows) == set(ids)
    assert rows[rejected_id].http_status == 400
    assert rows[ollama_id].dialect == "ollama" and rows[native_id].dialect == "native"
    logged = {x["request_id"]: x for x in lines(access_log)}
    assert set(ids) <= set(logged)
    for rid in ids[:4]:  # the log line and the row count the same tokens
        assert logged[rid]["completion_tokens"] == rows[rid].completion_tokens > 0
        assert logged[rid]["prompt_tokens"] == rows[rid].prompt_tokens > 0


async def test_a_client_request_id_is_logged_not_reused(
    fake_app: FakeFactory, store: Store, access_log: io.StringIO
) -> None:
    """Two clients may send the same X-Request-ID; each request still gets its own id (and
    usage row); the client's is on the access log line."""
    async with fake_app(store=store) as h:
        got = []
        for _ in range(2):
            r = await h.client.post(
                "/v1/chat/completions",
                json={"messages": USER, "max_tokens": 2},
                headers={"X-Request-ID": "client-1"},
            )
            assert r.status_code == 200
            got.append(r.headers["x-request-id"])
    assert len(set(got)) == 2 and "client-1" not in got
    assert sorted(row.request_id for row in await store.usage_records()) == sorted(got)
    by_id = {x["request_id"]: x for x in lines(access_log)}
    assert all(by_id[rid]["client_request_id"] == "client-1" for rid in got)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/generate/stream", 400),  # native: a JSON body, as the other native routes
        ("/api/generate/stream", 400),  # the same native route under /api/
        ("/v1/chat/completions", 400),
        ("/api/generate", 200),  # Ollama reads every body as JSON (curl -d sends a form type)
    ],
)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_not_sent_as_json(
    fake_app: FakeFactory, path: str, status: int, content_type: str
) -> None:
    body = {"model": "fake", "prompt": "hi", "messages": USER, "max_tokens": 2, "stream": False}
    async with fake_app() as h:
        r = await h.client.post(
            path, content=json.dumps(body), headers={"content-type": content_type}
        )
        assert r.status_code == status, r.text
        if status == 400:  # the native and OpenAI shape, naming the fix
            assert "Content-Type: application/json" in r.json()["error"]["message"]


async def test_errors_take_the_shape_of_the_routes_dialect(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        c = h.client
        r = await c.post("/api/generate", content=b"{", headers={"content-type": "text/plain"})
        assert r.status_code == 400 and isinstance(r.json()["error"], str)
        r = await c.post("/api/chat/stream", content=b"{")  # native, under /api/
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        r = await c.get("/api/generate")  # a known Ollama path, another method
        assert r.status_code == 405 and isinstance(r.json()["error"], str)
        r = await c.get("/api/no-such-route")  # Ollama's namespace: its shape
        assert r.status_code == 404 and isinstance(r.json()["error"], str)
        r = await c.post("/api/tags")  # a known path, another method: still a 405
        assert r.status_code == 405 and isinstance(r.json()["error"], str)
        r = await c.get("/no-such-route")  # no route: no dialect, the default shape
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
