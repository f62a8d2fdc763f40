"""A conversation longer than the context (issue 23 item 14): Ollama's /api/chat drops its
oldest messages as Ollama does (system messages and the last one stay, as few dropped as
fit); the OpenAI and native routes keep their 400 context_length_exceeded."""

from __future__ import annotations

from typing import Any

from inferd.api.prompting import tokenize_chat
from inferd.api.renders import RenderSlots
from tests.conftest import AppHandle, FakeFactory

N_CTX = 256  # the fake backend's tokens are bytes: 256 characters of prompt at most

SYSTEM = {"role": "system", "content": "You are terse."}
LAST = {"role": "user", "content": "And the last question?"}


def turns(n: int) -> list[dict[str, Any]]:
    """n user/assistant exchanges of ~80 tokens each."""
    out = []
    for i in range(n):
        out.append({"role": "user", "content": f"question {i} " + "q" * 30})
        out.append({"role": "assistant", "content": f"answer {i} " + "a" * 30})
    return out


async def prompt_len(app: AppHandle, messages: list[dict[str, Any]]) -> int:
    model = app.registry.get(None)
    return len(
        await tokenize_chat(model.engine, model.template, messages, renders=RenderSlots(1, 10))
    )


async def chat(app: AppHandle, messages: list[dict[str, Any]]) -> Any:
    body = {"model": "fake", "messages": messages, "stream": False, "options": {"num_predict": 2}}
    return await app.client.post("/api/chat", json=body)


async def test_ollama_chat_drops_the_oldest_messages(fake_app: FakeFactory) -> None:
    async with fake_app(n_ctx=N_CTX) as app:
        history = turns(8)
        messages = [SYSTEM, *history, LAST]
        assert await prompt_len(app, messages) > N_CTX
        # what Ollama keeps: the system message and the shortest tail that fits
        expected = None
        for start in range(len(history) + 1):
            n = await prompt_len(app, [SYSTEM, *history[start:], LAST])
            if n < N_CTX:
                expected = n
                break
        assert expected is not None and start > 0
        resp = await chat(app, messages)
        assert resp.status_code == 200, resp.text
        assert resp.json()["prompt_eval_count"] == expected
        assert resp.json()["eval_count"] == 2


async def test_system_messages_anywhere_stay(fake_app: FakeFactory) -> None:
    async with fake_app(n_ctx=N_CTX) as app:
        history = turns(8)
        middle = {"role": "system", "content": "Answer in French."}
        messages = [*history[:4], middle, *history[4:], LAST]
        resp = await chat(app, messages)
        assert resp.status_code == 200, resp.text
        kept = resp.json()["prompt_eval_count"]
        # the middle system message is older than what fits: kept before the tail anyway
        tails = [await prompt_len(app, [middle, *history[s:], LAST]) for s in range(4, 16)]
        assert kept == next(n for n in tails if n < N_CTX)


async def test_a_last_message_longer_than_the_context_is_still_a_400(
    fake_app: FakeFactory,
) -> None:
    async with fake_app(n_ctx=N_CTX) as app:
        resp = await chat(app, [SYSTEM, *turns(2), {"role": "user", "content": "x" * N_CTX}])
        assert resp.status_code == 400
        assert "context" in resp.json()["error"]


async def test_a_conversation_that_fits_is_untouched(fake_app: FakeFactory) -> None:
    async with fake_app(n_ctx=N_CTX) as app:
        exchange = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        messages = [SYSTEM, *exchange, LAST]
        assert await prompt_len(app, messages) < N_CTX
        resp = await chat(app, messages)
        assert resp.status_code == 200, resp.text
        assert resp.json()["prompt_eval_count"] == await prompt_len(app, messages)


async def test_openai_and_native_keep_their_400(fake_app: FakeFactory) -> None:
    async with fake_app(n_ctx=N_CTX) as app:
        messages = [SYSTEM, *turns(8), LAST]
        for path in ("/v1/chat/completions", "/chat"):
            body = {"model": "fake", "messages": messages, "max_tokens": 2}
            resp = await app.client.post(path, json=body)
            assert resp.status_code == 400, (path, resp.text)
            assert resp.json()["error"]["code"] == "context_length_exceeded"
