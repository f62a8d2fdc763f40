"""`inferd run`'s conversation (cli/chat.py) over real HTTP: the app on the fake backend, served
by cli/local.py's in-process server, as `inferd run` serves one when no server is running."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest

from inferd.cli.chat import (
    HELP,
    Chat,
    go_duration,
    interact,
    parse_parameter,
    read_block,
    timings,
)
from inferd.cli.client import Client, ServerError
from inferd.cli.local import LocalServer
from tests.conftest import AppHandle, FakeFactory


def test_parameters_take_ollama_names_and_types() -> None:
    assert parse_parameter("temperature", ["0.2"]) == 0.2
    assert parse_parameter("num_predict", ["64"]) == 64
    assert parse_parameter("seed", ["-1"]) == -1
    assert parse_parameter("stop", ["<|im_end|>", "User:"]) == ["<|im_end|>", "User:"]
    with pytest.raises(ValueError, match=r"unknown parameter 'tempreature'.*temperature"):
        parse_parameter("tempreature", ["1"])
    with pytest.raises(ValueError, match=r"num_predict must be an integer, not '1\.5'"):
        parse_parameter("num_predict", ["1.5"])
    with pytest.raises(ValueError, match="top_p must be a number"):
        parse_parameter("top_p", ["high"])
    with pytest.raises(ValueError, match="no value given for seed"):
        parse_parameter("seed", [])
    with pytest.raises(ValueError, match="takes one value"):
        parse_parameter("top_k", ["1", "2"])


def reader(*typed: str) -> Any:
    """A `read(prompt)` that returns the typed lines, then Ctrl-D; it records the prompts."""
    it = iter(typed)
    prompts: list[str] = []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    read.prompts = prompts  # type: ignore[attr-defined]
    return read


def test_a_block_runs_to_the_line_that_ends_with_three_quotes() -> None:
    read = reader("second line", "", 'last line  """')
    assert read_block("first", read) == "first\nsecond line\n\nlast line  "
    assert read.prompts == ["... "] * 3
    assert read_block('one line"""', reader()) == "one line"
    assert read_block('"""', reader()) == ""


def test_durations_print_as_go_prints_them() -> None:
    # the strings Go's time.Duration.String() gives for these values
    assert go_duration(0) == "0s"
    assert go_duration(999) == "999ns"
    assert go_duration(1_500) == "1.5µs"
    assert go_duration(111_219) == "111.219µs"
    assert go_duration(12_345_678) == "12.345678ms"
    assert go_duration(2_101_430_083) == "2.101430083s"
    assert go_duration(2_000_000_000) == "2s"
    assert go_duration(61_500_000_000) == "1m1.5s"
    assert go_duration(3_600_000_000_000) == "1h0m0s"


def test_timings_are_ollama_verbose_lines() -> None:
    final = {
        "total_duration": 1_500_000_000,
        "load_duration": 2_000_000,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 130_000_000,
        "eval_count": 100,
        "eval_duration": 1_250_000_000,
    }
    assert timings(final) == (
        "total duration:       1.5s\n"
        "load duration:        2ms\n"
        "prompt eval count:    26 token(s)\n"
        "prompt eval duration: 130ms\n"
        "prompt eval rate:     200.00 tokens/s\n"
        "eval count:           100 token(s)\n"
        "eval duration:        1.25s\n"
        "eval rate:            80.00 tokens/s\n"
    )
    assert timings({"eval_count": 0}) == ""


@pytest.fixture
def served(fake_app: FakeFactory) -> Iterator[tuple[AppHandle, str]]:
    handle = fake_app(reply="The quick brown fox jumps.", step_delay=0.01)
    with LocalServer(handle.app) as server:
        yield handle, server.url


@pytest.fixture
def chat(served: tuple[AppHandle, str]) -> Iterator[Chat]:
    with Client(served[1]) as client:
        yield Chat(client, "fake", io.StringIO(), io.StringIO())


def out(chat: Chat) -> str:
    return chat.out.getvalue()  # type: ignore[attr-defined]


def backend(handle: AppHandle) -> Any:
    return handle.engine().backend


def test_an_answer_streams_and_the_conversation_grows(
    served: tuple[AppHandle, str], chat: Chat
) -> None:
    chat.load()
    chat.send("Hello?")
    assert out(chat) == "The quick brown fox jumps.\n"
    chat.send("Again?")
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert chat.messages[1]["content"] == "The quick brown fox jumps."
    assert chat.err.getvalue() == ""  # type: ignore[attr-defined]


def test_parameters_and_system_go_with_every_message(
    served: tuple[AppHandle, str], chat: Chat
) -> None:
    handle, _ = served
    chat.load()
    assert chat.command("/set parameter temperature 0.2", reader())
    assert chat.command("/set parameter num_predict 5", reader())
    assert chat.command('/set parameter stop "brown fox"', reader())
    assert chat.command("/set parameter top_p lots", reader())
    assert "Couldn't set parameter: top_p must be a number, not 'lots'" in out(chat)
    assert chat.command('/set system """You are', reader('terse."""'))
    assert chat.system == "You are\nterse."
    assert chat.options == {"temperature": 0.2, "num_predict": 5, "stop": ["brown fox"]}
    chat.out = io.StringIO()
    chat.send("Hi")
    params = backend(handle).sampling_seen[-1]
    assert params.temperature == 0.2
    assert params.max_tokens == 5
    assert out(chat) == "The q\n"  # five tokens (bytes) of the fake reply
    chat.command("/show parameters", reader())
    assert "temperature         0.2" in out(chat)


