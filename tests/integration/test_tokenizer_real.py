"""The tokenizer routes on the bundled model: the ids are the engine's own, special-token
text is parsed only when asked, pieces put back together give the text, and detokenize
inverts tokenize."""

from __future__ import annotations

import pytest

from tests.conftest import AppHandle

pytestmark = pytest.mark.model

TEXT = "Hello world! Ça va? 🦙 naïve"


async def test_the_ids_are_the_engines(real: AppHandle) -> None:
    engine = real.engine()
    text = f"{TEXT}<|im_end|>"
    special = (await real.client.post("/tokenize", json={"content": text})).json()
    assert special["tokens"] == await engine.tokenize(text, add_special=False, parse_special=True)
    assert special["count"] == len(special["tokens"]) and special["max_model_len"] > 0
    plain = (
        await real.client.post("/tokenize", json={"content": text, "parse_special": False})
    ).json()["tokens"]
    assert plain == await engine.tokenize(text, add_special=False, parse_special=False)
    # the special token's text: one id parsed, several as plain text
    assert len(plain) > len(special["tokens"])
    vllm = (await real.client.post("/tokenize", json={"prompt": text})).json()["tokens"]
    assert vllm == await engine.tokenize(text, add_special=True, parse_special=True)


async def test_pieces_give_back_the_text(real: AppHandle) -> None:
    r = await real.client.post("/tokenize", json={"content": TEXT, "with_pieces": True})
    pieces = r.json()["tokens"]
    data = b"".join(
        p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces
    )
    assert data == TEXT.encode()
    # the llama is split into byte tokens: some pieces are bytes, not text
    assert any(isinstance(p["piece"], list) for p in pieces)


async def test_detokenize_inverts_tokenize(real: AppHandle) -> None:
    ids = (await real.client.post("/tokenize", json={"content": TEXT})).json()["tokens"]
    r = await real.client.post("/detokenize", json={"tokens": ids})
    assert r.status_code == 200 and r.json() == {"content": TEXT, "prompt": TEXT}
