"""Chat templates render on the event loop for short conversations and on a worker thread for
long ones, in every dialect, with the same prompt either way."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from inferd.models.chat_template import ChatTemplate
from tests.conftest import FakeFactory

ROUTES = [
    ("/v1/chat/completions", {"max_tokens": 2}),
    ("/chat", {"max_tokens": 2}),
    ("/api/chat", {"stream": False, "options": {"num_predict": 2}}),
]


@pytest.mark.parametrize(("path", "extra"), ROUTES)
async def test_long_conversations_render_off_the_event_loop(
    fake_app: FakeFactory, monkeypatch: pytest.MonkeyPatch, path: str, extra: dict[str, Any]
) -> None:
    rendered: list[tuple[int, str]] = []
    templates: list[ChatTemplate] = []
    original = ChatTemplate.render

    def spy(self: ChatTemplate, messages: list[dict[str, Any]], **kw: Any) -> str:
        text = original(self, messages, **kw)
        rendered.append((threading.get_ident(), text))
        templates.append(self)
        return text

    monkeypatch.setattr(ChatTemplate, "render", spy)
    loop_thread = threading.get_ident()
    short = [{"role": "user", "content": "hi"}]
    long = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(41)
    ]
    async with fake_app(n_ctx=4096, kv_cells=8192) as h:
        for messages in (short, long):
            r = await h.client.post(path, json={"model": "fake", "messages": messages, **extra})
            assert r.status_code == 200, r.text
    (short_thread, short_text), (long_thread, long_text) = rendered
    assert "hi" in short_text
    assert short_thread == loop_thread
    assert long_thread != loop_thread
    assert long_text == original(templates[1], long)  # the same prompt as inline
    assert long_text.count("turn ") == 41
