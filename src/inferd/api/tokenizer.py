"""The tokenizer as a service, for clients that count or build prompts themselves:
`POST /tokenize`, `POST /detokenize` (llama-server's and vLLM's shapes, both accepted) and
`GET /tokenizer_info` (vLLM's, which lm-evaluation-harness's `tokenizer_backend=remote`
reads). The model's own tokenizer, through its engine: the ids it runs."""

from __future__ import annotations

from inferd.api.native import schemas as s
from inferd.errors import InvalidRequest
from inferd.models.registry import LoadedModel


async def tokenize(model: LoadedModel, body: s.TokenizeBody) -> s.TokenizeResult:
    """The text's ids. `add_special` defaults to what each server does: llama-server's
    false for `content`, vLLM's true for `prompt`."""
    if (body.content is None) == (body.prompt is None):
        raise InvalidRequest("give the text as either content or prompt", param="prompt")
    text = body.content if body.content is not None else body.prompt
    assert text is not None
    add_special = body.add_special if body.add_special is not None else body.prompt is not None
    engine = model.engine
    ids = await engine.tokenize(text, add_special=add_special, parse_special=body.parse_special)
    shown = body.with_pieces or body.return_token_strs  # control tokens as their text
    pieces = [engine.token_bytes(t, special=True) for t in ids] if shown else []
    return s.TokenizeResult(
        tokens=[s.TokenPiece(id=t, piece=_piece(p)) for t, p in zip(ids, pieces, strict=True)]
        if body.with_pieces
        else ids,
        count=len(ids),
        max_model_len=engine.info.n_ctx,
        token_strs=[p.decode("utf-8", "replace") for p in pieces]
        if body.return_token_strs
        else None,
    )


def detokenize(model: LoadedModel, body: s.DetokenizeBody) -> s.DetokenizeResult:
    """The text of the ids, control tokens written out as their text (`<|im_end|>`), as
    llama-server's /detokenize and Hugging Face's `decode` write them."""
    n_vocab = model.engine.info.n_vocab
    bad = next((t for t in body.tokens if t >= n_vocab), None)
    if bad is not None:
        raise InvalidRequest(
            f"tokens holds token id {bad}, outside the vocabulary (0..{n_vocab - 1})",
            param="tokens",
        )
    text = model.engine.detokenize(body.tokens, special=True)
    return s.DetokenizeResult(content=text, prompt=text)


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
