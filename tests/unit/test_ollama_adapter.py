"""The Ollama adapter's pure translations, and the model descriptions: no model, no server."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest

from inferd.api.ollama import adapter, prompt
from inferd.api.ollama import schemas as s
from inferd.api.pipeline.sampling import context_size, sampling_params
from inferd.config import ModelConfig, Settings
from inferd.engine.backends.base import ModelInfo
from inferd.engine.backends.fake import FakeBackend
from inferd.engine.types import FinishReason, SamplingParams, Usage
from inferd.errors import ContextTooLong, InvalidRequest, UnsupportedParameter
from inferd.models import describe
from inferd.models.spec import ModelSpec

N_CTX = 1024
INFO: ModelInfo = dataclasses.replace(FakeBackend().info, n_ctx=N_CTX)
SETTINGS = Settings()
PROMPT_LEN = 24
ROOM = N_CTX - PROMPT_LEN


def gen(**fields: Any) -> s.GenerateRequest:
    return s.GenerateRequest.model_validate({"model": "m", "prompt": "hi", **fields})


def chat(**fields: Any) -> s.ChatRequest:
    messages = [{"role": "user", "content": "hi"}]
    return s.ChatRequest.model_validate({"model": "m", "messages": messages, **fields})


def sampling(
    req: s.GenerateRequest | s.ChatRequest | None = None,
    prompt_len: int = PROMPT_LEN,
    info: ModelInfo = INFO,
    settings: Settings = SETTINGS,
    **options: Any,
) -> SamplingParams:
    if req is None:
        req = gen(options=options) if options else gen()
    return to_sampling(req, prompt_len, info, settings)


def to_sampling(
    req: s.GenerateRequest | s.ChatRequest,
    prompt_len: int = PROMPT_LEN,
    info: ModelInfo = INFO,
    settings: Settings = SETTINGS,
) -> SamplingParams:
    """The request through the Ollama adapter and the pipeline's context and sampling."""
    generation = adapter.generation(req)
    n_ctx = context_size(generation.options.n_ctx, info)
    return sampling_params(generation, prompt_len, info, settings, n_ctx)


# ---- keep_alive --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("10s", 10.0),
        ("1.5h", 5400.0),
        ("2h", 7200.0),
        ("1m30s", 90.0),
        ("1500us", 0.0015),
        ("-1", -1.0),
        ("-1m", -60.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("90", 90.0),
        ("2.5", 2.5),
        (" 5m ", 300.0),
        (0, 0.0),
        (-1, -1.0),
        (600, 600.0),
        (3.5, 3.5),
        (0.0, 0.0),
    ],
)
def test_parse_keep_alive(value: Any, seconds: float) -> None:
    parsed = adapter.parse_keep_alive(value)
    assert parsed is not None
    assert isinstance(parsed, float)
    assert math.isclose(parsed, seconds, abs_tol=1e-9)


