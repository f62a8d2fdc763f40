"""A deterministic backend with no model, for tests of the engine and the layers above it.

Tokens are bytes (id = byte + 1, id 0 is EOS). The "model" answers every prompt with
`reply` (then EOS, or `reply` again when EOS is ignored), optionally slowly, optionally
failing after a number of steps. It ignores grammars (structured output) but remembers the
sampling parameters it was given. Its KV cache models llama.cpp's cell by cell (a cell holds
one position and may belong to several sequence ids), under the llama.cpp backend's own
`CellPool`, so the engine's KV accounting can be checked against it. Its embeddings are
the mean of fixed per-token vectors (`n_embd` wide): deterministic, and texts sharing bytes
are closer. Its logits at a position depend on that position's token only (`fake_logits`),
for log probabilities.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferd.engine.backends.base import ModelInfo, SequenceFailed
from inferd.engine.backends.llamacpp.cells import CellPool
from inferd.engine.backends.logprobs import prompt_positions, token_logprobs
from inferd.engine.sequence import Chunk, Sequence
from inferd.engine.types import SamplingParams
from inferd.errors import BackendError, InferdError

EOS = 0


def token_vector(token: int, n_embd: int) -> list[float]:
    """A fixed pseudo-random vector per token id (a linear congruential sequence)."""
    x = token * 2654435761 + 1
    out = []
    for _ in range(n_embd):
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append((x >> 40) / 2**24 - 0.5)
    return out


N_VOCAB = 257


def fake_logits(tokens: Seq[int]) -> np.ndarray:
    """The fake model's logits after each of `tokens` (rows x vocabulary)."""
    t = np.asarray(tokens, dtype=np.int64)[:, None]
    return (((t * 31 + np.arange(N_VOCAB) * 17) % 97) / 10.0).astype(np.float32)


