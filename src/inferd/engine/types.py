"""Plain value types shared by the engine and its clients."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from inferd.engine.structural import TaggedJson


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS/EOG token or a stop string
    LENGTH = "length"  # max_tokens or the context window
    ABORT = "abort"  # the client went away or the request was cancelled
    ERROR = "error"  # the backend failed


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What to sample and when to stop. Validated by the API layer before it gets here."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # 1.0 = disabled
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    # structured output, backend-neutral: any JSON object, or JSON matching a JSON Schema
    # (the schema as JSON text, validated by the API layer)
    json_mode: bool = False
    json_schema: str | None = None
    # tool calls: JSON in the text the model's call format puts around it
    tagged: TaggedJson | None = None
    # log probabilities (log-softmax of the raw logits, before bias, penalties, temperature
    # and filters): None = none; k >= 0 = each sampled token's, with the k most likely
    # alternatives. `prompt_logprobs`: the prompt tokens' too (each after its predecessors,
    # the first has none), with k alternatives; such a prompt is computed whole, never
    # reused from the prefix cache
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    @property
    def constrained(self) -> bool:
        return self.json_mode or self.json_schema is not None or self.tagged is not None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    request_id: str
    prompt_tokens: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # speculative decoding: draft tokens verified, and of them accepted
    draft_tokens: int = 0
    draft_accepted: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token's log probability and the `top` most likely tokens at its position
    (token id, log probability; most likely first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationOutput:
    """One increment of a request's output. `finish_reason` is set on the last one only."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    usage: Usage
    finish_reason: FinishReason | None = None
    error: str | None = None
    # seconds since the engine received the request, for timings
    queue_time: float | None = None
    time_to_first_token: float | None = None
    # on the final output: seconds between consecutive generated tokens, as sampled
    inter_token_latencies: tuple[float, ...] = ()
    # asked for in SamplingParams only: one per generated token of `token_ids` (an
    # end-of-generation token has none), and, on a sequence's first output, the prompt's
    # (None for its first token)
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


# Upper bounds of the buckets of EngineStats.step_seqs_counts (the last one catches the rest).
STEP_SEQ_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of the core loop, read by health checks and (later) metrics."""

    running: int
    waiting: int
    kv_cells_used: int
    kv_cells_total: int
    steps: int
    prompt_tokens_total: int
    generated_tokens_total: int
    preemptions: int
    cached_prefixes: int = 0  # finished sequences' states saved in host memory
    prefix_cache_bytes: int = 0
    prefix_restore_failures: int = 0
    step_tokens_total: int = 0  # tokens fed to the model, summed over steps
    step_seqs_total: int = 0  # sequences run, summed over steps
    # steps by how many sequences they ran: counts per upper bound in STEP_SEQ_BUCKETS
    step_seqs_counts: tuple[int, ...] = ()
    prefix_queries: int = 0
    prefix_hits: int = 0
    reused_tokens_total: int = 0
    kv_moves: int = 0  # sequences the KV pool moved to keep its layout (llama.cpp split KV)
    submitted: int = 0  # requests handed to the core so far
    draft_tokens_total: int = 0  # speculative decoding: draft tokens verified
    draft_accepted_total: int = 0  # of them, accepted