@pytest.mark.parametrize("value", [None, ""])
def test_parse_keep_alive_default(value: Any) -> None:
    assert adapter.parse_keep_alive(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "soon",
        "5x",
        "m5",
        "ms",
        "5m garbage",
        "1h30",
        "--1",
        "5 minutes",
        "five",
        "1d",
        "h",
        "x" * 10_000,
    ],
)
def test_parse_keep_alive_garbage(value: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        adapter.parse_keep_alive(value)
    assert info.value.param == "keep_alive"
    assert len(info.value.message) < 120  # the echo is cut short


@pytest.mark.parametrize("value", [float("nan"), "nan", "NaN"])
def test_parse_keep_alive_nan_is_refused(value: Any) -> None:
    with pytest.raises(InvalidRequest):
        adapter.parse_keep_alive(value)


# ---- sampling: num_predict, num_ctx and the room left ------------------------------------------


@pytest.mark.parametrize("num_predict", [None, -1, -2, -1000])
def test_num_predict_unset_or_negative_fills_the_room(num_predict: int | None) -> None:
    options = {} if num_predict is None else {"num_predict": num_predict}
    assert sampling(**options).max_tokens == ROOM


def test_default_max_tokens_setting_applies_and_is_capped_by_the_room() -> None:
    assert sampling(settings=Settings(default_max_tokens=100)).max_tokens == 100
    assert sampling(settings=Settings(default_max_tokens=10 * N_CTX)).max_tokens == ROOM
    assert sampling(settings=Settings(default_max_tokens=100), num_predict=-1).max_tokens == 100


@pytest.mark.parametrize(
    ("num_predict", "expected"),
    [(1, 1), (16, 16), (ROOM, ROOM), (ROOM + 1, ROOM), (10**12, ROOM), (2**63, ROOM)],
)
def test_positive_num_predict_is_capped_at_the_room(num_predict: int, expected: int) -> None:
    assert sampling(num_predict=num_predict).max_tokens == expected


def test_num_predict_zero_is_refused() -> None:
    for req in (gen(options={"num_predict": 0}), chat(options={"num_predict": 0})):
        with pytest.raises(InvalidRequest) as info:
            to_sampling(req, PROMPT_LEN, INFO, SETTINGS)
        assert info.value.param == "options.num_predict"


@pytest.mark.parametrize("num_ctx", [N_CTX + 1, 10**9, 2**63 - 1])
def test_num_ctx_above_the_models_context_is_cut_to_it(
    num_ctx: int, caplog: pytest.LogCaptureFixture
) -> None:
    """As Ollama does (issue 23 item 13), with a log line."""
    with caplog.at_level(logging.WARNING, logger="inferd.api.pipeline.sampling"):
        assert sampling(num_ctx=num_ctx).max_tokens == ROOM
    (line,) = caplog.messages
    assert f"options.num_ctx {num_ctx} is above the model's context of {N_CTX}" in line


def test_num_ctx_limits_the_room() -> None:
    assert sampling(num_ctx=N_CTX).max_tokens == ROOM
    assert sampling(num_ctx=100, prompt_len=30).max_tokens == 70
    assert sampling(num_ctx=100, prompt_len=30, num_predict=500).max_tokens == 70
    assert sampling(num_ctx=100, prompt_len=30, num_predict=5).max_tokens == 5
    assert sampling(num_ctx=100, prompt_len=99).max_tokens == 1


@pytest.mark.parametrize(
    ("prompt_len", "num_ctx"),
    [(N_CTX, None), (N_CTX + 1, None), (10 * N_CTX, None), (100, 100), (101, 100)],
)
def test_prompt_that_fills_the_context_is_refused(prompt_len: int, num_ctx: int | None) -> None:
    options = {} if num_ctx is None else {"num_ctx": num_ctx}
    limit = num_ctx or N_CTX
    for req, param in ((gen(options=options), "prompt"), (chat(options=options), "messages")):
        with pytest.raises(ContextTooLong) as info:
            to_sampling(req, prompt_len, INFO, SETTINGS)
        assert info.value.param == param
        assert str(prompt_len) in info.value.message and str(limit) in info.value.message


def test_top_level_max_tokens_is_used_when_num_predict_is_absent() -> None:
    assert sampling(gen(max_tokens=7)).max_tokens == 7
    assert sampling(gen(max_tokens=10**9)).max_tokens == ROOM
    assert sampling(gen(max_tokens=7, options={"temperature": 0.5})).max_tokens == 7
    assert sampling(gen(max_tokens=7, options={"num_predict": 5})).max_tokens == 5
    assert sampling(gen(max_tokens=7, options={"num_predict": -1})).max_tokens == ROOM
    assert sampling(chat(max_tokens=3)).max_tokens == 3


# ---- sampling: the other options -------------------------------------------------------------


def test_options_are_mapped() -> None:
    sp = sampling(
        temperature=0.3,
        top_k=5,
        top_p=0.5,
        min_p=0.1,
        repeat_penalty=1.3,
        repeat_last_n=32,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        seed=42,
        stop=["a", "", "bc"],
        num_predict=9,
    )
    assert sp == SamplingParams(
        max_tokens=9,
        temperature=0.3,
        top_p=0.5,
        top_k=5,
        min_p=0.1,
        repetition_penalty=1.3,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        penalty_last_n=32,
        seed=42,
        stop=("a", "bc"),
    )


def test_defaults_without_options() -> None:
    settings = Settings(temperature=0.6, top_p=0.9, top_k=30, min_p=0.02)
    for req in (gen(), gen(options=None), gen(options={}), chat()):
        sp = to_sampling(req, PROMPT_LEN, INFO, settings)
        assert sp.temperature == 0.6 and sp.top_p == 0.9
        assert sp.top_k == 30 and sp.min_p == 0.02
        assert sp.repetition_penalty == 1.0
        assert sp.presence_penalty == 0.0 and sp.frequency_penalty == 0.0
        assert sp.penalty_last_n == 64
        assert sp.seed is None
        assert sp.stop == ()
        assert sp.logit_bias == () and not sp.ignore_eos


def test_zero_values_are_kept_not_replaced_by_defaults() -> None:
    sp = sampling(temperature=0.0, top_k=0, min_p=0.0, presence_penalty=0.0, seed=0)
    assert sp.temperature == 0.0 and sp.greedy
    assert sp.top_k == 0
    assert sp.min_p == 0.0
    assert sp.seed == 0


def test_repeat_last_n_minus_one_is_the_context() -> None:
    assert sampling(repeat_last_n=-1).penalty_last_n == N_CTX
    assert sampling(repeat_last_n=-1, num_ctx=256).penalty_last_n == 256


def test_repeat_last_n_zero_disables_the_window() -> None:
    assert sampling(repeat_last_n=0, repeat_penalty=1.2).penalty_last_n == 0


@pytest.mark.parametrize(
    ("seed", "expected"), [(-1, None), (-5, None), (7, 7), (2**32 + 5, 5), (2**40, 0)]
)
def test_seed(seed: int, expected: int | None) -> None:
    assert sampling(seed=seed).seed == expected


def test_top_level_aliases_are_used_when_options_are_absent() -> None:
    sp = sampling(gen(temperature=0.2, top_p=0.3))
    assert sp.temperature == 0.2 and sp.top_p == 0.3
    sp = sampling(gen(temperature=0.0))
    assert sp.temperature == 0.0
    sp = sampling(chat(temperature=1.5, top_p=0.7, options={"top_k": 3}))
    assert sp.temperature == 1.5 and sp.top_p == 0.7 and sp.top_k == 3


def test_options_win_over_top_level_aliases() -> None:
    sp = sampling(
        gen(temperature=0.2, top_p=0.3, max_tokens=50, options={"temperature": 0.9, "top_p": 0.8})
    )
    assert sp.temperature == 0.9 and sp.top_p == 0.8 and sp.max_tokens == 50
    sp = sampling(gen(temperature=0.2, options={"temperature": 0.0}))
    assert sp.temperature == 0.0


def test_unknown_options_are_ignored() -> None:
    req = gen(options={"num_thread": 4, "mirostat": 2, "numa": True, "num_gpu": 99, "top_k": 3})
    adapter.check_generate(req)
    sp = to_sampling(req, PROMPT_LEN, INFO, SETTINGS)
    assert sp.top_k == 3
    assert sp.max_tokens == ROOM


# ---- request checks ----------------------------------------------------------------------------


def deep(levels: int) -> dict[str, Any]:
    value: Any = {}
    for _ in range(levels):
        value = {"allOf": [value]}
    return value


@pytest.mark.parametrize("fmt", [["x"], 5, "yaml", {"type": 5}, {"$ref": "http://x"}, deep(17)])
def test_bad_format_is_a_400_naming_format(fmt: Any) -> None:
    for req, check in (
        (gen(format=fmt), adapter.check_generate),
        (chat(format=fmt), adapter.check_chat),
    ):
        with pytest.raises(InvalidRequest) as info:
            check(req)  # type: ignore[operator]
        assert info.value.param == "format"


def test_format_json_and_schema_reach_the_sampling_parameters() -> None:
    sp = to_sampling(chat(format="json"), PROMPT_LEN, INFO, SETTINGS)
    assert sp.json_mode and sp.json_schema is None
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    sp = to_sampling(gen(format=schema), PROMPT_LEN, INFO, SETTINGS)
    assert not sp.json_mode and sp.json_schema is not None
    assert json.loads(sp.json_schema) == schema
    sp = to_sampling(gen(), PROMPT_LEN, INFO, SETTINGS)
    assert not sp.constrained


def test_empty_format_is_accepted() -> None:
    for fmt in (None, ""):
        adapter.check_generate(gen(format=fmt))
        adapter.check_chat(chat(format=fmt))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"images": ["aGk="]}, "images"),
    ],
)
def test_generate_refuses_what_it_cannot_do(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        adapter.check_generate(gen(**fields))
    assert info.value.param == param


def test_generate_accepts_suffix_template_and_empty_images() -> None:
    # whether the model can insert, and whether the template parses, is for the route
    adapter.check_generate(gen(suffix="x", template="{{ .Prompt }}", images=[]))


def test_chat_takes_tools_and_refuses_images() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    adapter.check_chat(chat(tools=tools))
    assert adapter.generation(chat(tools=tools)).tools is not None
    adapter.check_chat(chat(tools=[]))
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "look", "images": ["aGk="]},
    ]
    with pytest.raises(UnsupportedParameter) as info:
        adapter.check_chat(chat(messages=messages))
    assert info.value.param == "messages[1].images"