@dataclass
class FakeSampler:
    backend: FakeBackend
    params: SamplingParams
    emitted: int = 0

    def sample(self) -> int:
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
    prefill_per_decode: int = 0
    max_batch_tokens: int = 64
    kv_split: bool = False  # report a KV stream per slot (cells are still counted together)
    kv_cell_bytes: int = 0  # reported memory per KV cell (0: unknown)
    size_bytes: int = 0  # reported weights
    step_delay: float = 0.0
    token_delay: float = 0.0  # seconds more per token in a step (as a CPU's decode costs)
    fail_after_steps: int | None = None
    n_embd: int = 8
    n_ctx_embed: int = 0
    reject_grammar: bool = False  # a sampler for structured output cannot be made
    fim: tuple[int, int, int] | None = None  # (pre, suf, mid) token ids: can insert
    drafter: None = None  # no draft model
    # observable state for tests, modelled on llama.cpp's unified KV cache: a cell holds
    # one position and may belong to several sequence ids
    steps: int = 0
    batches: list[tuple[int, int]] = field(default_factory=list)  # (tokens, sequences)
    cell_owners: dict[int, set[int]] = field(default_factory=dict)  # cell -> sequence ids
    seq_cells: dict[int, dict[int, int]] = field(default_factory=dict)  # seq -> pos -> cell
    samplers_closed: int = 0
    restore_fails: bool = False  # make every restore_seq fail (no contiguous room)
    copy_fails: bool = False  # make every copy_prefix fail (as a split copy may)
    # a step with drafts finds no KV room (as a fragmented unified llama.cpp cache may)
    no_room_for_drafts: bool = False
    restores: int = 0
    moves: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) of move_seq
    seq_id_batches: list[list[int]] = field(default_factory=list)  # each decode's seq ids
    sampling_seen: list[SamplingParams] = field(default_factory=list)
    embed_calls: list[int] = field(default_factory=list)  # inputs per embed call
    # work while idle (`idle_work`), modelled on llama.cpp's idle measurement: a run is
    # `idle_units` units of `idle_unit_delay` s; one cut short (closed) is lost and counts;
    # at most `idle_max_runs` runs, none after one finished
    idle_units: int = 0
    idle_unit_delay: float = 0.0
    idle_max_runs: int = 3
    idle_runs: int = 0  # runs started
    idle_closed: int = 0  # runs cut short
    idle_finished: bool = False
    idle_log: list[tuple[float, float, int]] = field(
        default_factory=list
    )  # per unit: (start, end, cells in use)
    _next_cell: int = 0

    def __post_init__(self) -> None:
        self.reply_tokens = [b + 1 for b in self.reply.encode()]
        self.pool = CellPool(self, slots=self.max_seqs, cells=self.kv_cells, split=self.kv_split)
        self.info = ModelInfo(
            n_vocab=N_VOCAB,
            n_ctx=self.n_ctx,
            max_seqs=self.max_seqs,
            max_batch_tokens=self.max_batch_tokens,
            prefill_per_decode=self.prefill_per_decode,
            size_bytes=self.size_bytes,
            kv_bytes=self.kv_cells * self.kv_cell_bytes,
            n_ctx_train=self.n_ctx,
            add_bos=False,
            bos_token="",
            eos_token="</s>",
            chat_template=None,
            n_embd=self.n_embd,
            n_ctx_embed=self.n_ctx_embed,
            fim_pre=self.fim[0] if self.fim else -1,
            fim_suf=self.fim[1] if self.fim else -1,
            fim_mid=self.fim[2] if self.fim else -1,
            drafts=True,
        )

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return [b + 1 for b in text.encode("utf-8", "surrogatepass")]

    def token_piece(self, token: int) -> bytes:
        return b"" if token == EOS else bytes([token - 1])

    def token_text(self, token: int) -> bytes:
        return b"</s>" if token == EOS else bytes([token - 1])

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def facts(self) -> dict[str, Any]:
        return {
            "backend": "fake",
            "kv_layout": "split" if self.kv_split else "unified",
            "kv_cells": self.kv_cells,
            "metadata": {
                "general.architecture": "fake",
                "general.name": "Fake",
                "general.file_type": "1",
            },
        }

    def check_sampling(self, params: SamplingParams) -> None:
        pass

    def new_sampler(self, params: SamplingParams) -> FakeSampler:
        self.sampling_seen.append(params)
        if self.reject_grammar and params.constrained:
            raise BackendError("the grammar for structured output failed to load")
        return FakeSampler(self, params)

    def execute(self, chunks: list[Chunk]) -> list[int] | None:
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        samplers: list[FakeSampler] = []
        sampling: list[Chunk] = []
        for c in chunks:
            seq = c.seq
            tokens += seq.tokens[c.start : c.end]
            tokens += c.draft
            positions += range(c.start, c.end + len(c.draft))
            seq_ids += [seq.slot] * (c.end + len(c.draft) - c.start)
            if c.samples:
                if seq.sampler is None:
                    try:
                        seq.sampler = self.new_sampler(seq.request.sampling)
                    except InferdError as exc:
                        raise SequenceFailed(seq, exc.message) from None
                assert isinstance(seq.sampler, FakeSampler)
                samplers.append(seq.sampler)
                sampling.append(c)
        if self.no_room_for_drafts and any(c.draft for c in chunks):
            return None
        if not self.decode(tokens, positions, seq_ids):
            return None
        for c in chunks:
            scored, wanted = c.seq.prompt_logprobs, prompt_positions(c)
            if scored is not None and wanted:
                rows = fake_logits(c.seq.tokens[wanted.start : wanted.stop])
                targets = c.seq.tokens[wanted.start + 1 : wanted.stop + 1]
                scored.extend(
                    token_logprobs(rows, targets, c.seq.request.sampling.prompt_logprobs or 0)
                )
        sampled = [_verify(s, c) for s, c in zip(samplers, sampling, strict=True)]
        for c, token in zip(sampling, sampled, strict=True):
            seq = c.seq
            top = seq.request.sampling.logprobs
            if top is not None:
                row = fake_logits(seq.tokens[-1:])
                seq.sampled_logprob = token_logprobs(row, [token], top)[0]
        return sampled

    def drop(self, seq: Sequence) -> None:
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None

    def embed(self, inputs: Seq[Seq[int]]) -> list[list[float]]:
        self.embed_calls.append(len(inputs))
        out = []
        for tokens in inputs:
            if not tokens or len(tokens) > self.info.embed_limit:
                raise BackendError("an embeddings input is empty or longer than the context")
            vectors = [token_vector(t, self.n_embd) for t in tokens]
            out.append([sum(col) / len(tokens) for col in zip(*vectors, strict=True)])
        return out

    def decode(self, tokens: Seq[int], positions: Seq[int], seq_ids: Seq[int]) -> bool:
        """A flattened batch into the cells, as llama_decode does (False: no room, nothing
        changed)."""
        if self.fail_after_steps is not None and self.steps >= self.fail_after_steps:
            raise BackendError("fake backend failure")
        if len(self.cell_owners) + len(tokens) > self.kv_cells:
            return False
        if self.kv_split:  # a stream per slot: kv_cells / max_seqs each
            per_slot = self.kv_cells // self.max_seqs
            for s in set(seq_ids):
                if len(self.seq_cells.get(s, {})) + seq_ids.count(s) > per_slot:
                    return False
        for pos, s in zip(positions, seq_ids, strict=True):
            if not 0 <= s < self.max_seqs:
                raise BackendError(f"sequence id {s} out of range")
            cells = self.seq_cells.setdefault(s, {})
            if pos in cells or (pos > 0 and pos - 1 not in cells):
                raise BackendError(f"sequence {s}: position {pos} is not next")
            cell = self._next_cell
            self._next_cell += 1
            self.cell_owners[cell] = {s}
            cells[pos] = cell
        self.steps += 1
        self.batches.append((len(tokens), len(set(seq_ids))))
        self.seq_id_batches.append(list(seq_ids))
        if self.step_delay or self.token_delay:
            time.sleep(self.step_delay + self.token_delay * len(tokens))
        return True

    @property
    def cells_used(self) -> int:
        return len(self.cell_owners)

    def free_seq(self, seq_id: int) -> None:
        self.trim_seq(seq_id, 0)

    def trim_seq(self, seq_id: int, keep: int) -> None:
        cells = self.seq_cells.get(seq_id, {})
        for pos in [p for p in cells if p >= keep]:
            cell = cells.pop(pos)
            owners = self.cell_owners[cell]
            owners.discard(seq_id)
            if not owners:
                del self.cell_owners[cell]

    def copy_prefix(self, src: int, dst: int, n: int) -> bool:
        if self.copy_fails:
            return False
        source = self.seq_cells.get(src, {})
        target = self.seq_cells.setdefault(dst, {})
        for pos in range(n):
            if self.kv_split:  # streams share nothing: new cells
                cell = self._next_cell
                self._next_cell += 1
                self.cell_owners[cell] = {dst}
            else:
                cell = source[pos]
                self.cell_owners[cell].add(dst)
            target[pos] = cell
        return True

    def move_seq(self, src: int, dst: int) -> None:
        if self.seq_cells.get(dst):
            raise BackendError(f"sequence {dst} is not empty")
        cells = self.seq_cells.pop(src, {})
        for cell in cells.values():
            owners = self.cell_owners[cell]
            owners.discard(src)
            owners.add(dst)
        self.seq_cells[dst] = cells
        self.moves.append((src, dst))

    # a saved state: 4 bytes of cell count, then 16 bytes per cell (as if K and V)
    def save_seq(self, seq_id: int) -> bytes | None:
        cells = self.seq_cells.get(seq_id, {})
        if not cells:
            return None
        n = max(cells) + 1
        return n.to_bytes(4, "little") + bytes(16 * n)

    def restore_seq(self, seq_id: int, state: bytes | bytearray) -> bool:
        n = int.from_bytes(state[:4], "little")
        if self.restore_fails or len(self.cell_owners) + n > self.kv_cells:
            return False
        if self.seq_cells.get(seq_id):
            raise BackendError(f"sequence {seq_id} is not empty")
        cells = self.seq_cells.setdefault(seq_id, {})
        for pos in range(n):
            cell = self._next_cell
            self._next_cell += 1
            self.cell_owners[cell] = {seq_id}
            cells[pos] = cell
        self.restores += 1
        return True

    def idle_work(self) -> Generator[None, None, None] | None:
        if not self.idle_units or self.idle_finished or self.idle_runs >= self.idle_max_runs:
            return None
        self.idle_runs += 1
        return self._idle_run()

    def _idle_run(self) -> Generator[None, None, None]:
        try:
            for _ in range(self.idle_units):
                start = time.monotonic()
                time.sleep(self.idle_unit_delay)
                self.idle_log.append((start, time.monotonic(), self.pool.used))
                yield
            self.idle_finished = True
        except GeneratorExit:
            self.idle_closed += 1
            raise

    def close(self) -> None:
        pass


def _verify(sampler: FakeSampler, chunk: Chunk) -> int:
    """Sample the chunk's positions in order while they equal its draft (as llama.cpp's)."""
    draft = chunk.draft
    token = sampler.sample()
    i = 0
    while i < len(draft) and token == draft[i]:
        i += 1
        token = sampler.sample()
    chunk.accepted = i
    return token
