"""Ollama wire models. Unknown fields and options are accepted and ignored, as Ollama does."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictStr

from inferd.api.wire import FiniteFloat, TokenId, WholeInt

# "5m", "1h30m", "300ms", "-1", or a number of seconds
KeepAlive = StrictStr | WholeInt | StrictFloat | None


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class Options(_Wire):
    num_predict: WholeInt | None = None  # above the room left: capped to it
    temperature: Annotated[FiniteFloat, Field(ge=0.0, le=2.0)] | None = None
    top_k: Annotated[WholeInt, Field(ge=0)] | None = None
    top_p: Annotated[FiniteFloat, Field(gt=0.0, le=1.0)] | None = None
    min_p: Annotated[FiniteFloat, Field(ge=0.0, le=1.0)] | None = None
    repeat_penalty: Annotated[FiniteFloat, Field(gt=0.0, le=10.0)] | None = None
    repeat_last_n: Annotated[WholeInt, Field(ge=-1)] | None = None
    presence_penalty: Annotated[FiniteFloat, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[FiniteFloat, Field(ge=-2.0, le=2.0)] | None = None
    seed: WholeInt | None = None
    stop: list[StrictStr] | None = None
    # above the model's context: cut to it (Go's int holds at most 2**63 - 1)
    num_ctx: Annotated[WholeInt, Field(ge=1, le=2**63 - 1)] | None = None


class ToolCallFunction(_Wire):
    name: StrictStr
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(_Wire):
    function: ToolCallFunction


class Message(_Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr = ""
    images: list[Any] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls
    tool_name: StrictStr | None = None  # a tool result's function


class _Common(_Wire):
    model: StrictStr
    stream: StrictBool = True
    format: Any = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    # platform-client aliases for the common options
    max_tokens: Annotated[WholeInt, Field(ge=1)] | None = None
    temperature: Annotated[FiniteFloat, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[FiniteFloat, Field(gt=0.0, le=1.0)] | None = None
    logprobs: StrictBool = False
    top_logprobs: WholeInt | None = None
    # true, false, or an effort ("high", "medium", "low"): show a thinking model's reasoning
    think: StrictBool | Literal["high", "medium", "low"] | None = None


class GenerateRequest(_Common):
    prompt: StrictStr = ""
    suffix: StrictStr | None = None
    system: StrictStr | None = None
    template: StrictStr | None = None
    raw: StrictBool = False
    images: list[Any] | None = None
    context: list[TokenId] | None = None


class ChatRequest(_Common):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Any] | None = None


class EmbedRequest(_Wire):
    model: StrictStr
    input: StrictStr | list[StrictStr] | None = None
    truncate: StrictBool = True
    options: Options | None = None
    keep_alive: KeepAlive = None
    dimensions: WholeInt | None = None


class EmbeddingsRequest(_Wire):
    """The legacy /api/embeddings."""

    model: StrictStr
    prompt: StrictStr = ""
    options: Options | None = None
    keep_alive: KeepAlive = None


class EmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


class EmbeddingsResponse(BaseModel):
    embedding: list[float]


class ShowRequest(_Wire):
    model: StrictStr | None = None
    name: StrictStr | None = None  # older clients
    verbose: StrictBool = False


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: str = "gguf"
    family: str = ""
    families: list[str] = Field(default_factory=list)
    parameter_size: str = ""
    quantization_level: str = ""


class TagModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class Tags(BaseModel):
    models: list[TagModel]


class LoadStep(BaseModel):
    phase: str  # converting, quantizing, loading
    fraction: float  # of that phase, 0..1


class RunningModel(BaseModel):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str | None  # None while it is converted or loaded
    size_vram: int = 0
    context_length: int | None  # None until loaded
    # inferd's own, which Ollama clients ignore: ready, or loading / converting (with how far)
    status: str = "ready"
    progress: LoadStep | None = None


class Running(BaseModel):
    models: list[RunningModel]


class ShowResponse(BaseModel):
    modelfile: str
    parameters: str
    template: str
    system: str | None = None
    license: str | None = None
    messages: list[dict[str, str]] | None = None
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class CopyRequest(_Wire):
    source: Annotated[StrictStr, Field(min_length=1)]
    destination: Annotated[StrictStr, Field(min_length=1)]


class DeleteRequest(_Wire):
    model: StrictStr | None = None
    name: StrictStr | None = None  # older clients


class PullRequest(_Wire):
    model: StrictStr | None = None
    name: StrictStr | None = None  # older clients
    stream: StrictBool = True
    insecure: StrictBool | None = None


class CreateRequest(_Wire):
    model: StrictStr | None = None
    name: StrictStr | None = None  # older clients
    stream: StrictBool = True
    from_: StrictStr | None = Field(None, alias="from")
    files: dict[StrictStr, StrictStr] | None = None
    quantize: StrictStr | None = None
    template: StrictStr | None = None
    system: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    license: StrictStr | list[StrictStr] | None = None
    modelfile: StrictStr | None = None  # older clients send the Modelfile's text
    adapters: dict[StrictStr, StrictStr] | None = None
