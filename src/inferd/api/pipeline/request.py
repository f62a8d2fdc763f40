"""The one generation request every dialect's adapter translates its wire format into.

Values that a limit or the model may refuse carry the wire name of their parameter
(`Param`), so that the pipeline's 400s name what the client sent: `max_tokens`,
`options.num_predict`, `stop`, `options.stop`...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from inferd.api.structured import TEXT, OutputFormat

if TYPE_CHECKING:
    from inferd.api.pipeline.tools import ToolRequest

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Param(Generic[T]):
    """A value as the client sent it, with the name of its parameter on the wire."""

    value: T
    name: str


# ---- prompts: what is rendered and tokenized ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """Messages (`role`, `content`) for the model's chat template, and the tools for its
    `tools` variable (set by the pipeline, see tools.py)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    # True (Ollama's /api/chat): a conversation longer than the context loses its oldest
    # messages but the system ones and the last; False: it is a 400
    trim_history: bool = False
    # more variables for the template (checked scalars, pipeline/template_vars.py):
    # chat_template_kwargs, enable_thinking
    variables: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TextPrompt:
    """Text, tokenized as it is (special-token text parsed)."""

    text: str


# A request's own template: (mark, BOS text, EOS text) -> the prompt, where every content
# string it renders (prompt, system, messages, suffix) has passed through `mark`.
RenderTemplate = Callable[[Callable[[str], str], str, str], str]


@dataclass(frozen=True, slots=True)
class TemplatePrompt:
    """A prompt rendered by the request's own template, off the event loop; content that
    holds special-token text is tokenized as plain text (see api/prompting.py)."""

    render: RenderTemplate


@dataclass(frozen=True, slots=True)
class TokenPrompt:
    """Token ids, checked against the model's vocabulary."""

    tokens: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class InfillPrompt:
    """Fill in the middle: the model writes what goes between `prefix` and `suffix`."""

    prefix: str | tuple[int, ...]
    suffix: str


Prompt = ChatPrompt | TextPrompt | TemplatePrompt | TokenPrompt | InfillPrompt


# ---- options ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """Sampling and stopping, dialect-neutral. None: the server's default."""

    # tokens to generate; None: fill the context (or the default_max_tokens setting)
    max_tokens: Param[int] | None = None
    # True (Ollama): asking for more than the context leaves is cut to what it leaves;
    # False (OpenAI, native): a 400 naming max_tokens
    fit_max_tokens: bool = False
    # a smaller context window for this request (Ollama's num_ctx)
    n_ctx: Param[int] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    penalty_last_n: int | None = None  # -1: the whole context
    seed: int | None = None  # choices after the first get seed + i
    stop: Param[tuple[str, ...]] | None = None
    logit_bias: Param[dict[str, float]] | None = None  # token id (as text) -> bias
    ignore_eos: Param[bool] | None = None
    # log probabilities of the generated tokens, each with this many alternatives (0-20);
    # `prompt_logprobs`: of the prompt's tokens too (the first has none)
    logprobs: Param[int] | None = None
    prompt_logprobs: bool = False


@dataclass(frozen=True, slots=True)
class Session:
    """Store the exchange under a session (`id` as stored, in the key's namespace);
    `history`: put the stored conversation before the request's messages."""

    id: str | None
    history: bool = False


@dataclass(frozen=True, slots=True)
class Generation:
    """One generation request: `n` choices for each prompt."""

    model: str | None
    prompts: list[Prompt]
    prompt_param: str  # "messages", "prompt"
    options: Options = field(default_factory=Options)
    n: Param[int] = field(default_factory=lambda: Param(1, "n"))
    output: OutputFormat = TEXT
    output_param: str = "format"  # names the output format in its errors
    # token ids that go before the prompt (Ollama's `context`: an earlier exchange)
    context: Param[tuple[int, ...]] | None = None
    session: Session | None = None
    tools: ToolRequest | None = None  # function tools (chat prompts)
    # split the answer into reasoning and content: None, the model's way (a thinking model
    # does); True asks for it (a 400 for a model that does not think); False: one text
    think: bool | None = None
