"""Sampling on llama.cpp's logits: numpy for the plain cases, llama.cpp's sampler chain for
penalties and grammars (structured output, tool calls; see grammar.py)."""

from __future__ import annotations

import ctypes
import random
import threading
from collections.abc import Sequence
from typing import Any

import llama_cpp
import numpy as np

from inferd.engine.backends.llamacpp.grammar import gbnf, trigger_pattern
from inferd.engine.backends.numpy_sampling import RowSampler
from inferd.engine.structural import TaggedJson
from inferd.engine.types import SamplingParams
from inferd.errors import BackendError, InvalidRequest

# llama_token_data as a numpy record, to fill a vocabulary of candidates without a loop
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
# compiled grammars kept per backend, by JSON schema text
_GRAMMAR_CACHE = 64


def _penalized(params: SamplingParams) -> bool:
    """Repetition, presence or frequency penalties: a sampler that keeps the tokens it saw."""
    return (
        params.repetition_penalty != 1.0
        or params.presence_penalty != 0.0
        or params.frequency_penalty != 0.0
    )


def _row_logits(ctx: Any, row: int, n_vocab: int) -> np.ndarray:
    """A batch row's logits, a view into llama.cpp's buffer (valid until the next decode)."""
    ptr = llama_cpp.llama_get_logits_ith(ctx, row)
    if not ptr:
        raise BackendError(f"no logits for batch row {row}")
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,))


class NumpySampler:
    """Sampling without penalties or a grammar, in numpy over the row's logits in place
    (`numpy_sampling.RowSampler`: logit bias, top-k, top-p, min-p, temperature, a seeded draw;
    greedy is an argmax). llama.cpp's chain copies the whole vocabulary into a candidates
    array for every token and sorts it for top-p: after a 16-sequence decode ~0.14 ms a row
    for greedy, 0.31 ms at a temperature, 1.4 ms with top_p 0.95 alone; the numpy sampler
    keeps no state but its random generator, so there is nothing to accept."""

    __slots__ = ("_ctx", "_n_vocab", "_rows")

    def __init__(self, ctx: Any, n_vocab: int, rows: RowSampler) -> None:
        self._ctx = ctx
        self._n_vocab = n_vocab
        self._rows = rows

    def logits(self, row: int) -> np.ndarray:
        return _row_logits(self._ctx, row, self._n_vocab)

    def sample(self, row: int) -> int:
        return self._rows.sample(self.logits(row))

    def candidates(self, row: int) -> list[int]:
        """The token ids top-k, top-p and min-p keep on this row (for tests)."""
        return sorted(int(t) for t in self._rows.candidates(self.logits(row)))

    def close(self) -> None:
        pass


class LlamaCppSampler:
    """A llama.cpp sampler chain: penalties, logit bias, top-k/p, min-p, temperature, dist.

    With a grammar (structured output) it samples as llama.cpp's own `common_sampler` does:
    the chain picks a token from the unconstrained candidates and the grammar only checks
    that one token; only when the grammar rejects it are all candidates masked by the
    grammar and the chain applied again. Masking the whole vocabulary on every token costs
    ~12-19 ms with SmolLM2's 49,152 tokens, more than the decode step itself.
    """

    __slots__ = ("_cands", "_chain", "_ctx", "_data", "_grammar", "_ids", "_n_vocab")

    def __init__(self, chain: Any, ctx: Any, grammar: Any = None, n_vocab: int = 0) -> None:
        self._chain = chain
        self._ctx = ctx
        self._grammar = grammar
        self._n_vocab = n_vocab
        if grammar is not None:
            self._ids = np.arange(n_vocab, dtype=np.int32)
            self._cands = np.zeros(n_vocab, dtype=_TOKEN_DATA)
            self._data = self._cands.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))

    def sample(self, row: int) -> int:
        if self._grammar is None:
            return int(llama_cpp.llama_sampler_sample(self._chain, self._ctx, row))
        logits = _row_logits(self._ctx, row, self._n_vocab)
        token = self._pick(logits, constrained=False)
        one = llama_cpp.llama_token_data(token, 1.0, 0.0)
        single = llama_cpp.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(single))
        if one.logit == float("-inf"):
            token = self._pick(logits, constrained=True)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def _pick(self, logits: Any, *, constrained: bool) -> int:
        cands = self._cands
        cands["id"] = self._ids
        cands["logit"] = logits
        cands["p"] = 0.0
        # a new array header each time: samplers shrink it and may repoint its data
        arr = llama_cpp.llama_token_data_array(self._data, self._n_vocab, -1, False)
        if constrained:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            raise BackendError("the sampler selected no token")
        return int(arr.data[arr.selected].id)

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None


