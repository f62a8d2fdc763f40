"""OpenAI's Responses API (`POST /v1/responses`, `GET /v1/responses/{id}`): its wire models
and their translation to and from the pipeline.

A request becomes one chat `Generation` (instructions as the system message, then the
history of `previous_response_id`, then the input items); the answer is a `message` output
item, after a `reasoning` item when the model thinks (api/pipeline/reasoning.py). With
`store` (the default) each response is kept in the conversation store as a session of its
own, `resp_<request id>`, in the key's namespace: its input messages (the history included,
not the instructions, which OpenAI does not carry over either) and its answer. That is what
`previous_response_id` continues and what GET returns.

Function tools (Responses' flat `{"type": "function", "name", "description", "parameters"}`)
go through the pipeline's tool calling (api/pipeline/tools.py); `function_call` and
`function_call_output` input items become the history's assistant calls and tool results,
and the answer's calls come back as `function_call` output items.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from inferd.api.openai.schemas import ReasoningEffort, text_parts_only
from inferd.api.pipeline.request import ChatPrompt, Generation, Options, Param
from inferd.api.pipeline.run import ChoiceResult, Run
from inferd.api.pipeline.template_vars import template_variables
from inferd.api.pipeline.tools import ToolCall, ToolOutput, tool_request
from inferd.api.record import RequestRecord
from inferd.api.sessions import SESSION_PATTERN, Exchange, session_of
from inferd.api.structured import JSON_OBJECT, TEXT, OutputFormat, schema_format
from inferd.api.wire import FiniteFloat, WholeInt
from inferd.engine.types import FinishReason, GenerationOutput, Usage
from inferd.errors import InvalidRequest, StoreUnavailable, UnsupportedParameter
from inferd.storage.records import MessageRecord
from inferd.storage.store import Store

PREFIX = "resp_"
SESSION_ID = re.compile(SESSION_PATTERN)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class InputContent(_Wire):
    model_config = ConfigDict(
        json_schema_extra=text_parts_only("input_text", "output_text", "text")
    )

    type: StrictStr
    text: StrictStr | None = None


class InputItem(_Wire):
    type: StrictStr = "message"
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: StrictStr | list[InputContent] | None = None
    # function_call and function_call_output items
    call_id: StrictStr | None = None
    name: StrictStr | None = None
    arguments: StrictStr | None = None
    output: StrictStr | None = None


class TextFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    name: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class TextConfig(_Wire):
    format: TextFormat | None = None


class ReasoningConfig(_Wire):
    effort: ReasoningEffort | None = None  # `summary` is accepted: the reasoning comes whole


class ResponsesRequest(_Wire):
    model: StrictStr | None = None
    input: StrictStr | list[InputItem]
    instructions: StrictStr | None = None
    max_output_tokens: Annotated[WholeInt, Field(ge=1)] | None = None
    temperature: Annotated[FiniteFloat, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[FiniteFloat, Field(gt=0.0, le=1.0)] | None = None
    stream: StrictBool = False
    store: StrictBool = True
    previous_response_id: StrictStr | None = None
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None
    metadata: dict[str, StrictStr] | None = None
    user: StrictStr | None = None
    # variables for the chat template, as in chat completions (vLLM's, llama-server's)
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: StrictBool | None = None
    reasoning: ReasoningConfig | None = None


# ---- to the pipeline ------------------------------------------------------------------------


def input_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The input as chat messages: a string is one user message; message items keep their
    role (developer as system) and their text parts; reasoning items are dropped."""
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    out: list[dict[str, Any]] = []
    called: dict[str, str] = {}  # call id -> function name
    for i, item in enumerate(req.input):
        if item.type == "reasoning":
            continue
        if item.type in ("function_call", "function_call_output"):
            message = _tool_item(item, f"input[{i}]", out, called)
            if message:
                out.append(message)
            continue
        if item.type != "message":
            raise UnsupportedParameter(
                f"input items of type {item.type!r} are not supported", param=f"input[{i}]"
            )
        if item.role is None:
            raise InvalidRequest("a message item needs a role", param=f"input[{i}].role")
        content = item.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type not in ("input_text", "output_text", "text") or part.text is None:
                    raise UnsupportedParameter(
                        f"content parts of type {part.type!r} are not supported",
                        param=f"input[{i}].content[{j}]",
                    )
                texts.append(part.text)
            content = "".join(texts)
        role = "system" if item.role == "developer" else item.role
        out.append({"role": role, "content": content or ""})
    if not out:
        raise InvalidRequest("input has no messages", param="input")
    return out


