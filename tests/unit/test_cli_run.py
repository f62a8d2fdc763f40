"""`inferd run`'s choices before any conversation: what to send, and which server."""

from __future__ import annotations

import io

import pytest

from inferd.cli.client import ServerError
from inferd.cli.run import _prompt, connect
from inferd.config import Settings


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_what_to_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", Terminal())
    assert _prompt(None) is None  # a terminal and no words: a chat
    assert _prompt(["Why", "is", "the", "sky", "blue?"]) == "Why is the sky blue?"
    monkeypatch.setattr("sys.stdin", io.StringIO("a diff\n"))
    assert _prompt(None) == "a diff\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("a diff\n"))
    assert _prompt(["Summarise:"]) == "a diff\n Summarise:"  # stdin first, as ollama run
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert _prompt(None) == ""  # nothing piped: an empty message, which run refuses


def test_a_remote_server_that_does_not_answer_is_an_error() -> None:
    settings = Settings(host="http://192.0.2.1:9")  # TEST-NET-1: nothing answers there
    refused = pytest.raises(ServerError, match=r"no inferd server answers at http://192\.0\.2\.1:9")
    with refused, connect(settings, "smollm2"):
        pass
