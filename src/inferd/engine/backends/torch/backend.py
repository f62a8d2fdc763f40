"""The transformers backend: a Hugging Face causal LM stepped by inferd's core loop over a
paged KV cache of its own."""

from __future__ import annotations

import gc
import inspect
import logging
import threading
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import AttentionInterface

from inferd.engine.backends.base import ModelInfo, SequenceFailed
from inferd.engine.backends.logprobs import prompt_positions, token_logprobs
from inferd.engine.backends.torch.blocks import BlockPool
from inferd.engine.backends.torch.cache import PagedKV, layout
from inferd.engine.backends.torch.constraint import Grammars
from inferd.engine.backends.torch.options import (
    BLOCK_SIZE,
    KvShape,
    TorchOptions,
    context_length,
    kv_positions,
    pooling,
    read_config,
    text_config,
)
from inferd.engine.backends.torch.progress import Report, WeightsProgress
from inferd.engine.backends.torch.sampling import TorchSampler
from inferd.engine.backends.torch.tokens import Tokens
from inferd.engine.sequence import Chunk, Sequence
from inferd.engine.types import SamplingParams
from inferd.errors import BackendError, EngineStopped, InferdError, InvalidRequest

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def check_device(device: str) -> torch.device:
    """The torch device `device` names, once this machine is known to have it (BackendError
    saying what is missing otherwise)."""
    found = torch.device(device)
    if found.type == "cuda":
        count = torch.cuda.device_count() if cuda_available() else 0
        if count == 0:
            raise BackendError(f"device {device} asked for, but torch sees no CUDA device")
        if (found.index or 0) >= count:
            raise BackendError(f"device {device} asked for, but torch sees {count} CUDA device(s)")
    elif found.type == "mps" and not torch.backends.mps.is_available():
        raise BackendError(f"device {device} asked for, but torch sees no MPS device")
    return found