def _tool_item(
    item: InputItem, param: str, out: list[dict[str, Any]], called: dict[str, str]
) -> dict[str, Any]:
    """A function call as the history's assistant call (joined to the assistant message
    just before it: returns {} then), or a call's output as a tool result."""
    if item.call_id is None:
        raise InvalidRequest(f"a {item.type} item needs a call_id", param=f"{param}.call_id")
    if item.type == "function_call_output":
        result = {"role": "tool", "content": item.output or "", "tool_call_id": item.call_id}
        if item.call_id in called:
            result["name"] = called[item.call_id]
        return result
    if item.name is None:
        raise InvalidRequest("a function_call item needs a name", param=f"{param}.name")
    try:
        arguments: Any = json.loads(item.arguments or "{}")
    except json.JSONDecodeError:
        arguments = item.arguments
    called[item.call_id] = item.name
    call = {
        "id": item.call_id,
        "type": "function",
        "function": {"name": item.name, "arguments": arguments},
    }
    last = out[-1] if out else None
    if last and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        return {}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def output_format(req: ResponsesRequest) -> OutputFormat:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return TEXT
    if fmt.type == "json_object":
        return JSON_OBJECT
    if fmt.schema_ is None:
        raise InvalidRequest("text.format of type json_schema needs a schema", param=SCHEMA)
    return schema_format(fmt.schema_, param=SCHEMA)


SCHEMA = "text.format.schema"


def history(records: list[MessageRecord]) -> list[dict[str, Any]]:
    return [{"role": m.role, "content": m.content} for m in records]


def generation(req: ResponsesRequest, earlier: list[dict[str, Any]]) -> Generation:
    """The request as the pipeline's, after the `earlier` messages of the response it
    continues."""
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
    return Generation(
        model=req.model,
        prompts=[
            ChatPrompt(
                [*system, *earlier, *input_messages(req)],
                variables=template_variables(
                    req.chat_template_kwargs,
                    enable_thinking=req.enable_thinking,
                    reasoning_effort=_effort(req),
                ),
            )
        ],
        prompt_param="input",
        options=Options(
            max_tokens=None
            if req.max_output_tokens is None
            else Param(req.max_output_tokens, "max_output_tokens"),
            temperature=req.temperature,
            top_p=req.top_p,
        ),
        output=output_format(req),
        output_param=SCHEMA,
        tools=tool_request(req.tools, req.tool_choice, req.parallel_tool_calls),
    )


def _effort(req: ResponsesRequest) -> ReasoningEffort | None:
    return None if req.reasoning is None else req.reasoning.effort


