"""A Hugging Face tokenizer as the engine needs it: token ids in, the bytes each generated
token adds to the text out (so the engine's incremental detokenizer, which holds back split
UTF-8 sequences and stop strings, works the same as on llama.cpp)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from inferd.errors import BackendError

_FIM = (
    ("<fim_prefix>", "<|fim_prefix|>", "<PRE>"),
    ("<fim_suffix>", "<|fim_suffix|>", "<SUF>"),
    ("<fim_middle>", "<|fim_middle|>", "<MID>"),
)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, reversed: the printable character standing for each
    byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class Tokens:
    """Tokenization and each token's bytes for one model (thread-safe after construction)."""

    def __init__(self, tokenizer: Any, eos_ids: Iterable[int]) -> None:
        self._tok = tokenizer
        self.n_vocab = len(tokenizer)
        special = {int(t) for t in tokenizer.all_special_ids}
        special |= {
            int(i) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special
        }
        self.eog = frozenset(int(t) for t in eos_ids if t is not None)
        self._pieces = self._piece_table(special)
        control = sorted(special)
        names = tokenizer.convert_ids_to_tokens(control)
        self._control = {i: n.encode("utf-8") for i, n in zip(control, names, strict=True) if n}
        self.bos_id = tokenizer.bos_token_id
        self.bos_token = tokenizer.bos_token or ""
        self.eos_token = tokenizer.eos_token or ""
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.add_bos = self.bos_id is not None and bool(probe) and probe[0] == self.bos_id
        vocab = tokenizer.get_vocab()
        self.fim = tuple(next((vocab[n] for n in names if n in vocab), -1) for names in _FIM)

    def _piece_table(self, special: set[int]) -> list[bytes]:
        """Bytes per token id: byte-level BPE characters mapped back to bytes, SentencePiece's
        `▁` as a space and `<0xNN>` as that byte; control tokens give none."""
        tok = self._tok
        names = tok.convert_ids_to_tokens(list(range(self.n_vocab)))
        decoder = _byte_decoder()
        decoder_kind = type(getattr(getattr(tok, "backend_tokenizer", None), "decoder", None))
        byte_level = decoder_kind.__name__ == "ByteLevel"
        pieces: list[bytes] = []
        for i, name in enumerate(names):
            if i in special or name is None:
                pieces.append(b"")
            elif byte_level and all(c in decoder for c in name):
                pieces.append(bytes(decoder[c] for c in name))
            elif len(name) == 6 and name.startswith("<0x") and name.endswith(">"):
                pieces.append(bytes([int(name[3:5], 16)]))
            elif not byte_level:
                pieces.append(name.replace("▁", " ").encode("utf-8"))
            else:  # an added, non-special token: its text as written
                pieces.append(name.encode("utf-8"))
        return pieces

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        try:
            out = self._tok(
                text, add_special_tokens=add_special, split_special_tokens=not parse_special
            )
        except Exception as exc:
            raise BackendError(f"tokenization failed: {exc}") from None
        return [int(t) for t in out["input_ids"]]

    def piece(self, token: int) -> bytes:
        return self._pieces[token] if 0 <= token < len(self._pieces) else b""

    def text(self, token: int) -> bytes:
        """The piece, with a control token written out as its text."""
        return self._control.get(token) or self.piece(token)
