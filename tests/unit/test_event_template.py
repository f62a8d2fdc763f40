"""EventTemplate: a stream's fixed-shape event encoded once and filled per token gives the
same text as encoding the whole event (what a client parses must not change)."""

from __future__ import annotations

import json

import pytest

from inferd.api.streaming import EventTemplate, encode_json

TEXTS = [
    "",
    " fox",
    'a "quoted" \\ back\\slash',
    "new\nline\ttab\r\x00\x1f",
    "é, 漢字, 🦊",
    "\ud800 lone surrogate",
    "%s %d {} {0} {{",
    EventTemplate.HOLE,
]


def chunk(content: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1796682279,
        "model": "the-model {0} %s",
        "choices": [{"index": 3, "delta": {"content": content}, "finish_reason": None}],
        "usage": None,
    }


@pytest.mark.parametrize("text", TEXTS)
def test_a_filled_template_is_the_event_encoded_whole(text: str) -> None:
    template = EventTemplate(chunk(EventTemplate.HOLE))
    filled = template.fill(text)
    assert filled == encode_json(chunk(text))
    assert json.loads(filled)["choices"][0]["delta"]["content"] == text


def test_the_encoding_is_compact_ascii_json() -> None:
    assert encode_json({"a": ["é", None, 1]}) == '{"a":["\\u00e9",null,1]}'
