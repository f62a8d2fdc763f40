"""The native dialect on the real model: the three client shapes it must serve unchanged."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import AppHandle, wait_for


def sse(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


async def test_game_backend_reads_text(real: AppHandle) -> None:
    resp = await real.client.post("/generate", json={"prompt": "The knight said", "max_tokens": 8})
    assert resp.status_code == 200
    body = resp.json()
    assert isinstance(body["text"], str) and body["text"]
    assert body["model"] == body["model_used"] == "smollm2:135m"


async def test_story_service_parameters_and_statistics(real: AppHandle) -> None:
    resp = await real.client.post(
        "/generate",
        json={
            "prompt": "Once upon a time",
            "max_new_tokens": 12,
            "temperature": 0.7,
            "top_k": 30,
            "top_p": 0.9,
            "word_repetition_penalty": 1.2,
            "seed": 11,
        },
    )
    body = resp.json()
    assert body["generated_text"] == body["text"]
    assert body["prompt"] == "Once upon a time"
    assert body["tokens_generated"] <= 12 and body["finish_reason"] in ("stop", "length")
    assert body["generation_time"] > 0 and body["tokens_per_second"] > 0
    assert body["parameters"]["max_tokens"] == 12
    assert body["parameters"]["repetition_penalty"] == 1.2
    assert body["parameters"]["top_k"] == 30
    again = (
        await real.client.post(
            "/generate",
            json={
                "prompt": "Once upon a time",
                "max_new_tokens": 12,
                "temperature": 0.7,
                "top_k": 30,
                "top_p": 0.9,
                "word_repetition_penalty": 1.2,
                "seed": 11,
            },
        )
    ).json()
    assert again["text"] == body["text"]


async def test_chat_and_streams(real: AppHandle) -> None:
    chat = await real.client.post(
        "/chat", json={"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 6}
    )
    assert chat.status_code == 200 and chat.json()["prompt"] is None
    for path, body in [
        ("/generate/stream", {"prompt": "Hi", "max_tokens": 6, "temperature": 0}),
        ("/api/generate/stream", {"prompt": "Hi", "max_tokens": 6, "temperature": 0}),
        ("/chat/stream", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}),
        ("/api/chat/stream", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}),
    ]:
        resp = await real.client.post(path, json=body)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse(resp.text)
        assert events[-1]["done"] is True
        deltas = [e["text"] for e in events[:-1]]
        assert all(e["done"] is False for e in events[:-1])
        assert "".join(deltas) == events[-1]["text"]
        assert events[-1]["tokens_generated"] == 6 or events[-1]["finish_reason"] == "stop"


async def test_platform_service_listing_and_health(real: AppHandle) -> None:
    llms = (await real.client.get("/api/llms")).json()
    assert "smollm2:135m" in llms["llms"] and llms["default"] == "smollm2:135m"
    health = (await real.client.get("/health")).json()
    assert {"status", "models_loaded", "total_models", "uptime"} <= set(health)
    assert (await real.client.get("/health/live")).status_code == 200


async def test_models_routes_and_unload_load(real: AppHandle) -> None:
    listed = (await real.client.get("/models")).json()
    m = listed["models"][0]
    assert m["loaded"] is True and m["path"].endswith(".gguf") and "/" not in m["path"]
    cfg = m["config"]
    assert cfg["architecture"] == "llama" and cfg["vocab_size"] == 49152
    assert cfg["layers"] == 30 and cfg["quantization"] == "Q4_1" and cfg["embedding_size"] == 576
    assert (await real.client.get("/models/smollm2")).json()["name"] == "smollm2:135m"
    assert (await real.client.get("/models/nope")).status_code == 404
    try:
        gone = await real.client.delete("/models/smollm2/unload")
        assert gone.json()["status"] == "unloaded"
        assert (await real.client.get("/models/smollm2")).json()["loaded"] is False
        started = await real.client.post("/models/smollm2/load")
        assert started.status_code == 202
        assert await wait_for(lambda: real.registry.entry(None).model is not None, 60)
    finally:
        await real.registry.acquire(None)
    assert (
        await real.client.post("/generate", json={"prompt": "Hi", "max_tokens": 2})
    ).status_code == 200


async def test_native_errors_are_openai_shaped(real: AppHandle) -> None:
    for path, body in [
        ("/generate", {"prompt": ""}),
        ("/generate", {"prompt": "x", "max_tokens": "many"}),
        ("/api/generate/stream", {"prompt": "x", "temperature": 9}),
        ("/chat", {"messages": []}),
        ("/generate", {"prompt": "x", "model": "../../etc/passwd"}),
    ]:
        resp = await real.client.post(path, json=body)
        assert resp.status_code in (400, 404), (path, resp.text)
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
    assert (await real.client.get("/swagger-ui")).status_code == 200
    paths = (await real.client.get("/openapi.json")).json()["paths"]
    for p in [
        "/generate",
        "/chat/stream",
        "/api/llms",
        "/v1/chat/completions",
        "/api/chat",
        "/models/{name}/load",
    ]:
        assert p in paths


async def test_platform_generate_stream_applies_the_chat_template(real: AppHandle) -> None:
    """/api/generate/stream answers an instruct model's prompt as a user message (it used to
    end at once on "Write a haiku."); raw: true is the text as it is, as /generate/stream."""
    params = {"max_tokens": 24, "temperature": 0}

    async def final(path: str, body: dict[str, object]) -> dict[str, object]:
        resp = await real.client.post(path, json={**body, **params})
        assert resp.status_code == 200, resp.text
        last: dict[str, object] = sse(resp.text)[-1]
        return last

    haiku = {"prompt": "Write a haiku."}
    templated = await final("/api/generate/stream", haiku)
    user = {"role": "user", "content": "Write a haiku."}
    chat = await final("/chat/stream", {"messages": [user]})
    assert templated["text"] == chat["text"] and templated["tokens_generated"] == 24
    raw = await final("/api/generate/stream", {**haiku, "raw": True})
    plain = await final("/generate/stream", haiku)
    assert raw["text"] == plain["text"] != templated["text"]
    with_system = await final("/api/generate/stream", {**haiku, "system": "Be terse."})
    system = {"role": "system", "content": "Be terse."}
    chat = await final("/chat/stream", {"messages": [system, user]})
    assert with_system["text"] == chat["text"]
    # and /generate/stream keeps completing text unless raw: false asks for the template
    assert (await final("/generate/stream", {**haiku, "raw": False}))["text"] == templated["text"]
