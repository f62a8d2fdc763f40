"""The paged KV tensors, and a step laid out over them for one forward pass.

`PagedKV` holds K and V of every attention layer as `(positions, kv_heads, head_dim)` tensors
addressed by slot (block * BLOCK_SIZE + offset). It is handed to the model as its `cache`:
transformers' attention layers call `update(key, value, layer_idx)` with the step's new K/V
and attend over what it returns. `update` writes the new rows into their slots and returns,
for the whole ragged step, the K/V of every position each sequence attends over,
concatenated; the step's mask (`StepLayout.mask`) keeps each token to its own sequence's
earlier positions (block-diagonal and causal), so one SDPA call serves prefill chunks and
decode tokens of many sequences at once, without padding.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from inferd.engine.backends.torch.options import BLOCK_SIZE
from inferd.errors import BackendError


@dataclass(slots=True)
class StepLayout:
    """One step's addressing: where each new token's K/V goes (`write`, one slot per token)
    and which slots the step attends over (`read`), with the mask between them."""

    write: torch.Tensor  # (T,) slots
    read: torch.Tensor  # (K,) slots
    mask: torch.Tensor | dict[str, torch.Tensor]  # (1, 1, T, K) bool, or one per layer type


def slots_of(table: Seq[int], start: int, end: int) -> np.ndarray:
    """The slots of positions start..end-1 of a sequence with this block table."""
    pos = np.arange(start, end)
    return np.asarray(table, dtype=np.int64)[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE


def layout(
    spans: Seq[tuple[Seq[int], int, int]],
    device: torch.device,
    *,
    sliding_window: int | None,
    layer_types: frozenset[str],
) -> tuple[StepLayout, torch.Tensor]:
    """A step's layout for chunks given as (block table, start, end), and the positions of its
    tokens. A token at position p of sequence i sees positions 0..p of sequence i (within
    the sliding window, for the layers that have one)."""
    write, read, q_seq, q_pos, k_seq, k_pos = [], [], [], [], [], []
    for i, (table, start, end) in enumerate(spans):
        write.append(slots_of(table, start, end))
        read.append(slots_of(table, 0, end))
        q_seq.append(np.full(end - start, i))
        q_pos.append(np.arange(start, end))
        k_seq.append(np.full(end, i))
        k_pos.append(np.arange(end))
    qs, qp = torch.from_numpy(np.concatenate(q_seq)), torch.from_numpy(np.concatenate(q_pos))
    ks, kp = torch.from_numpy(np.concatenate(k_seq)), torch.from_numpy(np.concatenate(k_pos))
    full = (qs[:, None] == ks[None, :]) & (kp[None, :] <= qp[:, None])
    mask: torch.Tensor | dict[str, torch.Tensor] = full[None, None].to(device)
    if sliding_window:
        windowed = (full & (qp[:, None] - kp[None, :] < sliding_window))[None, None].to(device)
        if "sliding_attention" in layer_types and "full_attention" in layer_types:
            mask = {"full_attention": mask, "sliding_attention": windowed}  # type: ignore[dict-item]
        else:
            mask = windowed
    step = StepLayout(
        write=torch.from_numpy(np.concatenate(write)).to(device),
        read=torch.from_numpy(np.concatenate(read)).to(device),
        mask=mask,
    )
    return step, qp.to(device)


class PagedKV:
    """K/V tensors for `blocks` blocks of BLOCK_SIZE positions, one pair per attention layer,
    made at the first write (so the shapes are the model's own), and the `cache` object a
    transformers model is run with for one step (`step` set by the backend)."""

    block_size = BLOCK_SIZE

    def __init__(self, *, blocks: int, n_layer: int, dtype: torch.dtype, device: torch.device):
        self.positions = blocks * BLOCK_SIZE
        self.dtype = dtype
        self.device = device
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.step: StepLayout | None = None

    # ---- transformers' cache interface, as its attention layers use it -------------------

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a step's new K/V (batch 1: `(1, kv_heads, T, head_dim)`) into its slots; the
        K/V the step attends over, `(1, kv_heads, K, head_dim)`."""
        step = self.step
        if step is None:
            raise BackendError("the paged KV cache was used outside a step")
        k_new = key_states[0].transpose(0, 1)
        v_new = value_states[0].transpose(0, 1)
        keys, values = self._layer(layer_idx, k_new, v_new)
        keys.index_copy_(0, step.write, k_new.to(keys.dtype))
        values.index_copy_(0, step.write, v_new.to(values.dtype))
        k = keys.index_select(0, step.read).transpose(0, 1).unsqueeze(0)
        v = values.index_select(0, step.read).transpose(0, 1).unsqueeze(0)
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def _layer(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[i], self.values[i]
        if keys is None or values is None:
            keys = torch.zeros((self.positions, *k.shape[1:]), dtype=self.dtype, device=self.device)
            values = torch.zeros(
                (self.positions, *v.shape[1:]), dtype=self.dtype, device=self.device
            )
            self.keys[i], self.values[i] = keys, values
        return keys, values

    # ---- BlockStore ---------------------------------------------------------------------

    def _layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (k, v)
            for k, v in zip(self.keys, self.values, strict=True)
            if k is not None and v is not None
        ]

    # the tensors are made inside the model's forward, in inference mode: they are written
    # in it only

    @torch.inference_mode()
    def copy(self, src: int, dst: int, n: int) -> None:
        s, d = src * BLOCK_SIZE, dst * BLOCK_SIZE
        for k, v in self._layers():
            k[d : d + n] = k[s : s + n]
            v[d : d + n] = v[s : s + n]

    @torch.inference_mode()
    def save(self, blocks: Seq[int], n: int) -> bytes:
        idx = torch.from_numpy(slots_of(blocks, 0, n)).to(self.device)
        parts = []
        for k, v in self._layers():
            parts.append(k.index_select(0, idx))
            parts.append(v.index_select(0, idx))
        if not parts:
            return b""
        flat = torch.cat([p.reshape(-1) for p in parts]).cpu()
        return flat.view(torch.uint8).numpy().tobytes()

    @torch.inference_mode()
    def load(self, blocks: Seq[int], state: bytes | bytearray, n: int) -> None:
        """The saved state holds `rows` positions per tensor (its prefix's length); the first
        n of them go into `blocks`."""
        layers = self._layers()
        per_row = sum(k[0].numel() + v[0].numel() for k, v in layers)
        itemsize = torch.tensor([], dtype=self.dtype).element_size()
        if not per_row or len(state) % (per_row * itemsize):
            raise BackendError("a saved KV state does not fit this cache")
        rows = len(state) // (per_row * itemsize)
        flat = torch.frombuffer(bytearray(state), dtype=torch.uint8).view(self.dtype)
        idx = torch.from_numpy(slots_of(blocks, 0, n)).to(self.device)
        offset = 0
        for k, v in layers:
            for t in (k, v):
                size = rows * t[0].numel()
                part = flat[offset : offset + size].view(rows, *t.shape[1:])
                t.index_copy_(0, idx, part[:n].to(self.device))
                offset += size
