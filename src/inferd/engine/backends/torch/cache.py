"""The paged KV tensors, a step laid out over them, and the attention that reads them.

`PagedKV` holds K and V of every attention layer as `(positions, kv_heads, head_dim)` tensors
addressed by slot (block * BLOCK_SIZE + offset). A model is loaded with `PagedKV.attention`
as its attention function and run with the `PagedKV` as its `cache`: each attention layer
calls `update(key, value, layer_idx)`, which writes the step's new K/V into their slots, then
the attention function, which attends each query over its own sequence's slots only. The
step's tokens are one ragged batch (prefill chunks and decode tokens of many sequences, no
padding through the weights); attention runs per `Group`: all single-token queries (decodes)
together, each over its sequence's positions gathered and padded to the longest of them
(masked), and each longer prompt chunk on its own with a causal mask from its offset.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from inferd.engine.backends.torch.options import BLOCK_SIZE
from inferd.errors import BackendError


@dataclass(slots=True)
class Group:
    """Queries attended alike: `rows` (S, q) of the step's tokens, each row of S over the
    slots `read` (S, L), where `mask` (S, 1, q, L) allows (`window`: the same within the
    sliding window, for layers that have one)."""

    rows: torch.Tensor
    read: torch.Tensor
    mask: torch.Tensor
    window: torch.Tensor | None


@dataclass(slots=True)
class StepLayout:
    """One step's addressing: where each new token's K/V goes (`write`, one slot per token)
    and the attention groups."""

    write: torch.Tensor  # (T,) slots
    groups: list[Group]
    n_tokens: int


def slots_of(table: Seq[int], start: int, end: int) -> np.ndarray:
    """The slots of positions start..end-1 of a sequence with this block table."""
    pos = np.arange(start, end)
    return np.asarray(table, dtype=np.int64)[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE


def _group(
    rows: np.ndarray, read: np.ndarray, allowed: np.ndarray, dist: np.ndarray,
    window: int | None, device: torch.device,
) -> Group:  # fmt: skip
    mask = torch.from_numpy(allowed)[:, None].to(device)
    windowed = None
    if window:
        windowed = torch.from_numpy(allowed & (dist < window))[:, None].to(device)
    return Group(
        rows=torch.from_numpy(rows).to(device),
        read=torch.from_numpy(read).to(device),
        mask=mask,
        window=windowed,
    )


def layout(
    spans: Seq[tuple[Seq[int], int, int]], device: torch.device, *, sliding_window: int | None
) -> tuple[StepLayout, torch.Tensor]:
    """A step's layout for chunks given as (block table, start, end), and the positions of its
    tokens. A token at position p of a sequence sees positions 0..p of that sequence (those
    within the sliding window, for the layers that have one)."""
    write, positions, singles = [], [], []
    groups: list[Group] = []
    row = 0
    for table, start, end in spans:
        n = end - start
        write.append(slots_of(table, start, end))
        positions.append(np.arange(start, end))
        if n == 1:
            singles.append((row, table, end))
        else:
            q = np.arange(start, end)[:, None]
            k = np.arange(end)[None, :]
            rows = np.arange(row, row + n)[None, :]
            read = slots_of(table, 0, end)[None, :]
            groups.append(_group(rows, read, (k <= q)[None], (q - k)[None], sliding_window, device))
        row += n
    if singles:
        longest = max(end for _, _, end in singles)
        read = np.zeros((len(singles), longest), dtype=np.int64)
        for i, (_, table, end) in enumerate(singles):
            read[i, :end] = slots_of(table, 0, end)
        ends = np.array([end for _, _, end in singles])
        k = np.arange(longest)[None, :]
        allowed = (k < ends[:, None])[:, None]  # (S, 1, L)
        dist = (ends[:, None] - 1 - k)[:, None]
        rows = np.array([[r] for r, _, _ in singles])
        groups.append(_group(rows, read, allowed, dist, sliding_window, device))
    step = StepLayout(
        write=torch.from_numpy(np.concatenate(write)).to(device), groups=groups, n_tokens=row
    )
    return step, torch.from_numpy(np.concatenate(positions)).to(device)


class PagedKV:
    """K/V tensors for `blocks` blocks of BLOCK_SIZE positions, one pair per attention layer,
    made at the first write (so the shapes are the model's own); the `cache` and the attention
    function a transformers model runs a step with (`step`, set by the backend on the core
    thread; any other thread, embeddings, runs plain causal attention)."""

    block_size = BLOCK_SIZE

    def __init__(self, *, blocks: int, n_layer: int, dtype: torch.dtype, device: torch.device):
        self.positions = blocks * BLOCK_SIZE
        self.dtype = dtype
        self.device = device
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self._local = threading.local()

    @property
    def step(self) -> StepLayout | None:
        return getattr(self._local, "step", None)

    @step.setter
    def step(self, value: StepLayout | None) -> None:
        self._local.step = value

    # ---- transformers' cache and attention interfaces -----------------------------------

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
        *args: Any, **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Write a step's new K/V (batch 1: `(1, kv_heads, T, head_dim)`) into their slots;
        `attention` reads them from there."""
        step = self.step
        if step is None:
            raise BackendError("the paged KV cache was used outside a step")
        k_new = key_states[0].transpose(0, 1)
        v_new = value_states[0].transpose(0, 1)
        keys, values = self._layer(layer_idx, k_new, v_new)
        keys.index_copy_(0, step.write, k_new.to(keys.dtype))
        values.index_copy_(0, step.write, v_new.to(values.dtype))
        return key_states, value_states

    def attention(
        self, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:  # fmt: skip
        """Attention for one layer: query `(1, heads, T, head_dim)` -> `(1, T, heads,
        head_dim)`. In a step, each group over its slots; elsewhere plain causal SDPA over
        the given key and value."""
        step = self.step
        if step is None:
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, is_causal=attention_mask is None
                and query.shape[2] > 1, scale=scaling, enable_gqa=True,
            )  # fmt: skip
            return out.transpose(1, 2).contiguous(), None
        keys, values = self.keys[module.layer_idx], self.values[module.layer_idx]
        assert keys is not None and values is not None
        windowed = bool(getattr(module, "sliding_window", None))
        q_all = query[0].transpose(0, 1)  # (T, heads, head_dim)
        out = torch.empty_like(q_all)
        for g in step.groups:
            s, qn = g.rows.shape
            flat = g.rows.reshape(-1)
            q = q_all.index_select(0, flat).view(s, qn, *q_all.shape[1:]).transpose(1, 2)
            read = g.read.reshape(-1)
            k = keys.index_select(0, read).view(s, -1, *keys.shape[1:]).transpose(1, 2)
            v = values.index_select(0, read).view(s, -1, *values.shape[1:]).transpose(1, 2)
            mask = g.window if windowed and g.window is not None else g.mask
            o = F.scaled_dot_product_attention(
                q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=scaling, enable_gqa=True
            )
            out.index_copy_(0, flat, o.transpose(1, 2).reshape(s * qn, *q_all.shape[1:]))
        return out.unsqueeze(0), None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def _layer(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[i], self.values[i]
        if keys is None or values is None:
            shape_k, shape_v = (self.positions, *k.shape[1:]), (self.positions, *v.shape[1:])
            keys = torch.zeros(shape_k, dtype=self.dtype, device=self.device)
            values = torch.zeros(shape_v, dtype=self.dtype, device=self.device)
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
