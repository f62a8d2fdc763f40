"""The prompt text of an /api/generate request with a `template` of its own.

Ollama's `template` is a Go text/template run on the values Ollama gives it; inferd runs it
the same way (`models.go_template`). `/api/show` returns a model's Jinja chat template, and
tools send that back: a template holding `{%` is taken as Jinja and rendered by the sandboxed
chat-template machinery, with the request's system and user messages.
"""

from __future__ import annotations

from typing import Any

from inferd.api.ollama import schemas as s
from inferd.errors import InvalidRequest, UnsupportedParameter
from inferd.models.chat_template import ChatTemplate
from inferd.models.go_template import MAX_TEMPLATE_CHARS, GoTemplate, Struct, TemplateError

_MESSAGE_JSON = {
    "Role": "role",
    "Content": "content",
    "Thinking": "thinking",
    "Images": "images",
    "ToolCalls": "tool_calls",
    "ToolName": "tool_name",
}
_MESSAGE_OPTIONAL = frozenset({"Thinking", "Images", "ToolCalls", "ToolName"})


def generate_messages(req: s.GenerateRequest) -> list[dict[str, Any]]:
    """/api/generate's system and prompt as chat messages."""
    messages = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    messages.append({"role": "user", "content": req.prompt})
    return messages


def is_jinja(source: str) -> bool:
    """Go templates have no `{%`; every Jinja chat template has one."""
    return "{%" in source


def message(role: str, content: str) -> Struct:
    """An Ollama api.Message as a Go template sees it."""
    return Struct(
        "api.Message",
        {"Role": role, "Content": content, "Thinking": "", "Images": [], "ToolCalls": []}
        | {"ToolName": ""},
        _MESSAGE_JSON,
        _MESSAGE_OPTIONAL,
    )


def go_values(template: GoTemplate, req: s.GenerateRequest) -> tuple[GoTemplate, dict[str, Any]]:
    """The template to run and its values, chosen as Ollama's `Template.Execute` does: a
    suffix gives Prompt and Suffix; a template reading .Messages gets the messages (and
    System, Tools); any other is a legacy template, rendered with System and Prompt and cut
    after its {{ .Response }}, so that the prompt ends where the answer begins."""
    think = {"Think": False, "IsThinkSet": False}
    if req.suffix:
        return template, {"Prompt": req.prompt, "Suffix": req.suffix, "Response": ""} | think
    names = template.identifiers()
    if "messages" in names:
        msgs = [message(m["role"], m["content"]) for m in generate_messages(req)]
        return template, {
            "System": req.system or "",
            "Messages": msgs,
            "Tools": [],
            "Response": "",
        } | think
    values = {"System": req.system or "", "Prompt": req.prompt, "Response": ""} | think
    return template.cut_after("Response"), values


def render(req: s.GenerateRequest, *, bos_token: str, eos_token: str) -> str:
    """The prompt text from the request's own `template` (400s name `template`, or
    `suffix` when the template has no place for one)."""
    source = req.template or ""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the template is longer than {MAX_TEMPLATE_CHARS} characters")
    if is_jinja(source):
        if req.suffix:
            raise UnsupportedParameter(
                "a Jinja template has no place for a suffix: use a Go template with "
                "{{ .Suffix }}, or no template",
                param="suffix",
            )
        try:
            return ChatTemplate(source, bos_token=bos_token, eos_token=eos_token).render(
                generate_messages(req)
            )
        except InvalidRequest as exc:
            raise InvalidRequest(exc.message, param="template") from None
    template = GoTemplate.parse(source)
    if req.suffix and "suffix" not in template.identifiers():
        raise UnsupportedParameter(
            "suffix needs a template that uses .Suffix, and this template does not",
            param="suffix",
        )
    template, values = go_values(template, req)
    return template.render(values)


def render_chat(
    source: str, messages: list[dict[str, Any]], *, bos_token: str, eos_token: str
) -> str:
    """A conversation's prompt by a model's template from /api/create: Jinja as a chat
    template; Go with .Messages (and .System), or a legacy Go template (.System, .Prompt)
    with the last user message as the prompt."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the template is longer than {MAX_TEMPLATE_CHARS} characters")
    if is_jinja(source):
        return ChatTemplate(source, bos_token=bos_token, eos_token=eos_token).render(messages)
    template = GoTemplate.parse(source)
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    values: dict[str, Any] = {"System": system, "Response": "", "Think": False}
    values["IsThinkSet"] = False
    if "messages" in template.identifiers():
        msgs = [message(m["role"], m["content"]) for m in messages]
        return template.render({**values, "Messages": msgs, "Tools": []})
    values["Prompt"] = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return template.cut_after("Response").render(values)
