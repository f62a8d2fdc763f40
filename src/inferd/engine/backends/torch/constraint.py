"""Constrained decoding on torch logits with llguidance: a model's compiled grammars, each
sequence's matcher, and a step's token masks, computed in one batch for the sequences that
have a grammar (the others cost nothing).

A sequence's matcher follows its generated tokens: it is fed each token as it is sampled,
and rebuilt from the generated tokens whenever they are not the ones it was fed (a
sequence whose tokens were rolled back, or whose last one was replaced), so the next token
is always constrained by what the sequence holds. Following costs the same at every step
however long the answer: it compares how many tokens were fed and the last of them, never
the whole answer. A preempted sequence keeps its tokens and its sampler, so it goes on
where it was. A lazy grammar (tool_choice auto) costs nothing until
its trigger text appears in the output: until then there is no matcher and no mask, and
the output is free as on llama.cpp (special tokens included); from the token where the
trigger begins, the matcher takes over.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import llguidance
import llguidance.hf
import llguidance.numpy
import numpy as np

from inferd.engine.backends.torch.grammar import lark
from inferd.engine.types import SamplingParams
from inferd.errors import InvalidRequest

# compiled grammars kept per model, by grammar text
_CACHE = 64
# "at 2(8): " before llguidance's message: a place in the grammar text, which the client
# never saw
_PLACE = re.compile(r"^at \d+\(\d+\): ")


class Grammars:
    """One model's llguidance tokenizer (built at load: about a second for a 150k-token
    vocabulary), its compiled grammars and a step's masks. `check` may be called from any
    thread; `constraint` and `masked` from the core thread."""

    def __init__(
        self, tokenizer: Any, n_vocab: int, eog: Iterable[int], piece: Callable[[int], bytes]
    ) -> None:
        """`tokenizer`: the model's fast Hugging Face tokenizer (ValueError for another);
        `piece`: the bytes a token adds to the text (`tokens.Tokens.piece`)."""
        self._tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=n_vocab, eos_token=sorted(eog)
        )
        self._n_vocab = n_vocab
        self._piece = piece
        self._compiled: dict[str, llguidance.LLMatcher] = {}
        self._lock = threading.Lock()
        self._executor = llguidance.LLExecutor()

    def _template(self, params: SamplingParams) -> llguidance.LLMatcher | None:
        """A fresh matcher of the request's grammar (compiled once, then copied), or None for
        free text. InvalidRequest: llguidance cannot compile it."""
        text = lark(params)
        if text is None:
            return None
        with self._lock:
            matcher = self._compiled.get(text)
        if matcher is None:
            matcher = llguidance.LLMatcher(self._tokenizer, text, log_level=0)
            if matcher.is_error():
                first = matcher.get_error().splitlines()[0] if matcher.get_error() else ""
                detail = _PLACE.sub("", first)[:200] or "it does not compile"
                raise InvalidRequest(
                    f"the JSON schema cannot be used for structured output: {detail}"
                )
            with self._lock:
                if len(self._compiled) >= _CACHE:
                    self._compiled.pop(next(iter(self._compiled)), None)
                self._compiled[text] = matcher
        return matcher

    def check(self, params: SamplingParams) -> None:
        self._template(params)

    def constraint(self, params: SamplingParams) -> Constraint | None:
        template = self._template(params)
        if template is None:
            return None
        trigger = params.tagged.trigger if params.tagged is not None else None
        return Constraint(template, trigger.encode() if trigger else None, self._piece)

    def masked(
        self, logits: np.ndarray, rows: list[tuple[int, llguidance.LLMatcher]]
    ) -> np.ndarray:
        """Copies of the `logits` rows named, each with the tokens its matcher disallows
        at -inf (the raw rows stay as they are: log probabilities are read from them)."""
        bitmask = llguidance.numpy.allocate_token_bitmask(len(rows), self._n_vocab)
        matchers = [(m, k) for k, (_, m) in enumerate(rows)]
        llguidance.numpy.fill_next_token_bitmask_par(self._executor, matchers, bitmask)
        allowed = np.unpackbits(
            bitmask.view(np.uint8), axis=1, count=self._n_vocab, bitorder="little"
        ).view(bool)
        return np.where(allowed, logits[[i for i, _ in rows]], np.float32(-np.inf))


class Constraint:
    """One sequence's grammar state, following its generated tokens (see the module's
    docstring). Core thread only."""

    __slots__ = ("_matcher", "_piece", "_starts", "_template", "_text", "_tokens", "_trigger")

    def __init__(
        self,
        template: llguidance.LLMatcher,
        trigger: bytes | None,
        piece: Callable[[int], bytes],
    ) -> None:
        self._template = template
        self._trigger = trigger
        self._piece = piece
        self._tokens: list[int] = []  # the generated tokens fed so far
        self._text = bytearray()  # before the trigger: the text so far
        self._starts: list[int] = []  # ... and where each token's bytes start in it
        self._matcher = None if trigger else template.deep_copy()

    def follow(self, tokens: Sequence[int], start: int = 0) -> llguidance.LLMatcher | None:
        """Bring the state to the sequence's generated tokens, `tokens[start:]` (its prompt
        before `start`). The matcher that constrains the next token, or None while a lazy
        grammar's trigger has not appeared."""
        fed = self._tokens
        if len(tokens) - start < len(fed) or (fed and tokens[start + len(fed) - 1] != fed[-1]):
            self._tokens, self._text, self._starts = [], bytearray(), []
            self._matcher = None if self._trigger else self._template.deep_copy()
        for i in range(start + len(self._tokens), len(tokens)):
            self._feed(tokens[i])
        return self._matcher

    def accept(self, token: int, row: np.ndarray) -> int:
        """The token sampled from `row` (masked when `follow` gave a matcher), fed. Should
        the logit bias or penalties have left no allowed token, the allowed one with the
        highest logit instead."""
        if self._matcher is not None and row[token] == -np.inf:
            token = int(row.argmax())
        self._feed(token)
        return token

    def _feed(self, token: int) -> None:
        self._tokens.append(token)
        if self._matcher is not None:
            # a token the grammar rejects leaves the matcher in error, where it allows only
            # end-of-generation: the answer ends
            self._matcher.consume_token(token)
            return
        assert self._trigger is not None
        start = len(self._text)
        self._starts.append(start)
        self._text += self._piece(token)
        at = self._text.find(self._trigger, max(0, start - len(self._trigger) + 1))
        if at < 0:
            return
        first = bisect.bisect_right(self._starts, at) - 1  # the token the trigger begins in
        self._matcher = self._template.deep_copy()
        self._matcher.consume_tokens(self._tokens[first:])
        self._text, self._starts = bytearray(), []
