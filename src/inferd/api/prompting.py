"""The token ids of a templated prompt, with message content kept as text.

A rendered chat prompt is tokenized with special-token parsing on, so that the template's
own markers (`<|im_start|>`, `[INST]`, ...) become control tokens. Message content must not:
a user who writes `<|im_end|><|im_start|>system` would forge a turn. Content that holds
special-token text (it tokenizes differently with parsing on and off) is therefore marked
while the template renders (`models.content_marks`) and tokenized on its own as plain text,
between the template text around it; the rest of the prompt is tokenized as before, so a
prompt without such content gets exactly the ids it always had. A template that changes
such content beyond trimming it cannot be followed: that request is a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inferd.api.renders import RenderSlots
from inferd.engine.client import EngineClient
from inferd.errors import InvalidRequest
from inferd.models.chat_template import ChatTemplate, marked_strings, with_content
from inferd.models.content_marks import ContentMarks, Segments

# Renders with the content strings passed through the mark (Jinja or Go, any values).
Render = Callable[[Callable[[str], str]], str]

# Conversations longer than this (characters of content) are rendered off the event loop: a
# sandboxed render costs ~9 us a message, 18 ms for 2,000 messages, and every stream's next
# token would wait for it.
_INLINE_RENDER_CHARS = 16384
_INLINE_RENDER_MESSAGES = 32


async def tokenize_chat(
    engine: EngineClient,
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    *,
    renders: RenderSlots,
    add_generation_prompt: bool = True,
    add_bos: bool = True,
    tools: list[dict[str, Any]] | None = None,
    variables: dict[str, Any] | None = None,
) -> list[int]:
    """The prompt ids of `messages` (and `tools`, for the template's `tools` variable, and
    a request's own `variables`) under `template`, in every dialect; `add_bos` false when
    the prompt continues a context (Ollama's `context`). A long conversation renders in one
    of `renders`' slots."""

    def render(mark: Callable[[str], str]) -> str:
        marked = with_content(messages, mark)
        # tool definitions and calls, and a request's variables, are user text too:
        # special-token text in a description, an argument or a variable must stay text
        specs = marked_strings(tools, mark) if tools else tools
        return template.render(
            marked,
            add_generation_prompt=add_generation_prompt,
            tools=specs,
            variables=marked_strings(variables, mark) if variables else None,
        )

    chars = sum(len(str(m.get("content") or "")) for m in messages)
    inline = len(messages) <= _INLINE_RENDER_MESSAGES and chars <= _INLINE_RENDER_CHARS
    return await tokenize_rendered(
        engine, render, renders=None if inline else renders, add_bos=add_bos
    )


async def tokenize_rendered(
    engine: EngineClient, render: Render, *, renders: RenderSlots | None, add_bos: bool = True
) -> list[int]:
    """The prompt ids of any rendering whose content strings pass through the mark it is
    given (a Go template's `.Prompt`, `.System` and messages, a Jinja template's messages);
    rendered in one of `renders`' slots (on a worker thread), or inline when None."""
    plain = ContentMarks()
    text = await _render(render, plain, renders)
    special = await _with_special_text(engine, plain.seen)
    if not special:
        return await tokenize_prompt(engine, text, add_bos=add_bos)
    marks = ContentMarks(special)
    segments = marks.segments(await _render(render, marks, renders), text)
    if segments is None:
        raise InvalidRequest(
            "a message or tool holds special-token text (such as <|im_start|>) that this "
            "model's chat template rewrites (or writes as JSON), so it cannot be kept apart "
            "from the template's own markers",
            param="messages",
        )
    return await tokenize_segments(engine, segments, add_bos=add_bos)


async def tokenize_prompt(engine: EngineClient, text: str, *, add_bos: bool = True) -> list[int]:
    """Tokenize a rendered prompt: special tokens parsed, BOS added once if the model wants it
    (and `add_bos`)."""
    add_special = add_bos and not _has_bos(engine, text)
    return await engine.tokenize(text, add_special=add_special, parse_special=True)


async def tokenize_segments(
    engine: EngineClient, segments: Segments, *, add_bos: bool = True
) -> list[int]:
    """Template text with special tokens parsed, content as plain text, then concatenated;
    BOS once at the start, if the model wants it (and `add_bos`)."""
    tokens: list[int] = []
    opening = segments[0][0] if segments and not segments[0][1] else ""
    if add_bos and not _has_bos(engine, opening):
        # tokenizing nothing with special tokens gives exactly the BOS the model wants, if any
        tokens += await engine.tokenize("", add_special=True, parse_special=False)
    for text, is_content in segments:
        tokens += await engine.tokenize(text, add_special=False, parse_special=not is_content)
    return tokens


def _has_bos(engine: EngineClient, text: str) -> bool:
    bos = engine.info.bos_token
    return bool(bos) and text.startswith(bos)


async def _with_special_text(engine: EngineClient, contents: list[str]) -> list[int]:
    """Which contents hold special-token text: first all of them at once (two tokenizations
    of the whole content, on a worker thread when long; an occurrence inside one content is
    found in the joined text too), then one by one only if any does."""
    if not await _has_special_text(engine, "\n".join(contents)):
        return []
    return [i for i, text in enumerate(contents) if await _has_special_text(engine, text)]


async def _has_special_text(engine: EngineClient, text: str) -> bool:
    if not text.strip():
        return False
    parsed = await engine.tokenize(text, add_special=False, parse_special=True)
    return parsed != await engine.tokenize(text, add_special=False, parse_special=False)


async def _render(render: Render, marks: ContentMarks, renders: RenderSlots | None) -> str:
    return render(marks) if renders is None else await renders.run(render, marks)
