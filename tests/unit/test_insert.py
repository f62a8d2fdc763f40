"""Fill in the middle above the engine, on the fake backend (bytes are tokens: id = byte + 1),
and the llama.cpp kv_overrides array. The real model's behaviour is in
tests/integration/test_fim_real.py."""

from __future__ import annotations

from typing import Any

import llama_cpp
import pytest

from inferd.engine.backends.base import ModelInfo
from inferd.engine.backends.llamacpp.loading import kv_override_array
from inferd.errors import BackendError
from tests.conftest import FakeFactory

FIM = (250, 251, 252)  # the bytes 249..251 stand for FIM_PRE, FIM_SUF, FIM_MID


def text_ids(text: str) -> list[int]:
    return [b + 1 for b in text.encode()]


def info(pre: int, suf: int, mid: int) -> ModelInfo:
    return ModelInfo(
        n_vocab=10,
        n_ctx=16,
        max_seqs=1,
        max_batch_tokens=16,
        prefill_per_decode=0,
        n_ctx_train=16,
        add_bos=False,
        bos_token="",
        eos_token="",
        chat_template=None,
        fim_pre=pre,
        fim_suf=suf,
        fim_mid=mid,
    )


def test_insert_needs_all_three_tokens() -> None:
    assert info(1, 2, 3).supports_insert
    assert info(0, 1, 2).supports_insert  # id 0 is a token like any other
    for partial in ((-1, 2, 3), (1, -1, 3), (1, 2, -1), (-1, -1, -1)):
        assert not info(*partial).supports_insert


async def test_ollama_generate_builds_the_psm_prompt(fake_app: FakeFactory) -> None:
    async with fake_app(fim=FIM) as h:
        body: dict[str, Any] = {"model": "fake", "prompt": "ab", "suffix": "cd", "stream": False}
        r = await h.client.post("/api/generate", json=body)
        assert r.status_code == 200, r.text
        expected = [FIM[0], *text_ids("ab"), FIM[1], *text_ids("cd"), FIM[2]]
        out = r.json()
        assert out["context"][: len(expected)] == expected
        assert out["prompt_eval_count"] == len(expected)
        # system has no place in it: ignored
        r = await h.client.post("/api/generate", json={**body, "system": "be nice"})
        assert r.json()["context"][: len(expected)] == expected
        show = await h.client.post("/api/show", json={"model": "fake"})
        assert show.json()["capabilities"] == ["completion", "tools", "insert"]


async def test_openai_completions_build_the_psm_prompt(fake_app: FakeFactory) -> None:
    async with fake_app(fim=FIM) as h:
        body = {"model": "fake", "prompt": ["ab", "xyz"], "suffix": "cd", "max_tokens": 3}
        r = await h.client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        # two prompts, each its own FIM prompt: 3 + 2 + 2 and 3 + 3 + 2 tokens
        assert r.json()["usage"]["prompt_tokens"] == 7 + 8
        assert len(r.json()["choices"]) == 2


@pytest.mark.parametrize("path", ["/api/generate", "/v1/completions"])
async def test_without_fim_tokens_a_suffix_is_refused(fake_app: FakeFactory, path: str) -> None:
    async with fake_app() as h:
        body = {"model": "fake", "prompt": "ab", "suffix": "cd", "stream": False}
        r = await h.client.post(path, json=body)
        assert r.status_code == 400, r.text
        if path.startswith("/api/"):
            assert r.json() == {
                "error": "fake does not support insert: suffix needs a model with "
                "fill-in-the-middle tokens"
            }
        else:
            assert r.json()["error"]["param"] == "suffix"
        show = await h.client.post("/api/show", json={"model": "fake"})
        assert show.json()["capabilities"] == ["completion", "tools"]


def test_kv_override_array_holds_each_type_and_ends_with_an_empty_key() -> None:
    arr = kv_override_array(
        [("a.int", -5), ("a.bool", True), ("a.float", 0.25), ("a.str", "héllo")]
    )
    assert len(arr) == 5
    tags = [e.tag for e in arr[:4]]
    assert tags == [
        llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT,
        llama_cpp.LLAMA_KV_OVERRIDE_TYPE_BOOL,
        llama_cpp.LLAMA_KV_OVERRIDE_TYPE_FLOAT,
        llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR,
    ]
    assert [e.key for e in arr[:4]] == [b"a.int", b"a.bool", b"a.float", b"a.str"]
    assert arr[0].value.val_i64 == -5
    assert arr[1].value.val_bool is True
    assert arr[2].value.val_f64 == 0.25
    assert arr[3].value.val_str == "héllo".encode()
    assert arr[4].key == b""  # llama.cpp stops at the first empty key


@pytest.mark.parametrize(
    "pair", [("", 1), ("k" * 128, 1), ("k", "v" * 128)], ids=["empty-key", "long-key", "long-str"]
)
def test_kv_override_array_refuses_what_does_not_fit(pair: tuple[str, Any]) -> None:
    with pytest.raises(BackendError):
        kv_override_array([pair])