def test_generate_and_chat_messages() -> None:
    assert prompt.generate_messages(gen(prompt="hi")) == [{"role": "user", "content": "hi"}]
    assert prompt.generate_messages(gen(prompt="hi", system="be brief")) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    req = chat(
        messages=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u", "extra": 1},
            {"role": "assistant", "content": "a", "tool_calls": []},
            {"role": "user"},
        ]
    )
    assert adapter.chat_messages(req) == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": ""},
    ]


# ---- the final chunk ---------------------------------------------------------------------------


def test_final_stats() -> None:
    started = time.perf_counter() - 2.0
    stats = adapter.final_stats(
        Usage(prompt_tokens=30, completion_tokens=8, cached_tokens=10), started, 0.5, 0.25
    )
    assert set(stats) == {
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    }
    assert all(type(v) is int for v in stats.values()), stats
    assert 2_000_000_000 <= stats["total_duration"] < 60_000_000_000
    assert stats["load_duration"] == 250_000_000
    assert stats["prompt_eval_count"] == 30  # the whole prompt, cached or not (as Ollama)
    assert stats["prompt_eval_duration"] == 500_000_000
    assert stats["eval_count"] == 8
    assert abs(stats["eval_duration"] - (stats["total_duration"] - 500_000_000)) <= 1


