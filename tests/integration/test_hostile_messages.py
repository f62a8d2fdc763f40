"""A 15 MB message (within the 16 MiB body limit) is refused for what it is (issue 23 item
12a): the messages are too long, not "the chat template writes too much"."""

from __future__ import annotations

import pytest

from tests.conftest import FakeFactory


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_a_15_mb_message_is_refused_as_too_long(fake_app: FakeFactory, path: str) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "a" * 15_000_000}]}
    async with fake_app() as h:
        r = await h.client.post(path, json={**body, "stream": False})
    assert r.status_code == 400
    error = r.json()["error"]
    message = error if isinstance(error, str) else error["message"]
    assert "the messages are too long" in message and "template" not in message
