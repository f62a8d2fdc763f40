"""Hugging Face models on PyTorch through transformers: the only package that imports torch
or transformers.

- `options`: what a model is loaded with (`TorchOptions`), and its memory, estimated from its
  config before loading.
- `blocks`: the paged KV cache's blocks as the scheduler's `KVPool` (no torch).
- `cache`: the KV tensors, and a step's layout over them (slots, block-diagonal causal mask).
- `tokens`: the tokenizer, and each token's bytes.
- `sampling`: penalties in front of the numpy row sampler.
- `grammar`: structured output and tool calls as llguidance grammars (text, no tokenizer).
- `constraint`: those grammars compiled for the model, each sequence's matcher, a step's
  masks.
- `backend`: `TorchBackend`, loading and the step (`execute`).
"""

from inferd.engine.backends.torch.backend import TorchBackend, cuda_available
from inferd.engine.backends.torch.options import TorchOptions, estimate_memory

__all__ = ["TorchBackend", "TorchOptions", "cuda_available", "estimate_memory"]