def test_final_stats_without_a_first_token_and_with_everything_cached() -> None:
    started = time.perf_counter() - 1.0
    stats = adapter.final_stats(
        Usage(prompt_tokens=5, completion_tokens=0, cached_tokens=5), started, None, 0.0
    )
    assert all(type(v) is int and v >= 0 for v in stats.values()), stats
    assert stats["prompt_eval_count"] == 5
    assert stats["eval_count"] == 0
    assert stats["load_duration"] == 0
    assert stats["eval_duration"] == 0
    assert stats["prompt_eval_duration"] == stats["total_duration"] >= 1_000_000_000


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (FinishReason.LENGTH, "length"),
        (FinishReason.STOP, "stop"),
        (FinishReason.ABORT, "stop"),
        (None, "stop"),
    ],
)
def test_done_reason(reason: FinishReason | None, expected: str) -> None:
    assert adapter.done_reason(reason) == expected


# ---- model descriptions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_params", "text"),
    [
        (134_515_008, "135M"),
        (135_000_000, "135M"),
        (360_000_000, "360M"),
        (1_500_000_000, "1.5B"),
        (1_000_000_000, "1B"),
        (1_711_376_384, "1.7B"),
        (7_241_732_096, "7.2B"),
        (70_000_000_000, "70B"),
        (70_553_706_496, "70.6B"),
        (405_000_000_000, "405B"),
        (0, "0"),
        (123_456, "123456"),
    ],
)
def test_parameter_size(n_params: int, text: str) -> None:
    assert describe.parameter_size(n_params) == text


@pytest.mark.parametrize(
    ("file_type", "name"),
    [
        ("0", "F32"),
        ("1", "F16"),
        ("2", "Q4_0"),
        ("3", "Q4_1"),
        ("7", "Q8_0"),
        ("15", "Q4_K_M"),
        ("18", "Q6_K"),
        ("32", "BF16"),
        ("999", "unknown"),
        ("-1", "unknown"),
        ("abc", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_quantization(file_type: str | None, name: str) -> None:
    meta = {} if file_type is None else {"general.file_type": file_type}
    assert describe.quantization(meta) == name


def test_family() -> None:
    assert describe.family({"general.architecture": "llama"}) == "llama"
    assert describe.family({}) == "unknown"


def test_model_info_drops_the_tokenizer_vocabulary() -> None:
    meta = {
        "general.architecture": "llama",
        "general.name": "SmolLM2",
        "general.file_type": "3",
        "llama.context_length": "8192",
        "llama.rope.freq_base": "100000.000000",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": "[...49152 tokens...]",
        "tokenizer.ggml.merges": "[...]",
        "tokenizer.ggml.bos_token_id": "1",
        "tokenizer.chat_template": "{% for m in messages %}{% endfor %}",
    }
    info = describe.model_info(meta, 134_515_008)
    assert not [k for k in info if k.startswith("tokenizer.ggml.")]
    assert "tokenizer.chat_template" not in info
    assert info["general.architecture"] == "llama"
    assert info["general.name"] == "SmolLM2"
    assert info["general.file_type"] == 3
    assert info["llama.context_length"] == 8192
    assert info["llama.rope.freq_base"] == "100000.000000"
    assert info["general.parameter_count"] == 134_515_008


# ---- file identity -----------------------------------------------------------------------------


def _spec(path: Path) -> ModelSpec:
    return ModelSpec("m", path, ModelConfig(path=path), ())


def test_digest_size_and_modified_at_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    spec = _spec(path)
    first = adapter.digest(spec)
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert adapter.digest(spec) == first
    assert adapter.file_size(spec) == 64
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", adapter.modified_at(spec))
    path.write_bytes(b"GGUF" + bytes(100))
    assert adapter.digest(spec) != first
    assert adapter.file_size(spec) == 104


def test_digest_size_and_modified_at_of_a_missing_file(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "gone.gguf")
    assert re.fullmatch(r"[0-9a-f]{64}", adapter.digest(spec))
    assert adapter.file_size(spec) == 0
    assert adapter.modified_at(spec) == "1970-01-01T00:00:00Z"


def test_now_rfc3339() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", adapter.now_rfc3339())
