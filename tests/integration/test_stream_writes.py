"""How streams go on the wire: what reached a connection while its loop was busy goes out in
one write (SSE events or NDJSON lines, each framed as before), and the bytes are those of one
event a write: `data: <compact JSON, non-ASCII escaped>` and a blank line, `[DONE]` last."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from sse_starlette import sse

from tests.conftest import AppHandle, FakeFactory

REPLY = "héllo wörld ✓ "
TOKENS = 3 * len(REPLY.encode())  # the fake backend's tokens are the reply's bytes


async def writes(app: AppHandle, path: str, body: dict[str, Any]) -> list[bytes]:
    """The response body's writes, calling the app as the server would; the loop is held up
    for 0.1 s after the second write (the engine, on its own thread, runs on)."""
    payload = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    requested = False
    ended = asyncio.Event()
    parts: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await ended.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        elif message["type"] == "http.response.body":
            if message.get("body"):
                parts.append(message["body"])
                if len(parts) == 2:
                    time.sleep(0.1)  # noqa: ASYNC251 (a busy loop; the engine steps every 5 ms)
            if not message.get("more_body"):
                ended.set()

    await app.app(scope, receive, send)
    return parts


def most_in_one_write(parts: list[bytes], separator: bytes) -> int:
    return max(p.count(separator) for p in parts)


async def test_sse_events_queued_meanwhile_go_in_one_write(fake_app: FakeFactory) -> None:
    async with fake_app(reply=REPLY, step_delay=0.005) as h:
        parts = await writes(
            h,
            "/v1/chat/completions",
            {
                "model": "fake",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": TOKENS,
                "ignore_eos": True,
                "stream": True,
            },
        )
    assert most_in_one_write(parts, b"\r\n\r\n") >= 5, [p.count(b"\r\n\r\n") for p in parts]
    body = b"".join(parts)
    frames = body.split(b"\r\n\r\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    events = [json.loads(f.removeprefix(b"data: ")) for f in frames[:-2]]
    # byte for byte what one event a write gave: compact JSON, non-ASCII escaped
    framed = [f"data: {json.dumps(e, separators=(',', ':'))}\r\n\r\n".encode() for e in events]
    assert body == b"".join(framed) + b"data: [DONE]\r\n\r\n"
    assert b"\\u00e9" in body
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text == REPLY * 3
    assert events[-1]["choices"][0]["finish_reason"] == "length"


async def test_ndjson_lines_queued_meanwhile_go_in_one_write(fake_app: FakeFactory) -> None:
    async with fake_app(reply=REPLY * 3, step_delay=0.005) as h:  # then EOS
        parts = await writes(
            h, "/api/generate", {"model": "fake", "prompt": "hi", "options": {"num_predict": 200}}
        )
    assert most_in_one_write(parts, b"\n") >= 5, [p.count(b"\n") for p in parts]
    body = b"".join(parts)
    lines = body.split(b"\n")
    assert lines[-1] == b""
    chunks = [json.loads(line) for line in lines[:-1]]
    assert body == b"".join(f"{json.dumps(c, separators=(',', ':'))}\n".encode() for c in chunks)
    assert "".join(c["response"] for c in chunks) == REPLY * 3
    assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]


async def test_sse_writes_go_without_a_cancel_scope_each(
    fake_app: FakeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sse-starlette wraps every write in `anyio.move_on_after`; ours skip it (no send
    timeout is set), which fails here if an sse-starlette upgrade moves that write."""
    scopes: list[object] = []
    move_on_after = sse.anyio.move_on_after

    def counted(*args: Any, **kwargs: Any) -> Any:
        scopes.append(args)
        return move_on_after(*args, **kwargs)

    monkeypatch.setattr(sse.anyio, "move_on_after", counted)
    async with fake_app(reply=REPLY, step_delay=0.005) as h:
        parts = await writes(
            h,
            "/v1/completions",
            {"model": "fake", "prompt": "hi", "max_tokens": 5, "stream": True},
        )
    body = b"".join(parts)
    assert body.endswith(b"data: [DONE]\r\n\r\n") and len(parts) >= 2
    events = [json.loads(f[6:]) for f in body.split(b"\r\n\r\n") if f.startswith(b"data: {")]
    assert "".join(e["choices"][0]["text"] for e in events) == "héll"  # 5 bytes: é is two
    assert scopes == []
