"""The ceiling: llama.cpp batched decode in a plain loop, no server and no scheduler."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from inferd.engine.types import SamplingParams


@dataclass(frozen=True)
class CeilingResult:
    batch: int
    tokens: int
    decode_seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.decode_seconds


def measure_ceiling(
    path: Path,
    batch_sizes: list[int],
    max_tokens: int,
    *,
    n_ctx: int = 4096,
    kv_split: bool | None = None,
) -> list[CeilingResult]:
    """For each batch size B: prefill B short prompts, then time `max_tokens` steps of one
    `llama_decode` over B sequences with greedy sampling in C. `kv_split`: a KV stream per
    sequence or one unified cache, as a server started with --kv-split or --no-kv-split;
    None: the layout a server with the same n_ctx and slots picks itself."""
    # here, not at the top: every `inferd` command imports this module (cli/bench.py), and
    # only `inferd bench` needs llama.cpp loaded in the CLI's own process
    from inferd.engine.backends.llamacpp import LlamaCppBackend, LlamaCppOptions

    options = LlamaCppOptions(n_ctx=n_ctx, max_seqs=max(batch_sizes), kv_split=kv_split)
    backend = LlamaCppBackend(path, options)
    try:
        out = []
        for b in batch_sizes:
            prompts = [
                backend.tokenize(
                    f"Story {i}: once upon a time", add_special=True, parse_special=False
                )
                for i in range(b)
            ]
            samplers = [
                backend.new_sampler(
                    SamplingParams(temperature=0, ignore_eos=True), llama_chain=True
                )
                for _ in range(b)
            ]
            tokens: list[int] = []
            positions: list[int] = []
            seqs: list[int] = []
            logits: list[bool] = []
            for s, p in enumerate(prompts):
                tokens += p
                positions += range(len(p))
                seqs += [s] * len(p)
                logits += [False] * (len(p) - 1) + [True]
            backend.decode(tokens, positions, seqs, logits)
            rows = [i for i, flag in enumerate(logits) if flag]
            nxt = [samplers[s].sample(rows[s]) for s in range(b)]
            pos = [len(p) for p in prompts]
            start = time.perf_counter()
            for _ in range(max_tokens):
                backend.decode(nxt, pos, list(range(b)), [True] * b)
                nxt = [samplers[s].sample(s) for s in range(b)]
                pos = [x + 1 for x in pos]
            elapsed = time.perf_counter() - start
            out.append(CeilingResult(b, b * max_tokens, elapsed))
            for s in range(b):
                samplers[s].close()
                backend.free_seq(s)
        return out
    finally:
        backend.close()