def test_verbose_prints_the_final_chunks_timings(chat: Chat) -> None:
    chat.load()
    chat.command("/set verbose", reader())
    chat.send("Hi")
    text = chat.err.getvalue()  # type: ignore[attr-defined]
    assert "eval count:           27 token(s)" in text  # 26 bytes and the end
    assert "eval rate:" in text and "total duration:" in text


def test_ctrl_c_stops_the_answer_and_the_server_stops_generating(fake_app: FakeFactory) -> None:
    handle = fake_app(reply="x" * 400, step_delay=0.02)
    with LocalServer(handle.app) as server, Client(server.url) as client:

        class Interrupting(io.StringIO):
            def write(self, text: str) -> int:
                if len(self.getvalue()) >= 10:
                    raise KeyboardInterrupt
                return super().write(text)

        chat = Chat(client, "fake", Interrupting(), io.StringIO())
        chat.load()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            chat.send("go on")
        assert time.monotonic() - started < 4  # the whole answer takes 8 s
        # the part shown stays in the conversation, and the chat goes on
        assert chat.messages[0] == {"role": "user", "content": "go on"}
        assert chat.messages[1]["content"] == "x" * 10
        engine = handle.engine()
        deadline = time.monotonic() + 5
        while engine.stats().running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.stats().running == 0  # the closed connection aborted the sequence


def test_interrupted_before_any_text_leaves_no_trace(chat: Chat) -> None:
    chat.load()

    class Interrupting(io.StringIO):
        def write(self, text: str) -> int:
            raise KeyboardInterrupt

    chat.out = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        chat.send("Hi")
    assert chat.messages == []


def test_server_errors_name_the_problem(chat: Chat) -> None:
    chat.model = "nope"
    with pytest.raises(ServerError, match="nope") as info:
        chat.load()
    assert info.value.status == 404
    chat.model = "fake"
    chat.load()
    chat.options["top_p"] = 7.0  # the server checks ranges: 400 naming the parameter
    with pytest.raises(ServerError, match="top_p"):
        chat.send("Hi")
    assert chat.messages == []


def test_the_chat_loop(chat: Chat) -> None:
    chat.load()
    read = reader(
        "/?",
        "Hello",
        '"""Two',
        'lines"""',
        "/show info",
        "/load nope",
        "/frobnicate",
        "/clear",
        "",
        "/set format json",
        "/bye",
        "never read",
    )
    interact(chat, read)
    text = out(chat)
    assert HELP in text
    assert text.count("The quick brown fox jumps.\n") == 2
    assert chat.messages == [] and "Cleared session context" in text
    assert 'error: model "nope" not found, try pulling it first' in text
    assert chat.model == "fake"  # a failed /load keeps the model
    assert "Unknown command '/frobnicate'. Type /? for help" in text
    assert "Model" in text and "architecture" in text
    assert chat.format == "json"
    assert read.prompts == [">>> "] * 3 + ["... "] + [">>> "] * 7


def test_ctrl_c_at_the_prompt_and_ctrl_d(chat: Chat) -> None:
    typed = iter(["Hi"])

    def read(prompt: str) -> str:
        try:
            return next(typed)
        except StopIteration:
            pass
        if not getattr(read, "interrupted", False):
            read.interrupted = True  # type: ignore[attr-defined]
            raise KeyboardInterrupt
        raise EOFError

    chat.load()
    interact(chat, read)
    assert "Use Ctrl + d or /bye to exit." in out(chat)
    assert len(chat.messages) == 2


def slow_app(load: Any) -> AppHandle:
    """An app whose one model loads through `load` (a startup load the server does not
    wait for: requests meanwhile answer 503)."""
    from pathlib import Path

    from inferd.config import ModelConfig, Settings
    from inferd.models.engines import BackendEngineFactory
    from inferd.models.registry import ModelRegistry
    from inferd.models.spec import ModelSpec

    spec = ModelSpec("slow", Path("slow.gguf"), ModelConfig(path=Path("slow.gguf")), ())
    return AppHandle(Settings(), ModelRegistry([spec], BackendEngineFactory(load)))


def test_loading_waits_for_a_load_under_way() -> None:
    from inferd.engine.backends.fake import FakeBackend

    def load(spec: Any) -> FakeBackend:
        time.sleep(1.0)
        return FakeBackend(reply="ready")

    with LocalServer(slow_app(load).app) as server, Client(server.url) as client:
        chat = Chat(client, "slow", io.StringIO(), io.StringIO())
        started = time.monotonic()
        chat.load()
        assert time.monotonic() - started >= 0.5
        chat.send("Hi")
        assert out(chat) == "ready\n"


def test_a_failed_load_says_why() -> None:
    def load(spec: Any) -> Any:
        time.sleep(0.3)
        from inferd.errors import BackendError

        raise BackendError("the weights are corrupt")

    with LocalServer(slow_app(load).app) as server, Client(server.url) as client:
        chat = Chat(client, "slow", io.StringIO(), io.StringIO())
        with pytest.raises(ServerError, match=r"'slow' failed to load: .*the weights are corrupt"):
            chat.load()
