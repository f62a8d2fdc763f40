"""POST /tokenize, POST /detokenize and GET /tokenizer_info on the fake backend (a token is
a byte + 1): both servers' shapes, the limits every route has (keys, body size, a model
outside a key's list), bad input. The real vocabulary: tests/integration/test_tokenizer_real.py."""

from __future__ import annotations

from typing import Any

import pytest

from inferd.config import Settings
from tests.conftest import FakeFactory


async def test_tokenize_in_both_shapes(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        r = await h.client.post("/tokenize", json={"content": "hé"})
        assert r.status_code == 200, r.text
        ids = [b + 1 for b in "hé".encode()]
        assert r.json() == {"tokens": ids, "count": 3, "max_model_len": 512, "token_strs": None}
        r = await h.client.post("/tokenize", json={"prompt": "hé", "return_token_strs": True})
        assert r.json()["tokens"] == ids and r.json()["token_strs"] == ["h", "\ufffd", "\ufffd"]
        r = await h.client.post("/tokenize", json={"content": "hé", "with_pieces": True})
        # a piece that is part of a character comes as its bytes
        assert r.json()["tokens"] == [
            {"id": ids[0], "piece": "h"},
            {"id": ids[1], "piece": [0xC3]},
            {"id": ids[2], "piece": [0xA9]},
        ]


async def test_detokenize_in_both_shapes(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        ids = [b + 1 for b in "hé".encode()]
        r = await h.client.post("/detokenize", json={"tokens": ids})
        assert r.status_code == 200 and r.json() == {"content": "hé", "prompt": "hé"}


async def test_tokenizer_info(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        r = await h.client.get("/tokenizer_info")
        assert r.status_code == 200, r.text
        info = r.json()
        assert info["model"] == "fake" and info["eos_token"] == "</s>"
        assert info["model_max_length"] == 512 and info["chat_template"]
        assert (await h.client.get("/tokenizer_info?model=nope")).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"content": "a", "prompt": "b"}, "prompt"),
        ("/tokenize", {"content": 5}, "content"),
        ("/tokenize", {"content": "a", "add_special": "yes"}, "add_special"),
        ("/detokenize", {"tokens": [1, 100000]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),  # outside the vocabulary, as 100000
        ("/detokenize", {"tokens": "12"}, "tokens"),
    ],
)
async def test_bad_input_is_a_400_naming_the_parameter(
    fake_app: FakeFactory, path: str, body: dict[str, Any], param: str
) -> None:
    async with fake_app() as h:
        r = await h.client.post(path, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


async def test_an_unknown_model_is_a_404(fake_app: FakeFactory) -> None:
    async with fake_app() as h:
        r = await h.client.post("/tokenize", json={"model": "nope", "content": "a"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"


async def test_keys_and_body_size_apply(fake_app: FakeFactory) -> None:
    async with fake_app(Settings(require_auth=True, max_body_bytes=1024)) as h:
        for path, body in (("/tokenize", {"content": "a"}), ("/detokenize", {"tokens": [1]})):
            assert (await h.client.post(path, json=body)).status_code == 401
        assert (await h.client.get("/tokenizer_info")).status_code == 401
    async with fake_app(Settings(max_body_bytes=1024)) as h:
        r = await h.client.post("/tokenize", json={"content": "a" * 2000})
        assert r.status_code == 413


async def test_a_control_token_detokenizes_to_its_text(fake_app: FakeFactory) -> None:
    """/detokenize writes a control token out (the fake's EOS, id 0, is `</s>`); an answer
    never does."""
    async with fake_app() as h:
        r = await h.client.post("/detokenize", json={"tokens": [ord("h") + 1, 0]})
        assert r.json() == {"content": "h</s>", "prompt": "h</s>"}
        assert h.engine().detokenize([ord("h") + 1, 0]) == "h"


async def test_a_request_holds_a_bounded_number_of_ids(fake_app: FakeFactory) -> None:
    """/detokenize refuses more ids than MAX_TOKENIZER_IDS (the OpenAPI document says so:
    maxItems) and a whole float is an id; /tokenize refuses a text of more tokens."""
    from inferd.api.native.schemas import MAX_TOKENIZER_IDS

    async with fake_app() as h:
        r = await h.client.post("/detokenize", json={"tokens": [1] * (MAX_TOKENIZER_IDS + 1)})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens", r.text
        r = await h.client.post("/detokenize", json={"tokens": [1.0, 2]})
        assert r.status_code == 200, r.text
        r = await h.client.post("/detokenize", json={"tokens": [1.5]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens[0]", r.text
        r = await h.client.post("/tokenize", json={"content": "a " * (MAX_TOKENIZER_IDS + 8)})
        assert r.status_code == 400 and r.json()["error"]["param"] == "content", r.text
        schema = (await h.client.get("/openapi.json")).json()["components"]["schemas"]
        assert schema["DetokenizeBody"]["properties"]["tokens"]["maxItems"] == MAX_TOKENIZER_IDS
        assert schema["TokenizeBody"]["oneOf"] == [
            {"required": ["content"]},
            {"required": ["prompt"]},
        ]
