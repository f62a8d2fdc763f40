"""The tokenizer as a service, for clients that count or build prompts themselves:
`POST /tokenize`, `POST /detokenize` (llama-server's and vLLM's shapes, both accepted) and
`GET /tokenizer_info` (vLLM's, which lm-evaluation-harness's `tokenizer_backend=remote`
reads). The model's own tokenizer, through its engine: the ids it runs.

A request holds at most `s.MAX_TOKENIZER_IDS` ids, in or out (a 400 names the parameter), and its
pieces, text and JSON are built off the event loop: a 16 MiB body of ids must not stall
other requests' streams."""

from __future__ import annotations

import asyncio

from fastapi import Response

from inferd.api.native import schemas as s
from inferd.errors import InvalidRequest
from inferd.models.registry import LoadedModel


def _json(result: s.TokenizeResult | s.DetokenizeResult) -> Response:
    return Response(result.model_dump_json(), media_type="application/json")


async def tokenize(model: LoadedModel, body: s.TokenizeBody) -> Response:
    """The text's ids. `add_special` defaults to what each server does: llama-server's
    false for `content`, vLLM's true for `prompt`."""
    if (body.content is None) == (body.prompt is None):
        raise InvalidRequest("give the text as either content or prompt", param="prompt")
    text = body.content if body.content is not None else body.prompt
    assert text is not None
    add_special = body.add_special if body.add_special is not None else body.prompt is not None
    engine = model.engine
    ids = await engine.tokenize(text, add_special=add_special, parse_special=body.parse_special)
    if len(ids) > s.MAX_TOKENIZER_IDS:
        raise InvalidRequest(
            f"the text is {len(ids)} tokens; /tokenize takes at most {s.MAX_TOKENIZER_IDS}",
            param="prompt" if body.prompt is not None else "content",
        )
    return await asyncio.to_thread(_tokenized, model, body, ids)


def _tokenized(model: LoadedModel, body: s.TokenizeBody, ids: list[int]) -> Response:
    engine = model.engine
    shown = body.with_pieces or body.return_token_strs  # control tokens as their text
    pieces = [engine.token_bytes(t, special=True) for t in ids] if shown else []
    return _json(
        s.TokenizeResult(
            tokens=[s.TokenPiece(id=t, piece=_piece(p)) for t, p in zip(ids, pieces, strict=True)]
            if body.with_pieces
            else ids,
            count=len(ids),
            max_model_len=engine.info.n_ctx,
            token_strs=[p.decode("utf-8", "replace") for p in pieces]
            if body.return_token_strs
            else None,
        )
    )


async def detokenize(model: LoadedModel, body: s.DetokenizeBody) -> Response:
    """The text of the ids, control tokens written out as their text (`<|im_end|>`), as
    llama-server's /detokenize and Hugging Face's `decode` write them."""
    return await asyncio.to_thread(_detokenized, model, body)


def _detokenized(model: LoadedModel, body: s.DetokenizeBody) -> Response:
    n_vocab = model.engine.info.n_vocab
    bad = next((t for t in body.tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise InvalidRequest(
            f"tokens holds token id {bad}, outside the vocabulary (0..{n_vocab - 1})",
            param="tokens",
        )
    text = model.engine.detokenize(body.tokens, special=True)
    return _json(s.DetokenizeResult(content=text, prompt=text))


def tokenizer_info(model: LoadedModel) -> s.TokenizerInfo:
    info = model.engine.info
    return s.TokenizerInfo(
        model=model.name,
        bos_token=info.bos_token or None,
        eos_token=info.eos_token or None,
        add_bos_token=info.add_bos,
        vocab_size=info.n_vocab,
        model_max_length=info.n_ctx,
        chat_template=model.template.source,
    )


def _piece(data: bytes) -> str | list[int]:
    """A token's text, or its bytes when they are not whole UTF-8 (part of a character)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)
