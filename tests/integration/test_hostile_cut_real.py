"""A length cut inside a multi-byte character (issue 23 item 10), on the real engine and the
bundled model: the partial character is dropped, the usage still counts its token."""

from __future__ import annotations

import json

from tests.conftest import AppHandle

CHAT = "/v1/chat/completions"
# on the bundled model, seed 1 cuts the 8th token inside the bytes of an emoji
CUT = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8, "seed": 1}


async def test_a_length_cut_inside_a_character_drops_it(real: AppHandle) -> None:
    r = await real.client.post(CHAT, json=CUT)
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "Aw, hello! 😊"
    assert body["usage"]["completion_tokens"] == 8  # the cut token was generated: counted


async def test_a_length_cut_inside_a_character_drops_it_in_streams(real: AppHandle) -> None:
    r = await real.client.post(
        CHAT, json={**CUT, "stream": True, "stream_options": {"include_usage": True}}
    )
    events = [
        json.loads(line[6:])
        for line in r.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "Aw, hello! 😊"
    assert [e["usage"]["completion_tokens"] for e in events if e.get("usage")] == [8]
