from inferd.engine.detokenizer import Detokenizer


def byte_piece(token: int) -> bytes:
    return bytes([token])


def feed(detok: Detokenizer, data: bytes) -> tuple[list[str], bool]:
    out = []
    for b in data:
        text, stopped = detok.add(b)
        out.append(text)
        if stopped:
            return out, True
    out.append(detok.flush())
    return out, False


def test_multibyte_characters_split_across_tokens_come_out_whole() -> None:
    text = "héllo → 世界 🎉"
    chunks, stopped = feed(Detokenizer(byte_piece), text.encode())
    assert not stopped
    assert "".join(chunks) == text
    # every emitted chunk is valid on its own: no replacement characters anywhere
    assert all("\ufffd" not in c for c in chunks)
    # the 4-byte emoji is emitted in one piece, not spread over several chunks
    assert "🎉" in chunks


def test_stop_string_split_across_tokens_is_never_emitted() -> None:
    chunks, stopped = feed(Detokenizer(byte_piece, ("STOP",)), b"abc STOP def")
    assert stopped
    assert "".join(chunks) == "abc "


def test_partial_stop_match_is_released_when_it_turns_out_not_to_be_one() -> None:
    chunks, stopped = feed(Detokenizer(byte_piece, ("STOP",)), b"a STORY")
    assert not stopped
    assert "".join(chunks) == "a STORY"
    # while "STO" could still become "STOP" it is held back
    assert chunks[:5] == ["a", " ", "", "", ""]


def test_earliest_of_several_stop_strings_wins() -> None:
    chunks, stopped = feed(Detokenizer(byte_piece, ("world", "lo w")), b"hello world")
    assert stopped
    assert "".join(chunks) == "hel"


def test_held_text_is_flushed_at_the_end() -> None:
    chunks, stopped = feed(Detokenizer(byte_piece, ("xyz",)), b"abcxy")
    assert not stopped
    assert "".join(chunks) == "abcxy"
    assert chunks[-1] == "xy"


def test_stop_string_with_multibyte_characters() -> None:
    chunks, stopped = feed(Detokenizer(byte_piece, ("été",)), "un été chaud".encode())
    assert stopped
    assert "".join(chunks) == "un "


def test_invalid_utf8_becomes_replacement_characters() -> None:
    chunks, _ = feed(Detokenizer(byte_piece), b"a\xffb")
    assert "".join(chunks) == "a\ufffdb"


def test_a_character_cut_off_by_the_end_is_dropped_not_replaced() -> None:
    # a length limit after the first 2 bytes of a 4-byte emoji: the text ends before it
    detok = Detokenizer(byte_piece)
    out = [detok.add(b)[0] for b in "hi 😊".encode()[:-2]]
    assert "".join(out) == "hi "
    assert detok.flush() == ""


def test_a_cut_character_is_dropped_behind_held_stop_text() -> None:
    detok = Detokenizer(byte_piece, ("xyz",))
    out = [detok.add(b)[0] for b in b"abx" + "é".encode()[:1]]
    assert "".join(out) + detok.flush() == "abx"
