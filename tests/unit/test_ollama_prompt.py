"""Which values a request's Go template sees, chosen as Ollama's Template.Execute chooses them,
on the fake backend (bytes are tokens, so a response's `context` spells its prompt)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import FakeFactory


def spelled(context: list[int], reply_len: int) -> str:
    return bytes(t - 1 for t in context[: len(context) - reply_len] if t > 0).decode()


async def prompt_text(h: Any, **fields: Any) -> str:
    body = {"model": "fake", "prompt": "P", "stream": False, **fields}
    r = await h.client.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    return spelled(out["context"], out["eval_count"])


@pytest.mark.parametrize(
    ("template", "fields", "text"),
    [
        # legacy: System, Prompt, Response; cut after {{ .Response }}
        ("[{{ .System }}|{{ .Prompt }}]{{ .Response }}<end>", {"system": "S"}, "[S|P]"),
        # a template reading .Messages has no .Prompt (Ollama's messages values)
        ("{{ .Prompt }}{{ .Messages }}", {}, "<no value>[{user P  [] [] }]"),
        # messages: the system and user messages, .System too, no cut
        (
            "{{ .System }}:{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"
            "{{ .Response }}<end>",
            {"system": "S"},
            "S:system=S;user=P;<end>",
        ),
        # a suffix: Prompt and Suffix only (System is not there: Go prints <no value>)
        (
            "<{{ .Prompt }}|{{ .Suffix }}|{{ .System }}>",
            {"suffix": "X", "system": "S"},
            "<P|X|<no value>>",
        ),
        # Tools is an empty list, Think false
        ("{{ if .Tools }}T{{ end }}{{ if .Think }}K{{ end }}{{ .Messages | len }}", {}, "1"),
    ],
)
async def test_values_by_kind_of_template(
    fake_app: FakeFactory, template: str, fields: dict[str, Any], text: str
) -> None:
    async with fake_app() as h:
        assert await prompt_text(h, template=template, **fields) == text


async def test_jinja_template_gets_the_messages(fake_app: FakeFactory) -> None:
    jinja = "{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}"
    async with fake_app() as h:
        assert await prompt_text(h, template=jinja, system="S") == "system:S;user:P;"


async def test_raw_ignores_the_template_and_context_goes_first(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        assert await prompt_text(h, template="T{{ .Prompt }}", raw=True) == "P"
        context = [b + 1 for b in b"earlier "]
        assert await prompt_text(h, template="T{{ .Prompt }}", context=context) == "earlier TP"
