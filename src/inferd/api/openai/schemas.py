"""OpenAI wire models. Strict types: a string where a number belongs is a 400, not a guess."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from inferd.api.sessions import SessionId
from inferd.api.wire import FiniteFloat, TokenId, WholeInt

PositiveInt = Annotated[WholeInt, Field(ge=1)]
# OpenAI's reasoning efforts (chat's `reasoning_effort`, Responses' `reasoning.effort`)
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class _Wire(BaseModel):
    # Unknown fields are accepted and ignored (the adapter logs them at debug level).
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class StreamOptions(_Wire):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Wire):
    name: StrictStr | None = None
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class TextPart(_Wire):
    type: Literal["text"]
    text: StrictStr


def text_parts_only(*types: str) -> Any:
    """What the document says of a content part: only text is served. The model itself
    takes any type so that an image part is refused by name, not by a union's error list."""

    def shape(schema: dict[str, Any]) -> None:
        schema["properties"]["type"] = {"type": "string", "enum": list(types)}
        schema["properties"]["text"] = {"type": "string"}
        schema["required"] = ["type", "text"]

    return shape


class ContentPart(_Wire):
    model_config = ConfigDict(json_schema_extra=text_parts_only("text"))

    type: StrictStr
    text: StrictStr | None = None


class FunctionCall(_Wire):
    name: StrictStr
    arguments: StrictStr = ""  # JSON text, as the model wrote it


class MessageToolCall(_Wire):
    id: StrictStr = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Wire):
    # content may be null or left out only in an assistant message (one that called tools)
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"role": {"not": {"const": "assistant"}}}},
            "then": {
                "required": ["content"],
                "properties": {"content": {"not": {"type": "null"}}},
            },
        }
    )

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant's calls
    tool_call_id: StrictStr | None = None  # a tool result's call
    function_call: FunctionCall | None = None  # legacy: an assistant's call


class SamplingFields(_Wire):
    """Parameters shared by chat and text completions."""

    model: StrictStr | None = None
    max_tokens: PositiveInt | None = None
    temperature: Annotated[FiniteFloat, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[FiniteFloat, Field(gt=0.0, le=1.0)] | None = None
    n: PositiveInt = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    presence_penalty: Annotated[FiniteFloat, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[FiniteFloat, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: dict[str, Annotated[FiniteFloat, Field(ge=-100.0, le=100.0)]] | None = None
    seed: WholeInt | None = None
    user: StrictStr | None = None
    # extensions, as llama.cpp and vLLM accept them
    top_k: Annotated[WholeInt, Field(ge=0)] | None = None
    min_p: Annotated[FiniteFloat, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[FiniteFloat, Field(gt=0.0, le=10.0)] | None = None
    ignore_eos: StrictBool = False


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: StrictBool | None = None
    top_logprobs: WholeInt | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None
    functions: list[Any] | None = None  # legacy tools
    function_call: Any = None  # legacy tool_choice
    response_format: ResponseFormat | None = None
    # extensions: store the exchange under a session; prepend the stored conversation
    session_id: SessionId | None = None
    session_history: StrictBool = False
    # vLLM's and llama-server's: more variables for the chat template (scalars)
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: StrictBool | None = None
    reasoning_effort: ReasoningEffort | None = None


class CompletionRequest(SamplingFields):
    max_tokens: Annotated[WholeInt, Field(ge=0)] | None = None  # 0: with echo only
    prompt: (
        StrictStr
        | Annotated[list[StrictStr], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    )
    echo: StrictBool = False
    suffix: StrictStr | None = None
    best_of: WholeInt | None = None
    logprobs: Annotated[WholeInt, Field(ge=0)] | None = None


class EmbeddingRequest(_Wire):
    model: StrictStr | None = None
    input: StrictStr | list[StrictStr] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: WholeInt | None = None
    user: StrictStr | None = None


# ---- responses (documented in the OpenAPI schema) ---------------------------------------


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class Timings(BaseModel):
    """inferd's extension: where the time of a request went (non-streaming responses)."""

    queue_s: float | None = None
    time_to_first_token_s: float | None = None
    decode_tokens_per_s: float | None = None
    # speculative decoding (a model with `speculative` on): draft tokens verified, accepted
    draft_tokens: int | None = None
    draft_accepted: int | None = None


class ToolCallFunction(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    # when the model calls tools (function_call: for a request with legacy functions)
    tool_calls: list[ToolCall] | None = None
    function_call: ToolCallFunction | None = None
    reasoning_content: str | None = None  # a thinking model's reasoning section


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    timings: Timings | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    timings: Timings | None = None


class LoadStep(BaseModel):
    phase: str  # converting, quantizing, loading
    fraction: float  # of that phase, 0..1


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "inferd"
    aliases: list[str] = Field(default_factory=list)
    context_length: int | None = None
    # inferd's own: ready, loading, converting, unloaded, failed; how far a load is
    status: str = "ready"
    progress: LoadStep | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
