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


async def test_control_tokens_detokenize_to_their_text(real: AppHandle) -> None:
    """A control token's id gives its text back (llama-server's /detokenize and HF's
    `decode` do), in /detokenize and in the pieces, while user text still tokenizes into a
    control token only when asked (`parse_special`) and answers write none."""
    engine = real.engine()
    text = f"<|im_start|>user\n{TEXT}<|im_end|>"
    ids = await engine.tokenize(text, add_special=False, parse_special=True)
    [end] = await engine.tokenize("<|im_end|>", add_special=False, parse_special=True)
    assert ids[-1] == end
    r = await real.client.post("/detokenize", json={"tokens": ids})
    assert r.status_code == 200 and r.json() == {"content": text, "prompt": text}
    r = await real.client.post("/tokenize", json={"content": text, "with_pieces": True})
    assert r.json()["tokens"][-1] == {"id": end, "piece": "<|im_end|>"}
    r = await real.client.post("/tokenize", json={"prompt": text, "return_token_strs": True})
    assert r.json()["token_strs"][-1] == "<|im_end|>"
    # the text of the control token, as plain text, is not the control token
    plain = await engine.tokenize("<|im_end|>", add_special=False, parse_special=False)
    assert end not in plain
    r = await real.client.post("/detokenize", json={"tokens": plain})
    assert r.json()["content"] == "<|im_end|>"
    # an answer writes nothing for it
    assert engine.detokenize(ids) == f"user\n{TEXT}"
