"""Splitting a thinking model's text into reasoning and content, delta by delta."""

from __future__ import annotations

import pytest

from inferd.api.pipeline.reasoning import ReasoningSplitter, Split, opens_section


def split_all(deltas: list[str], *, inside: bool = False) -> tuple[str, str]:
    s = ReasoningSplitter(inside=inside)
    parts = [s.feed(d) for d in deltas] + [s.flush()]
    return "".join(p.reasoning for p in parts), "".join(p.content for p in parts)


TEXT = "<think>\nLet me see.\n</think>\n\nThe answer is 4."


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_any_cut_gives_the_same_split(size: int) -> None:
    deltas = [TEXT[i : i + size] for i in range(0, len(TEXT), size)]
    assert split_all(deltas) == ("\nLet me see.\n", "The answer is 4.")


def test_no_section_is_all_content() -> None:
    assert split_all(["Hello", " <think> is a tag"]) == ("", "Hello <think> is a tag")
    assert split_all(["  ", "<thi", "nk>x</think>y"]) == ("x", "y")
    assert split_all(["<th", "is"]) == ("", "<this")


def test_a_prompt_that_opened_the_section() -> None:
    assert split_all(["Hmm, two", " and two.</th", "ink>Four."], inside=True) == (
        "Hmm, two and two.",
        "Four.",
    )
    # cut off inside the section: everything is reasoning, the partial tag too
    assert split_all(["still thinking </thi"], inside=True) == ("still thinking </thi", "")


def test_a_tag_held_back_never_leaks() -> None:
    s = ReasoningSplitter(inside=True)
    assert s.feed("abc</") == Split(reasoning="abc")
    assert s.feed("think>") == Split()
    assert s.feed("\n\nok") == Split(content="ok")


def test_opens_section() -> None:
    assert opens_section("<|im_start|>assistant\n<think>\n")
    assert not opens_section("<|im_start|>assistant\n")
    assert not opens_section("<think>x</think>")
