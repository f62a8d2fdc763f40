"""Native wire models, shaped for the home-grown servers inferd replaces."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictBool, StrictStr

from inferd.api.sessions import SessionId
from inferd.api.wire import FiniteFloat, TokenId, WholeInt


class _Params(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: StrictStr | None = None
    max_tokens: Annotated[WholeInt, Field(ge=1)] | None = Field(
        None, validation_alias=AliasChoices("max_tokens", "max_new_tokens")
    )
    temperature: Annotated[FiniteFloat, Field(ge=0.0, le=2.0)] | None = None
    top_k: Annotated[WholeInt, Field(ge=0)] | None = None
    top_p: Annotated[FiniteFloat, Field(gt=0.0, le=1.0)] | None = None
    min_p: Annotated[FiniteFloat, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[FiniteFloat, Field(gt=0.0, le=10.0)] | None = Field(
        None, validation_alias=AliasChoices("repetition_penalty", "word_repetition_penalty")
    )
    stop: StrictStr | list[StrictStr] | None = None
    seed: WholeInt | None = None
    # variables for the chat template (vLLM's and llama-server's): a chat, or a prompt that
    # goes through the template
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: StrictBool | None = None


class GenerateBody(_Params):
    prompt: Annotated[StrictStr, Field(min_length=1)]
    # false: the prompt is a user message in the model's chat template (with `system`);
    # true: the text as it is. Default: true, except on /api/generate/stream
    raw: StrictBool | None = None
    system: StrictStr | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr


class ChatBody(_Params):
    messages: Annotated[list[Message], Field(min_length=1)]
    # store the exchange under a session; prepend the stored conversation
    session_id: SessionId | None = None
    session_history: StrictBool = False


class GenerationResult(BaseModel):
    """The answer of /generate and /chat, and the final event of their streams."""

    text: str
    generated_text: str
    prompt: str | None = None
    model: str
    model_used: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    tokens_generated: int
    generation_time: float
    time_to_first_token: float | None
    tokens_per_second: float
    parameters: dict[str, Any]


class LoadProgress(BaseModel):
    phase: str  # converting, then quantizing (a checkpoint for llama.cpp); loading (transformers)
    fraction: float  # of that phase, 0..1


class ModelInfo(BaseModel):
    name: str
    aliases: list[str]
    status: str
    loaded: bool
    path: str
    size: int
    error: str | None = None
    progress: LoadProgress | None = None  # while converting or loading, where known
    config: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    models: list[ModelInfo]
    default: str


class LoadAccepted(BaseModel):
    name: str
    status: str


# ---- the tokenizer: llama-server's and vLLM's shapes, both accepted -------------------------


# ids one /tokenize or /detokenize request holds: longer than any model's context, and a
# bound on the pieces, text and JSON built for it
MAX_TOKENIZER_IDS = 1 << 18


class TokenizeBody(BaseModel):
    # the text is `content` or `prompt`, exactly one of them
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"oneOf": [{"required": ["content"]}, {"required": ["prompt"]}]},
    )

    model: StrictStr | None = None
    content: StrictStr | None = None  # llama-server's name
    prompt: StrictStr | None = None  # vLLM's name
    # add the model's BOS/EOS as it does for a prompt; default: llama-server's (false)
    # with `content`, vLLM's (true) with `prompt`
    add_special: StrictBool | None = Field(
        None, validation_alias=AliasChoices("add_special", "add_special_tokens")
    )
    # special-token text (`<|im_end|>`) as its one special token, else as plain text
    parse_special: StrictBool = True
    with_pieces: StrictBool = False  # llama-server: each token as {"id", "piece"}
    return_token_strs: StrictBool = False  # vLLM: each token's text in `token_strs`


class TokenPiece(BaseModel):
    id: int
    piece: str | list[int]  # its text, or its bytes when they are not whole UTF-8


class TokenizeResult(BaseModel):
    tokens: list[int] | list[TokenPiece]
    count: int
    max_model_len: int  # the context one sequence may use
    token_strs: list[str] | None = None


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    tokens: list[TokenId] = Field(max_length=MAX_TOKENIZER_IDS)


class DetokenizeResult(BaseModel):
    content: str  # llama-server's name
    prompt: str  # vLLM's name


class TokenizerInfo(BaseModel):
    """vLLM's /tokenizer_info, which lm-evaluation-harness's remote tokenizer reads."""

    model: str
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None = None
    add_bos_token: bool
    vocab_size: int
    model_max_length: int
    chat_template: str
