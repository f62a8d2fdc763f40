"""The transformers backend's grammars (llguidance) on a byte-level tokenizer built here, no
model: JSON under a schema, JSON mode, tagged JSON for tool calls (framed, repeated, lazy
from a trigger), the batched masks, and a sequence's matcher following its tokens. The real
model runs them in tests/integration/test_torch_structured.py."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import pytest

from inferd.engine.structural import JsonTag, TaggedJson
from inferd.engine.types import SamplingParams
from inferd.errors import InvalidRequest

pytest.importorskip("llguidance", reason="needs the hf extra: pip install 'inferd[hf]'")
pytest.importorskip("transformers", reason="needs the hf extra: pip install 'inferd[hf]'")

from inferd.engine.backends.torch.constraint import Grammars
from inferd.engine.backends.torch.grammar import lark, tagged_lark
from inferd.engine.backends.torch.tokens import Tokens, _byte_decoder

EOS = 256
BOOKING = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome"]}, "nights": {"type": "integer"}},
    "required": ["city", "nights"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """One token per byte (ids 0-255), `<eos>` (256), and one added token of several
    characters, "ok <tool", so that a trigger can begin inside a token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    char = {b: c for c, b in _byte_decoder().items()}
    bpe = Tokenizer(models.BPE(vocab={char[b]: b for b in range(256)}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    hf.add_tokens(["ok <tool"])
    assert hf.eos_token_id == EOS
    return hf


@pytest.fixture(scope="module")
def grammars(tokenizer: Any) -> Grammars:
    tokens = Tokens(tokenizer, [EOS])
    return Grammars(tokenizer, len(tokenizer), tokens.eog, tokens.piece)


def ids(tokenizer: Any, text: str) -> list[int]:
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


def run(grammars: Grammars, tokenizer: Any, params: SamplingParams, text: str) -> Any:
    """The matcher after the text's tokens (None: a lazy grammar not triggered yet)."""
    constraint = grammars.constraint(params)
    assert constraint is not None
    return constraint.follow(ids(tokenizer, text))


def complete(grammars: Grammars, tokenizer: Any, params: SamplingParams, text: str) -> bool:
    """Whether the text is a whole answer: every token accepted, and end-of-generation
    allowed next."""
    matcher = run(grammars, tokenizer, params, text)
    return not matcher.is_error() and matcher.is_accepting()


def hermes(trigger: str | None, *, repeat: bool = True) -> TaggedJson:
    def tag(name: str, schema: dict[str, Any]) -> JsonTag:
        return JsonTag(
            f'<tool_call>\n{{"name": "{name}", "arguments": ', json.dumps(schema), "}\n</tool_call>"
        )

    weather = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    return TaggedJson(
        (tag("book", BOOKING), tag("weather", weather)),
        separator="\n",
        repeat=repeat,
        trigger=trigger,
    )


CALL = '<tool_call>\n{"name": "book", "arguments": {"city": "Rome", "nights": 3}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def test_json_schema_output_is_valid_json_with_at_most_one_space(
    grammars: Grammars, tokenizer: Any
) -> None:
    params = SamplingParams(json_schema=json.dumps(BOOKING))
    assert complete(grammars, tokenizer, params, '{"city": "Rome", "nights": 3}')
    assert complete(grammars, tokenizer, params, '{"city":"Paris","nights":12}')
    for bad in ('{"city": "Oslo", "nights": 3}', '{"city":  "Rome"', '{"nights": 3.5', "[1]"):
        assert run(grammars, tokenizer, params, bad).is_error(), bad
    # an answer is complete only with its required properties
    assert not complete(grammars, tokenizer, params, '{"city": "Rome"')


def test_json_mode_is_any_object(grammars: Grammars, tokenizer: Any) -> None:
    params = SamplingParams(json_mode=True)
    assert complete(grammars, tokenizer, params, '{"a": [1, {"b": null}], "c": "d"}')
    assert run(grammars, tokenizer, params, '["a"]').is_error()


def test_tags_frame_each_schema_repeat_with_the_separator_and_end(
    grammars: Grammars, tokenizer: Any
) -> None:
    params = SamplingParams(tagged=hermes(None))
    assert complete(grammars, tokenizer, params, CALL)
    assert complete(grammars, tokenizer, params, f"{CALL}\n{CALL2}")
    assert run(grammars, tokenizer, params, f"Sure. {CALL}").is_error()  # no text first
    assert run(grammars, tokenizer, params, CALL.replace("Rome", "Oslo")).is_error()
    assert run(grammars, tokenizer, params, f"{CALL} {CALL2}").is_error()  # the separator
    one = SamplingParams(tagged=hermes(None, repeat=False))
    assert run(grammars, tokenizer, one, CALL).is_stopped()  # nothing more but the end
    assert run(grammars, tokenizer, one, f"{CALL}\n").is_error()


def test_prefix_and_suffix_frame_the_calls(grammars: Grammars, tokenizer: Any) -> None:
    shape = TaggedJson(
        (JsonTag('{"name": "book", "arguments": ', json.dumps(BOOKING), "}"),),
        prefix="[TOOL_CALLS][",
        separator=", ",
        suffix="]",
        repeat=True,
        trigger="[TOOL_CALLS]",
    )
    call = '{"name": "book", "arguments": {"city": "Paris", "nights": 1}}'
    params = SamplingParams(tagged=shape)
    assert complete(grammars, tokenizer, params, f"Let me book. [TOOL_CALLS][{call}, {call}]")
    assert run(grammars, tokenizer, params, f"[TOOL_CALLS]{call}").is_error()


def test_a_lazy_grammar_is_free_until_its_trigger_and_binds_from_it(
    grammars: Grammars, tokenizer: Any
) -> None:
    params = SamplingParams(tagged=hermes("<tool_call>"))
    # before the trigger: no matcher, no mask, any text, special tokens included
    constraint = grammars.constraint(params)
    assert constraint is not None
    assert constraint.follow([*ids(tokenizer, "I'd say {not json} <tool"), EOS]) is None
    # the trigger may begin inside a token ("ok <tool" is one): the matcher takes the text
    # before it in that token as free, and binds what follows
    free = ids(tokenizer, f"Well, ok <tool_call>\n{CALL[12:]}")
    assert ids(tokenizer, "ok <tool")[0] in free
    matcher = constraint.follow(free)
    assert matcher is not None and not matcher.is_error() and matcher.is_accepting()
    assert complete(grammars, tokenizer, params, f"Sure.\n{CALL}\n{CALL2}")
    assert run(grammars, tokenizer, params, "Sure. <tool_call>\nhello").is_error()


def test_the_mask_allows_what_the_grammar_allows_and_end_when_done(
    grammars: Grammars, tokenizer: Any
) -> None:
    n = len(tokenizer)
    logits = np.arange(2 * n, dtype=np.float32).reshape(2, n)
    started = run(grammars, tokenizer, SamplingParams(json_schema=json.dumps(BOOKING)), '{"ci')
    done = run(grammars, tokenizer, SamplingParams(json_mode=True), "{}")
    rows = grammars.masked(logits, [(1, started), (0, done)])
    allowed = [set(np.flatnonzero(row > -np.inf).tolist()) for row in rows]
    assert allowed[0] == {ord("t")}  # "city" is the only property that starts "ci"
    assert allowed[1] == {EOS}
    assert rows[0][ord("t")] == logits[1][ord("t")]
    assert np.isfinite(logits).all()  # the raw rows are untouched (log probabilities)


def test_a_token_the_grammar_forbids_is_never_accepted(grammars: Grammars, tokenizer: Any) -> None:
    """Should the bias leave no allowed token, the best allowed one is taken instead."""
    constraint = grammars.constraint(SamplingParams(json_mode=True))
    assert constraint is not None
    matcher = constraint.follow([])
    assert matcher is not None
    n = len(tokenizer)
    (row,) = grammars.masked(np.zeros((1, n), dtype=np.float32), [(0, matcher)])
    assert constraint.accept(ord("x"), row) == ord("{")
    assert not matcher.is_error()


def test_the_matcher_follows_the_sequences_tokens(grammars: Grammars, tokenizer: Any) -> None:
    """Fed as sampled, and rebuilt from the generated tokens when they are not the ones fed
    (tokens rolled back or replaced)."""
    params = SamplingParams(json_schema=json.dumps(BOOKING))
    constraint = grammars.constraint(params)
    assert constraint is not None
    answer = ids(tokenizer, '{"city": "Rome", "nights": 3}')
    first = constraint.follow(answer[:4])
    assert first is not None
    for token in answer[4:12]:
        constraint.accept(token, np.zeros(len(tokenizer), dtype=np.float32))
    assert constraint.follow(answer[:12]) is first  # nothing to do
    other = ids(tokenizer, '{"city": "Paris", "nights": 22}')
    rebuilt = constraint.follow(other)  # replaced: from the start
    assert rebuilt is not first and rebuilt.is_accepting() and not rebuilt.is_error()
    rolled = constraint.follow(other[:5])  # rolled back
    assert rolled.validate_tokens(other[5:]) == len(other) - 5
    lazy = grammars.constraint(SamplingParams(tagged=hermes("<tool_call>")))
    assert lazy is not None
    calls = ids(tokenizer, f"Sure.\n{CALL}")
    assert lazy.follow(calls) is not None
    assert lazy.follow(calls[:3]) is None  # back before the trigger: free again


class Reads(Sequence[int]):
    """A sequence's tokens that count how many of them are read."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.reads = 0

    @overload
    def __getitem__(self, key: int) -> int: ...
    @overload
    def __getitem__(self, key: slice) -> list[int]: ...
    def __getitem__(self, key: int | slice) -> int | list[int]:
        got = self.tokens[key]
        self.reads += len(got) if isinstance(got, list) else 1
        return got

    def __iter__(self) -> Iterator[int]:
        for token in self.tokens:
            self.reads += 1
            yield token

    def __len__(self) -> int:
        return len(self.tokens)


def test_following_a_long_answer_reads_each_token_about_once(
    grammars: Grammars, tokenizer: Any
) -> None:
    """As the backend drives it, step by step: follow the sequence (prompt, then answer),
    sample, accept, append. The tokens read stay linear in the answer's length (comparing
    the whole answer at every step read ~n²/2: 2 million here)."""
    answer = ids(tokenizer, json.dumps({"values": list(range(400))}))
    assert len(answer) > 1500
    prompt = ids(tokenizer, "Some JSON, please.")
    tokens = Reads(list(prompt))
    constraint = grammars.constraint(SamplingParams(json_mode=True))
    assert constraint is not None
    free = np.zeros(len(tokenizer), dtype=np.float32)
    for token in answer:
        matcher = constraint.follow(tokens, len(prompt))
        assert matcher is not None and not matcher.is_error()
        tokens.tokens.append(constraint.accept(token, free))
    done = constraint.follow(tokens, len(prompt))
    assert done is not None and done.is_accepting()
    assert tokens.reads <= 2 * len(answer), tokens.reads


def test_a_schema_llguidance_cannot_enforce_is_refused_by_keyword(grammars: Grammars) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    with pytest.raises(InvalidRequest) as info:
        grammars.check(SamplingParams(json_schema=json.dumps(schema)))
    assert "uniqueItems" in info.value.message and "%json" not in info.value.message
    tool = JsonTag("<call>", json.dumps({"not": {"type": "string"}}), "</call>")
    with pytest.raises(InvalidRequest, match="not"):
        grammars.check(SamplingParams(tagged=TaggedJson((tool,))))
    grammars.check(SamplingParams())  # free text: nothing to compile


def test_the_grammar_text() -> None:
    assert lark(SamplingParams()) is None
    text = lark(SamplingParams(json_schema='{"type": "integer"}')) or ""
    assert 'start: %json {"type":"integer","x-guidance":{"whitespace_pattern":" ?"}}' in text
    lazy = tagged_lark(hermes("<tool_call>"))
    assert 'trigger[lazy]: TEXT "<tool_call>"' in lazy
    assert 'first_0: "\\n{\\"name\\": \\"book\\", \\"arguments\\": " value_0' in lazy
    assert 'shape: first ("\\n" tag)*' in lazy


def test_a_lazy_shape_starts_with_its_trigger() -> None:
    tag = JsonTag("<call>", "{}", "</call>")
    with pytest.raises(ValueError, match="trigger"):
        TaggedJson((tag,), trigger="<tool>")
    with pytest.raises(ValueError, match="trigger"):
        TaggedJson((tag,), prefix="[", trigger="<call>")
    TaggedJson((tag,), trigger="<ca")


def test_multiple_of_is_kept_as_on_llama_cpp(grammars: Grammars, tokenizer: Any) -> None:
    """llguidance keeps `multipleOf` within the bounds as the llama.cpp grammars do
    (tests/integration/test_multiple_of_real.py): the same values in and out. (It writes a
    fraction with all of multipleOf's decimals, `0.50`; llama.cpp's grammar takes `0.5` too.)"""
    integer = SamplingParams(
        json_schema=json.dumps({"type": "integer", "multipleOf": 7, "minimum": -50, "maximum": 100})
    )
    for n in range(-60, 111):
        assert complete(grammars, tokenizer, integer, str(n)) is (n % 7 == 0 and -50 <= n <= 100)
    number = SamplingParams(json_schema=json.dumps({"type": "number", "multipleOf": 0.25}))
    texts = {"1.25": True, "-0.75": True, "3": True, "0.50": True, "1.20": False, "0.30": False}
    for text, ok in texts.items():
        assert complete(grammars, tokenizer, number, text) is ok, text
