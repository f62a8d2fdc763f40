"""A deterministic backend with no model, for tests of the layers above the engine.

Tokens are bytes (id = byte + 1, id 0 is EOS). The "model" answers every prompt with
`reply` (then EOS, or `reply` again when EOS is ignored), optionally slowly, optionally
failing after a number of steps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from inferd.engine.backends.base import BackendInfo
from inferd.engine.types import SamplingParams
from inferd.errors import BackendError

EOS = 0


@dataclass
class FakeSampler:
    backend: FakeBackend
    params: SamplingParams
    emitted: int = 0

    def sample(self, row: int) -> int:
        reply = self.backend.reply_tokens
        if self.emitted >= len(reply) and not self.params.ignore_eos:
            token = EOS
        else:
            token = reply[self.emitted % len(reply)]
        self.emitted += 1
        return token

    def close(self) -> None:
        self.backend.samplers_closed += 1


@dataclass
class FakeBackend:
    reply: str = "Hello from the fake backend!"
    n_ctx: int = 512
    kv_cells: int = 2048
    max_seqs: int = 4
    max_batch_tokens: int = 64
    step_delay: float = 0.0
    fail_after_steps: int | None = None
    # observable state for tests
    steps: int = 0
    batches: list[tuple[int, int]] = field(default_factory=list)  # (tokens, sequences)
    cells: dict[int, int] = field(default_factory=dict)  # seq id -> cells used
    samplers_closed: int = 0

    def __post_init__(self) -> None:
        self.reply_tokens = [b + 1 for b in self.reply.encode()]
        self.info = BackendInfo(
            n_vocab=257,
            n_ctx=self.n_ctx,
            kv_cells=self.kv_cells,
            max_seqs=self.max_seqs,
            max_batch_tokens=self.max_batch_tokens,
            n_ctx_train=self.n_ctx,
            add_bos=False,
            bos_token="",
            eos_token="</s>",
            chat_template=None,
        )

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return [b + 1 for b in text.encode()]

    def token_piece(self, token: int) -> bytes:
        return b"" if token == EOS else bytes([token - 1])

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def new_sampler(self, params: SamplingParams) -> FakeSampler:
        return FakeSampler(self, params)

    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seq_ids: Sequence[int],
        logits: Sequence[bool],
    ) -> bool:
        if self.fail_after_steps is not None and self.steps >= self.fail_after_steps:
            raise BackendError("fake backend failure")
        if sum(self.cells.values()) + len(tokens) > self.kv_cells:
            return False
        for s in seq_ids:
            self.cells[s] = self.cells.get(s, 0) + 1
        self.steps += 1
        self.batches.append((len(tokens), len(set(seq_ids))))
        if self.step_delay:
            time.sleep(self.step_delay)
        return True

    def free_seq(self, seq_id: int) -> None:
        self.cells.pop(seq_id, None)

    def close(self) -> None:
        pass