def _load(
    source: str, options: TorchOptions, dtype: torch.dtype, attention: str, report: Report
) -> tuple[Any, Any]:
    """The model (with the attention function registered as `attention`) and its tokenizer,
    from a local folder or the local HF cache only; `report` hears how far its weights are."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if options.trust_remote_code:
        log.warning(
            "%s: trust_remote_code is on: the checkpoint's own Python code runs in this process",
            source,
        )
    common: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": options.trust_remote_code,
    }
    shards = len(list(Path(source).glob("*.safetensors"))) or len(
        list(Path(source).glob("pytorch_model*.bin"))
    )
    where = f" ({shards} files)" if shards > 1 else ""
    try:
        report(0.0, "reading the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        with WeightsProgress(report, where):
            model = AutoModelForCausalLM.from_pretrained(
                source,
                dtype=dtype,
                attn_implementation=attention,
                device_map=options.device if options.on_gpu else None,
                **common,
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as exc:
        raise BackendError(f"{Path(source).name}: the checkpoint failed to load: {exc}") from None
    model.eval()
    return model, tokenizer


def _set_threads(n: int | None, name: str) -> None:
    """torch's intra-op threads are one pool for the whole process, shared by every
    transformers model in it: a model's `n_threads` sets them for all of them (the last
    model loaded with it decides), and the log says so when it changes them."""
    if n and n != torch.get_num_threads():
        log.info(
            "%s: n_threads %d sets torch's threads for the whole process (from %d), "
            "for every transformers model in it",
            name,
            n,
            torch.get_num_threads(),
        )
        torch.set_num_threads(n)


def _grammars(tokenizer: Any, n_vocab: int, tokens: Tokens, source: str) -> Grammars | None:
    """The model's grammar machinery; None (structured output refused) when llguidance
    cannot take its tokenizer (only fast, `tokenizers`-backed ones)."""
    try:
        return Grammars(tokenizer, n_vocab, tokens.eog, tokens.piece)
    except (ValueError, TypeError, RuntimeError) as exc:
        log.warning("%s: no structured output for this model: %s", Path(source).name, exc)
        return None


class TorchBackend:
    """The step-level `Backend` over one transformers model: `execute` runs a step's chunks
    as one ragged batch (one forward, no padding) over the paged KV cache (`cache.PagedKV`),
    whose blocks are the scheduler's `pool` (`blocks.BlockPool`)."""

    def __init__(
        self, folder: Path, options: TorchOptions, on_progress: Report | None = None
    ) -> None:
        """`folder`: a checkpoint's folder (a local one, or a snapshot in the HF cache).
        `on_progress` hears how far the load is (in this thread): the tokenizer, then each
        weight tensor read and put in place, then the rest (KV cache, grammar tables)."""
        source = str(folder)
        self.drafter = None  # no draft model (speculative decoding is llama.cpp's)
        report = on_progress or (lambda _f, _what: None)
        self._device = check_device(options.device)
        _set_threads(options.n_threads, folder.name)
        bf16 = self._device.type == "cuda" and torch.cuda.is_bf16_supported()
        self._dtype_name = options.dtype_name(bf16=bf16)
        dtype = _DTYPES[self._dtype_name]
        config = read_config(folder)
        tc = text_config(config)
        shape = KvShape.of(config)
        n_ctx = context_length(config, options)
        positions = kv_positions(options, n_ctx)
        self._kv = PagedKV(
            blocks=positions // BLOCK_SIZE,
            n_layer=shape.n_layer,
            dtype=dtype,
            device=self._device,
        )
        # the attention function reads this backend's cache: registered under a name of its
        # own with transformers for as long as the model is loaded
        self._attention = f"inferd_paged_{id(self):x}"
        AttentionInterface.register(self._attention, self._kv.attention)
        try:
            self._model, tokenizer = _load(source, options, dtype, self._attention, report)
        except BaseException:
            self._unregister()
            raise
        report(1.0, "weights in place; the tokenizer's tables")
        self._arch = str(tc.get("model_type") or config.get("model_type") or "unknown")
        gen = self._model.generation_config
        eos = gen.eos_token_id if gen is not None else None
        eos_ids = [*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id]
        self._tokens = Tokens(tokenizer, [e for e in eos_ids if e is not None])
        n_vocab = int(self._model.get_output_embeddings().weight.shape[0])
        self._n_vocab = n_vocab
        self._grammars = _grammars(tokenizer, n_vocab, self._tokens, source)
        self.pool = BlockPool(self._kv, blocks=positions // BLOCK_SIZE, slots=options.max_seqs)
        window = tc.get("sliding_window") if tc.get("use_sliding_window", True) else None
        self._window = int(window) if window else None
        self._cache_arg = self._cache_keyword()
        self._embed_lock = threading.Lock()
        self._pooling = pooling(folder)
        params = list(self._model.parameters())
        template = tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default") or next(iter(template.values()), None)
        t = self._tokens
        self.info = ModelInfo(
            grammars=self._grammars is not None,
            n_vocab=n_vocab,
            n_ctx=n_ctx,
            max_seqs=options.max_seqs,
            max_batch_tokens=options.batch_tokens,
            prefill_per_decode=options.prefill_per_decode or 0,
            n_ctx_train=int(tc.get("max_position_embeddings") or 0),
            add_bos=t.add_bos,
            bos_token=t.bos_token,
            eos_token=t.eos_token,
            chat_template=template if isinstance(template, str) else None,
            n_params=sum(p.numel() for p in params),
            size_bytes=sum(p.numel() * p.element_size() for p in params),
            kv_bytes=positions * shape.position_bytes(self._dtype_name),
            n_embd=int(tc.get("hidden_size") or 0),
            n_ctx_embed=min(options.n_ctx_embed, n_ctx),
            fim_pre=t.fim[0],
            fim_suf=t.fim[1],
            fim_mid=t.fim[2],
        )
        self._metadata = self._describe(tc, folder.name)
        self._bias_eog = [(e, float("-inf")) for e in sorted(t.eog)]

    def _cache_keyword(self) -> str:
        """The name the model's forward takes its cache by (`cache` in transformers 5;
        `past_key_values` in models that were not renamed)."""
        params = inspect.signature(self._model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def _describe(self, tc: dict[str, Any], name: str) -> dict[str, str]:
        """The model's facts under GGUF's metadata names, for the views that show them."""
        a = self._arch
        facts = {
            "general.architecture": a,
            "general.name": name,
            f"{a}.context_length": tc.get("max_position_embeddings"),
            f"{a}.embedding_length": tc.get("hidden_size"),
            f"{a}.block_count": tc.get("num_hidden_layers"),
            f"{a}.attention.head_count": tc.get("num_attention_heads"),
            f"{a}.attention.head_count_kv": tc.get("num_key_value_heads"),
            f"{a}.expert_count": tc.get("num_local_experts") or tc.get("num_experts"),
        }
        return {k: str(v) for k, v in facts.items() if v is not None}

    # ---- facts ----------------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        return {
            "backend": "transformers",
            "kv_layout": "paged",
            "kv_cells": self.pool.capacity,
            "kv_block_size": BLOCK_SIZE,
            "dtype": self._dtype_name,
            "device": str(self._device),
            "pooling": self._pooling,
            "metadata": dict(self._metadata),
        }

    # ---- tokenizer ------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self._tokens.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_piece(self, token: int) -> bytes:
        return self._tokens.piece(token)

    def token_text(self, token: int) -> bytes:
        return self._tokens.text(token)

    def is_eog(self, token: int) -> bool:
        return token in self._tokens.eog

    # ---- sampling -------------------------------------------------------------------------

    def check_sampling(self, params: SamplingParams) -> None:
        if not params.constrained:
            return
        if self._grammars is None:
            raise InvalidRequest(
                "structured output (a JSON format or schema, or the grammar of tool calls) "
                "is not available for this model: its tokenizer is not a fast one"
            )
        self._grammars.check(params)

    def new_sampler(self, params: SamplingParams) -> TorchSampler:
        constraint = None
        if params.constrained:
            self.check_sampling(params)
            assert self._grammars is not None
            constraint = self._grammars.constraint(params)
        bias = list(params.logit_bias)
        if params.ignore_eos:
            bias += self._bias_eog
        return TorchSampler(params, bias, constraint)

    def _sampler_for(self, seq: Sequence) -> TorchSampler:
        try:
            return self.new_sampler(seq.request.sampling)
        except InferdError as exc:
            raise SequenceFailed(seq, exc.message) from None

    # ---- the step -------------------------------------------------------------------------

    def execute(self, chunks: list[Chunk]) -> list[int] | None:
        samplers: list[TorchSampler] = []
        sampling: list[Sequence] = []
        rows: list[int] = []
        tokens: list[int] = []
        scored: list[tuple[Sequence, int]] = []  # (sequence, its sampling row) with logprobs
        prompts: list[tuple[Sequence, int, range]] = []  # (sequence, row of position 0, ...)
        for c in chunks:
            seq = c.seq
            tokens += seq.tokens[c.start : c.end]
            if seq.prompt_logprobs is not None and (wanted := prompt_positions(c)):
                prompts.append((seq, len(tokens) - c.end, wanted))
            if c.samples:
                if seq.sampler is None:
                    seq.sampler = self._sampler_for(seq)
                if seq.request.sampling.logprobs is not None:
                    scored.append((seq, len(samplers)))
                samplers.append(cast("TorchSampler", seq.sampler))
                sampling.append(seq)
                rows.append(len(tokens) - 1)
        if not self.pool.grow(chunks):
            return None
        extra = [base + p for _, base, wanted in prompts for p in wanted]
        logits = self.forward(chunks, tokens, rows + extra)
        sample_rows = self._sample_rows(logits, samplers, sampling)
        sampled = [s.sample(row) for s, row in zip(samplers, sample_rows, strict=True)]
        for seq, i in scored:  # the samplers read the rows, never write them
            k = seq.request.sampling.logprobs or 0
            seq.sampled_logprob = token_logprobs(logits[i : i + 1], [sampled[i]], k)[0]
        at = len(rows)
        for seq, _, wanted in prompts:
            assert seq.prompt_logprobs is not None
            k = seq.request.sampling.prompt_logprobs or 0
            targets = seq.tokens[wanted.start + 1 : wanted.stop + 1]
            seq.prompt_logprobs.extend(token_logprobs(logits[at : at + len(wanted)], targets, k))
            at += len(wanted)
        return sampled

    def _sample_rows(
        self, logits: np.ndarray, samplers: list[TorchSampler], sampling: list[Sequence]
    ) -> list[np.ndarray]:
        """The row each sampler draws from: its sequence's logits, masked by its grammar where
        it has one that constrains this token (all such rows masked in one batch)."""
        out = list(logits[: len(sampling)])
        constrained = []
        for i, (sampler, seq) in enumerate(zip(samplers, sampling, strict=True)):
            constraint = sampler.constraint
            if constraint is not None:
                matcher = constraint.follow(seq.tokens, seq.n_prompt)
                if matcher is not None:
                    constrained.append((i, matcher))
        if constrained:
            assert self._grammars is not None
            masked = self._grammars.masked(logits, constrained)
            for (i, _), row in zip(constrained, masked, strict=True):
                out[i] = row
        return out

    def forward(self, chunks: Seq[Chunk], tokens: list[int], rows: list[int]) -> np.ndarray:
        """One forward pass over the step's tokens: the float32 logits of `rows`."""
        if self._model is None:
            raise BackendError("backend is closed")
        spans = [(self.pool.table(c.seq), c.start, c.end) for c in chunks]
        step, positions = layout(spans, self._device, sliding_window=self._window)
        ids = torch.tensor(tokens, dtype=torch.long, device=self._device)[None]
        kv = self._kv
        kv.step = step
        try:
            with torch.inference_mode():
                out = self._model(
                    input_ids=ids,
                    position_ids=positions[None],
                    use_cache=False,
                    logits_to_keep=torch.tensor(rows, dtype=torch.long, device=self._device),
                    **{self._cache_arg: kv},
                )
            return cast("np.ndarray", out.logits[0].float().cpu().numpy())
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise BackendError(f"the forward pass failed: {exc}") from exc
        finally:
            kv.step = None

    def drop(self, seq: Sequence) -> None:
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None

    def idle_work(self) -> None:
        """Nothing to do while idle."""
        return None

    # ---- embeddings -----------------------------------------------------------------------

    def embed(self, inputs: Seq[Seq[int]]) -> list[list[float]]:
        """Each input's last hidden states pooled as the model says (`options.pooling`: the
        mean over its tokens, its last token or its first), one input per forward."""
        with self._embed_lock:
            model = self._model
            if model is None:
                raise EngineStopped("the model was unloaded")
            base = getattr(model, model.base_model_prefix, model)
            out: list[list[float]] = []
            with torch.inference_mode():
                for tokens in inputs:
                    if not tokens or len(tokens) > self.info.embed_limit:
                        raise BackendError("an embeddings input is empty or too long")
                    ids = torch.tensor([list(tokens)], dtype=torch.long, device=self._device)
                    hidden = base(input_ids=ids, use_cache=False).last_hidden_state[0].float()
                    if self._pooling == "last":
                        pooled = hidden[-1]
                    elif self._pooling == "cls":
                        pooled = hidden[0]
                    else:
                        pooled = hidden.mean(dim=0)
                    out.append(pooled.cpu().tolist())
            return out

    def _unregister(self) -> None:
        AttentionInterface._global_mapping.pop(self._attention, None)

    def close(self) -> None:
        with self._embed_lock:
            self._model = None
            self._unregister()
        self._kv.keys = [None] * len(self._kv.keys)
        self._kv.values = [None] * len(self._kv.values)
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