def stored_inputs(req: ResponsesRequest, earlier: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a stored response keeps before its answer: the history and the input."""
    return [*earlier, *input_messages(req)]


# ---- from the pipeline ----------------------------------------------------------------------


def response_id(request_id: str) -> str:
    return f"{PREFIX}{request_id}"


def _message(rid: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{rid}",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        if status == "completed"
        else [],
    }


def _reasoning(rid: str, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": f"rs_{rid}",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": "completed",
    }


def _call(call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{call.id}",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments_json if status == "completed" else "",
        "status": status,
    }


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def response_object(
    rid: str,
    model: str,
    req: ResponsesRequest | None,
    *,
    created: int,
    output: list[dict[str, Any]],
    status: str = "completed",
    usage: Usage | None = None,
) -> dict[str, Any]:
    """A `response` object (`req` None: one read back from the store)."""
    fmt: dict[str, Any] = {"type": "text"}
    if req is not None and req.text is not None and req.text.format is not None:
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True)
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions if req is not None else None,
        "max_output_tokens": req.max_output_tokens if req is not None else None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": req.previous_response_id if req is not None else None,
        "reasoning": {"effort": _effort(req) if req is not None else None, "summary": None},
        "store": req.store if req is not None else True,
        "temperature": req.temperature if req is not None else None,
        "text": {"format": fmt},
        "tool_choice": (req.tool_choice if req is not None else None) or "auto",
        "tools": (req.tools if req is not None else None) or [],
        "top_p": req.top_p if req is not None else None,
        "truncation": "disabled",
        "usage": None if usage is None else _usage(usage),
        "user": req.user if req is not None else None,
        "metadata": (req.metadata or {}) if req is not None else {},
    }


def _status(reason: FinishReason | None) -> str:
    return "incomplete" if reason is FinishReason.LENGTH else "completed"


def _output(rid: str, reasoning: str, answer: ToolOutput, thinking: bool) -> list[dict[str, Any]]:
    """Output items: the reasoning (a thinking model), the message (unless the answer is
    calls alone), the calls."""
    items = [_reasoning(rid, reasoning)] if thinking and reasoning else []
    if answer.content.strip() or not answer.calls:
        items.append(_message(rid, answer.content))
    return [*items, *(_call(c) for c in answer.calls)]


def response(rid: str, run: Run, req: ResponsesRequest, result: ChoiceResult) -> dict[str, Any]:
    return response_object(
        rid,
        run.model.name,
        req,
        created=int(time.time()),
        output=_output(rid, result.reasoning, run.answer(result), run.splitters is not None),
        status=_status(result.finish_reason),
        usage=run.usage,
    )


def stored_response(rid: str, records: list[MessageRecord]) -> dict[str, Any] | None:
    """A stored response read back as it was sent (None: no such response, or not a
    whole one). One stored before responses were kept whole is its message alone."""
    if not records or records[-1].role != "assistant":
        return None
    answer = records[-1]
    if answer.response is not None:
        kept: dict[str, Any] = json.loads(answer.response)
        return kept
    created = int(answer.created_at.replace(tzinfo=answer.created_at.tzinfo or UTC).timestamp())
    return response_object(
        rid, answer.model or "", None, created=created, output=[_message(rid, answer.content)]
    )


class _Events:
    """Numbers the events of one stream."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.n += 1
        return {"type": kind, "sequence_number": self.n - 1, **fields}


async def events(
    rid: str, run: Run, req: ResponsesRequest, result: ChoiceResult
) -> AsyncIterator[list[dict[str, Any]]]:
    """The stream's events as the openai SDK reads them: response.created, .in_progress,
    the reasoning item (a thinking model), the message item with its output_text part and
    deltas, the function_call items (a request with tools), then response.completed (or
    .incomplete at the token limit); a list of them per batch of the engine's outputs.
    `result` collects the answer for the store."""
    event = _Events()
    created = int(time.time())
    name = run.model.name
    done: list[dict[str, Any]] = []  # finished output items
    msg_id, rs_id = f"msg_{rid}", f"rs_{rid}"
    sent = ""  # the message's text
    reasoning_open = message_open = False

    def snapshot(status: str, usage: Usage | None = None) -> Any:
        return response_object(
            rid, name, req, created=created, output=list(done), status=status, usage=usage
        )

    def close_reasoning() -> list[dict[str, Any]]:
        item = _reasoning(rid, result.reasoning)
        done.append(item)
        at = len(done) - 1
        return [
            event(
                "response.reasoning_text.done",
                item_id=rs_id,
                output_index=at,
                content_index=0,
                text=result.reasoning,
            ),
            event("response.output_item.done", output_index=at, item=item),
        ]

    def open_message() -> list[dict[str, Any]]:
        at = len(done)
        return [
            event(
                "response.output_item.added",
                output_index=at,
                item=_message(rid, "", status="in_progress"),
            ),
            event(
                "response.content_part.added",
                item_id=msg_id,
                output_index=at,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def text_delta(text: str) -> list[dict[str, Any]]:
        nonlocal message_open, reasoning_open, sent
        opening = []
        if not message_open:
            message_open = True
            if reasoning_open:
                reasoning_open = False
                opening += close_reasoning()
            opening += open_message()
        sent += text
        delta = event(
            "response.output_text.delta",
            item_id=msg_id,
            output_index=len(done),
            content_index=0,
            delta=text,
            logprobs=[],
        )
        return [*opening, delta]

    tools = run.tools.stream() if run.tools is not None else None
    calls: list[ToolCall] = []

    def of_output(out: GenerationOutput) -> Iterator[dict[str, Any]]:
        nonlocal reasoning_open, calls
        part = run.split(0, out)
        if part.reasoning:
            if not reasoning_open:
                reasoning_open = True
                item = {**_reasoning(rid, ""), "status": "in_progress", "content": []}
                yield event("response.output_item.added", output_index=len(done), item=item)
            result.reasoning += part.reasoning
            yield event(
                "response.reasoning_text.delta",
                item_id=rs_id,
                output_index=len(done),
                content_index=0,
                delta=part.reasoning,
            )
        result.text += part.content
        text = part.content if tools is None else tools.feed(part.content)
        if out.finish_reason is not None:
            result.finish_reason = out.finish_reason
            if tools is not None:
                tail = tools.finish(truncated=out.finish_reason is FinishReason.LENGTH)
                text += tail.content
                calls = tail.calls
        if text:
            yield from text_delta(text)

    def ending() -> Iterator[dict[str, Any]]:
        nonlocal message_open
        if reasoning_open:
            yield from close_reasoning()
        if not message_open and not calls:  # an empty answer is an empty message
            message_open = True
            yield from open_message()
        if message_open:
            at = len(done)
            message = _message(rid, sent)
            done.append(message)
            part_done = message["content"][0]
            yield event(
                "response.output_text.done",
                item_id=msg_id,
                output_index=at,
                content_index=0,
                text=sent,
                logprobs=[],
            )
            yield event(
                "response.content_part.done",
                item_id=msg_id,
                output_index=at,
                content_index=0,
                part=part_done,
            )
            yield event("response.output_item.done", output_index=at, item=message)
        for call in calls:
            at = len(done)
            item = _call(call)
            yield event(
                "response.output_item.added", output_index=at, item=_call(call, "in_progress")
            )
            yield event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=at,
                delta=item["arguments"],
            )
            yield event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=at,
                name=call.name,
                arguments=item["arguments"],
            )
            done.append(item)
            yield event("response.output_item.done", output_index=at, item=item)
        status = _status(result.finish_reason)
        yield event(f"response.{status}", response=snapshot(status, run.usage))

    yield [
        event("response.created", response=snapshot("in_progress")),
        event("response.in_progress", response=snapshot("in_progress")),
    ]
    async for batch in run.stream():
        yield [e for _, out in batch for e in of_output(out)]
    yield list(ending())


# ---- the store ------------------------------------------------------------------------------


def stored_id(response: str) -> str:
    """A response id as the session it is stored under; a 404 for what cannot be one."""
    if not (response.startswith(PREFIX) and SESSION_ID.fullmatch(response)):
        raise HTTPException(404, f"Response with id '{response[:140]}' not found.")
    return response


async def earlier_messages(store: Store | None, request: Request, response: str) -> list[Any]:
    """The conversation a `previous_response_id` ended with: its inputs and its answer."""
    if store is None:
        raise StoreUnavailable(
            "previous_response_id needs the conversation store", param="previous_response_id"
        )
    records = await store.conversation(session_of(stored_id(response), request) or response)
    if stored_response(response, records) is None:
        raise InvalidRequest(
            f"Previous response with id '{response}' not found.", param="previous_response_id"
        )
    return history(records)


def keep(
    store: Store | None,
    request: Request,
    record: RequestRecord,
    inputs: list[dict[str, Any]],
    result: ChoiceResult,
    sent: dict[str, Any],
) -> None:
    """Store a finished response under its own id: its inputs, its answer (the history of
    a later `previous_response_id`) and the response object `sent` (what GET returns)."""
    if store is None or result.finish_reason not in (FinishReason.STOP, FinishReason.LENGTH):
        return
    rid = response_id(record.request_id)
    session = session_of(rid, request) or rid
    text = json.dumps(sent, ensure_ascii=False, separators=(",", ":"))
    Exchange(store, session, record.request_id, record.started_at, inputs).remember(
        result.text, sent["model"], text
    )
