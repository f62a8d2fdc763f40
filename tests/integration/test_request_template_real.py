"""/api/generate with a `template` of its own (a Go template, as Ollama's; or a Jinja chat
template sent back from /api/show), through the real engine and the bundled model."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferd.api.prompting import tokenize_prompt
from inferd.config import Settings
from inferd.models import go_template
from inferd.models.loading import llamacpp_factory
from inferd.models.registry import ModelRegistry
from tests.conftest import AppHandle, bundled_spec

MODEL = "smollm2:135m"
SYSTEM = "You are a terse assistant."
PROMPT = "Name a colour."
OPTIONS = {"num_predict": 3, "temperature": 0}

# ChatML, the bundled model's format, written the two ways Ollama's templates are
CHATML_MESSAGES = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
CHATML_LEGACY = """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""


@pytest.fixture(scope="module")
async def app(model_path: Path) -> AsyncIterator[AppHandle]:
    """No saved prefixes: a prompt's prompt_eval_count is its whole length."""
    spec = bundled_spec(model_path, prefix_cache=False)
    async with AppHandle(Settings(), ModelRegistry([spec], llamacpp_factory())) as handle:
        yield handle


async def generate(app: AppHandle, stream: bool = False, **fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": PROMPT, "stream": stream, "options": OPTIONS, **fields}
    resp = await app.client.post("/api/generate", json=body)
    assert resp.status_code == 200, resp.text
    if not stream:
        return dict(resp.json())
    chunks = [json.loads(line) for line in resp.text.splitlines()]
    assert chunks[-1]["done"] is True and all(not c["done"] for c in chunks[:-1])
    return chunks[-1] | {"response": "".join(c["response"] for c in chunks)}


def prompt_of(final: dict[str, Any]) -> list[int]:
    """The prompt tokens the engine ran: the context less the generated tokens."""
    n = final["prompt_eval_count"]
    assert len(final["context"]) >= n
    return list(final["context"][:n])


async def tokens(app: AppHandle, text: str) -> list[int]:
    return await tokenize_prompt(app.engine(), text)


async def post_error(app: AppHandle, **fields: Any) -> str:
    body = {"model": MODEL, "prompt": PROMPT, "stream": False, **fields}
    resp = await app.client.post("/api/generate", json=body)
    assert resp.status_code == 400, resp.text
    payload = resp.json()
    assert set(payload) == {"error"}, payload  # Ollama's shape
    message = payload["error"]
    assert isinstance(message, str)
    for leak in ("Traceback", 'File "', "/work", "site-packages"):
        assert leak not in message
    return message


async def assert_serves(app: AppHandle) -> None:
    final = await generate(app)
    assert final["eval_count"] >= 1


@pytest.mark.parametrize("template", [CHATML_MESSAGES, CHATML_LEGACY], ids=["messages", "legacy"])
async def test_chatml_go_template_gives_the_models_own_prompt(
    app: AppHandle, template: str
) -> None:
    own = await generate(app, system=SYSTEM)
    templated = await generate(app, system=SYSTEM, template=template)
    assert prompt_of(templated) == prompt_of(own)
    assert templated["prompt_eval_count"] == own["prompt_eval_count"]
    assert templated["response"] == own["response"]  # greedy: the same answer
    # and without a system message (the model's own template then adds its default one)
    text = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    final = await generate(app, template=template)
    assert prompt_of(final) == await tokens(app, text)


async def test_a_custom_template_changes_the_prompt(app: AppHandle) -> None:
    own = await generate(app, system=SYSTEM)
    template = "{{ if .System }}[{{ .System }}] {{ end }}Q: {{ .Prompt }}\nA:"
    final = await generate(app, system=SYSTEM, template=template)
    expected = await tokens(app, f"[{SYSTEM}] Q: {PROMPT}\nA:")
    assert prompt_of(final) == expected
    assert final["prompt_eval_count"] == len(expected) < own["prompt_eval_count"]
    bare = await generate(app, template="{{ .Prompt }}")
    assert bare["prompt_eval_count"] == len(await tokens(app, PROMPT))


async def test_template_with_streaming_and_context(app: AppHandle) -> None:
    first = await generate(app, template="{{ .Prompt }}", stream=True)
    assert first["prompt_eval_count"] == len(await tokens(app, PROMPT))
    # context (earlier tokens) still goes first
    follow = await generate(
        app, prompt="And another?", template="{{ .Prompt }}", context=first["context"]
    )
    more = await app.engine().tokenize("And another?", add_special=False)
    assert prompt_of(follow) == [*first["context"], *more]


async def test_raw_skips_the_template(app: AppHandle) -> None:
    final = await generate(app, template="Ignored {{ .Prompt }}", raw=True)
    assert prompt_of(final) == await tokens(app, PROMPT)


async def test_the_template_from_show_can_be_sent_back(app: AppHandle) -> None:
    """/api/show gives the model's Jinja chat template; tools send it back as `template`."""
    resp = await app.client.post("/api/show", json={"model": MODEL})
    jinja = resp.json()["template"]
    assert "{%" in jinja
    own = await generate(app, system=SYSTEM)
    echoed = await generate(app, system=SYSTEM, template=jinja)
    assert prompt_of(echoed) == prompt_of(own)


async def test_messages_values_are_ollamas(app: AppHandle) -> None:
    """.Messages holds the system and user messages; .System is there too; a template that
    reads .Messages is not cut at .Response."""
    template = (
        "{{ len .Messages }}|{{ .System }}|{{ range $i, $m := .Messages }}{{ $i }}:{{ $m.Role }}"
        "={{ $m.Content }};{{ end }}{{ .Response }}|{{ json (index .Messages 1) }}"
    )
    final = await generate(app, system=SYSTEM, template=template)
    text = f'2|{SYSTEM}|0:system={SYSTEM};1:user={PROMPT};|{{"role":"user","content":"{PROMPT}"}}'
    assert prompt_of(final) == await tokens(app, text)


@pytest.mark.parametrize(
    ("template", "parts"),
    [
        ("{{ .Prompt ", ("template", "line 1, column 1", "unclosed action")),
        ("Hi\n{{ if .System }}", ("template", "line 2, column 4", "{{end}}")),
        ("{{ shout .Prompt }}", ("template", 'function "shout" not defined')),
        ("{{ range .Messages }}{{ .Nope }}{{ end }}", ("template", "can't evaluate field Nope")),
        ("{{ range 1000000000 }}x{{ end }}", ("template", "too many steps")),
        ('{{ $s := "ab" }}{{ range 60 }}{{ $s = print $s $s }}{{ end }}', ("template", "over")),
        ("{{ range 200000 }}xxxxxxxxxx{{ end }}", ("template",)),
        ("x" * (go_template.MAX_TEMPLATE_CHARS + 1), ("template", "longer than")),
        ("{% for m in messages %}{{ m.content }", ("template",)),  # broken Jinja
        ("{% for m in messages %}{{ m.__class__.__mro__ }}{% endfor %}", ("template",)),
        ("{% if 1 %}" * 500 + "{% endif %}" * 500, ("template", "nested too deeply")),
        ("{% if 1 %}" + "x" * go_template.MAX_TEMPLATE_CHARS + "{% endif %}", ("longer than",)),
        ("{% for i in range(10**9) %}x{% endfor %}", ("template",)),
    ],
)
async def test_bad_templates_are_ollama_shaped_400s(
    app: AppHandle, template: str, parts: tuple[str, ...]
) -> None:
    for stream in (False, True):  # refused before any NDJSON either way
        message = await post_error(app, template=template, stream=stream)
        for part in parts:
            assert part in message, message
    await assert_serves(app)


async def test_a_template_rendering_nothing_is_an_empty_prompt(app: AppHandle) -> None:
    message = await post_error(app, template="{{ if false }}x{{ end }}")
    assert "empty" in message


async def test_not_a_string_template_is_a_400(app: AppHandle) -> None:
    resp = await app.client.post(
        "/api/generate", json={"model": MODEL, "prompt": PROMPT, "template": 5}
    )
    assert resp.status_code == 400
    assert "template" in resp.json()["error"]


async def test_request_template_bounds_hold_under_load(app: AppHandle) -> None:
    """A hostile template costs its sender a bounded moment, not the server."""
    started = time.monotonic()
    bad = {
        "model": MODEL,
        "prompt": PROMPT,
        "stream": False,
        "template": "{{ range 1000000000 }}{{ end }}",
    }

    async def one() -> httpx.Response:
        return await app.client.post("/api/generate", json=bad)

    responses = await asyncio.gather(*(one() for _ in range(8)))
    assert all(r.status_code == 400 for r in responses)
    assert time.monotonic() - started < 30
    await assert_serves(app)