class Samplers:
    """Makes the samplers of one llama.cpp context, and compiles (and caches) the grammars
    of structured output. `check_sampling` is thread-safe; samplers are used on the core
    thread only."""

    def __init__(self, ctx: Any, vocab: Any, n_vocab: int, eog: Sequence[int]) -> None:
        self._ctx = ctx
        self._vocab = vocab
        self._n_vocab = n_vocab
        self._eog = eog
        self._grammars: dict[str | TaggedJson, str] = {}
        self._grammar_lock = threading.Lock()

    def _grammar(self, params: SamplingParams) -> str | None:
        """GBNF for structured output (compiled once per schema or shape, then cached)."""
        key = params.tagged or params.json_schema
        if key is None:
            return gbnf(params)  # free text, or any JSON object
        with self._grammar_lock:  # the core thread and request threads share the cache
            compiled = self._grammars.get(key)
        if compiled is None:
            try:
                compiled = gbnf(params) or ""
            except Exception as exc:  # the converter raises ValueError, AssertionError, ...
                # the converter names the schema's document "stdin"
                detail = str(exc).replace("stdin#", "#")[:200] or type(exc).__name__
                raise InvalidRequest(
                    f"the JSON schema cannot be used for structured output: {detail}"
                ) from None
            with self._grammar_lock:
                if len(self._grammars) >= _GRAMMAR_CACHE:
                    self._grammars.pop(next(iter(self._grammars)), None)
                self._grammars[key] = compiled
        return compiled

    def check_sampling(self, params: SamplingParams) -> None:
        grammar = self._grammar(params)
        if grammar is None:
            return
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            raise InvalidRequest("the JSON schema cannot be used for structured output")
        llama_cpp.llama_sampler_free(sampler)

    def _constraint(self, params: SamplingParams, grammar: str) -> Any:
        """llama.cpp's grammar sampler; a lazy one (free until its trigger text) for tool
        calls the model may or may not make."""
        trigger = params.tagged.trigger if params.tagged is not None else None
        if trigger is None:
            return llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        patterns = (ctypes.c_char_p * 1)(trigger_pattern(trigger).encode())
        return llama_cpp.llama_sampler_init_grammar_lazy_patterns(
            self._vocab, grammar.encode(), b"root", patterns, 1, None, 0
        )

    def _bias(self, params: SamplingParams) -> list[tuple[int, float]]:
        """The request's logit bias, with every end-of-generation token banned for ignore_eos."""
        bias = list(params.logit_bias)
        if params.ignore_eos:
            bias.extend((t, float("-inf")) for t in self._eog)
        return bias

    def _filter_chain(self, params: SamplingParams, bias: Sequence[tuple[int, float]]) -> Any:
        """A llama.cpp sampler chain up to the draw: penalties, logit bias, then (sampling at
        a temperature) top-k, top-p, min-p."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if _penalized(params):
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    self._n_vocab,
                    params.penalty_last_n,
                    params.repetition_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if bias:
            arr = (llama_cpp.llama_logit_bias * len(bias))(
                *(llama_cpp.llama_logit_bias(t, b) for t, b in bias)
            )
            add(chain, llama_cpp.llama_sampler_init_logit_bias(self._n_vocab, len(bias), arr))
        if not params.greedy:
            if params.top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        return chain

    def new_sampler(
        self, params: SamplingParams, *, llama_chain: bool = False
    ) -> LlamaCppSampler | NumpySampler:
        """A sampler for one sequence. Without penalties (they keep state) or a grammar, a
        numpy sampler over the logits row; anything else, or `llama_chain`, a llama.cpp
        sampler chain (the benchmark ceiling samples with llama.cpp's own, and tests compare
        the two)."""
        bias = self._bias(params)
        if not _penalized(params) and not params.constrained and not llama_chain:
            return NumpySampler(self._ctx, self._n_vocab, RowSampler(params, bias))
        chain = self._filter_chain(params, bias)
        add = llama_cpp.llama_sampler_chain_add
        if params.greedy:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        grammar = self._grammar(params)
        if grammar is None:
            return LlamaCppSampler(chain, self._ctx)
        constraint = self._constraint(params, grammar)
        if not constraint:
            llama_cpp.llama_sampler_free(chain)
            raise BackendError("the grammar for structured output failed to load")
        return LlamaCppSampler(chain, self._ctx, constraint, self._n_vocab)

    def chain_candidates(self, params: SamplingParams, row: int) -> list[int]:
        """The token ids llama.cpp's own logit-bias, top-k, top-p and min-p samplers keep on
        a batch row, without a draw (tests hold the numpy sampler to it)."""
        cands = np.zeros(self._n_vocab, dtype=_TOKEN_DATA)
        cands["id"] = np.arange(self._n_vocab, dtype=np.int32)
        cands["logit"] = _row_logits(self._ctx, row, self._n_vocab)
        data = cands.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        arr = llama_cpp.llama_token_data_array(data, self._n_vocab, -1, False)
        chain = self._filter_chain(params, self._bias(params))
        try:
            llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
            return sorted(int(arr.data[i].id) for i in range(arr.size))
        finally:
            llama_cpp.llama_sampler_free(chain)
