"""Reasoning output: a model that thinks in a `<think>...</think>` section before it answers.

Whether a model thinks is decided here, once: its `thinking` setting, else whether its chat
template writes the `<think>` tag. For such a model the pipeline splits every choice's text
into reasoning (inside the section) and content (after it); the dialects show the reasoning
as OpenAI's `reasoning_content`, the Responses API's reasoning item or Ollama's
`message.thinking`. A prompt that ends inside the section (a template that opens `<think>`
for the model) starts the answer in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferd.errors import UnsupportedParameter
from inferd.models.registry import LoadedModel

OPEN = "<think>"
CLOSE = "</think>"


def thinks(model: LoadedModel) -> bool:
    """Whether `model` writes a reasoning section: its settings say, else its template."""
    setting = model.spec.config.thinking
    if setting is not None:
        return setting
    return OPEN in model.template.source


def check_think(model: LoadedModel, think: bool | None, *, param: str = "think") -> bool:
    """Whether this request's answer is split into reasoning and content: a thinking model
    unless the request turns it off; asking a model that does not think is a 400 (in
    Ollama's words)."""
    if think and not thinks(model):
        raise UnsupportedParameter(f'"{model.name}" does not support thinking', param=param)
    return think is not False and thinks(model)


def _partial(text: str, tag: str) -> int:
    """Length of the longest end of `text` that starts `tag` (held back in a stream)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


@dataclass(slots=True)
class Split:
    reasoning: str = ""
    content: str = ""


class ReasoningSplitter:
    """Splits one choice's text, delta by delta, into reasoning and content. Before
    anything is known the text may still open the section (leading whitespace, then
    `<think>`); a tag cut between deltas is held back until it is whole."""

    __slots__ = ("_held", "_state")

    def __init__(self, *, inside: bool = False) -> None:
        # "start": the section may still open; "think": inside it; "content": after it
        self._state = "think" if inside else "start"
        self._held = ""

    def feed(self, text: str) -> Split:
        text = self._held + text
        self._held = ""
        out = Split()
        while text:
            if self._state == "start":
                stripped = text.lstrip()
                if stripped.startswith(OPEN):
                    self._state, text = "think", stripped[len(OPEN) :]
                elif OPEN.startswith(stripped):  # maybe the tag, not yet whole
                    self._held = text
                    return out
                else:
                    self._state = "content"
            elif self._state == "think":
                end = text.find(CLOSE)
                if end >= 0:
                    out.reasoning += text[:end]
                    self._state, text = "after", text[end + len(CLOSE) :]
                    continue
                keep = _partial(text, CLOSE)
                out.reasoning += text[: len(text) - keep]
                self._held = text[len(text) - keep :]
                return out
            elif self._state == "after":  # the answer starts after the blank after the tag
                text = text.lstrip()
                if text:
                    self._state = "content"
            else:
                out.content += text
                return out
        return out

    def flush(self) -> Split:
        """The end of the text: whatever was held back, where it was."""
        held, self._held = self._held, ""
        if self._state == "think":
            return Split(reasoning=held)
        return Split(content=held if self._state != "after" else "")


def opens_section(prompt_text: str) -> bool:
    """Whether a prompt leaves the model inside a reasoning section (a template that
    writes `<think>` for it)."""
    return prompt_text.rstrip().endswith(OPEN)
