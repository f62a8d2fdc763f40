"""inferd.child: a tool in a child process, its lines as they come, how it ended."""

from __future__ import annotations

import sys

from inferd import child


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_lines_split_at_newlines_and_carriage_returns() -> None:
    seen: list[str] = []
    code = "import sys; sys.stdout.write('a\\nWriting: 10%\\rWriting: 20%\\r\\n\\nb'); sys.exit(3)"
    end = child.run(python(code), seen.append, keep=2)
    assert seen == ["a", "Writing: 10%", "Writing: 20%", "b"]
    assert end.code == 3 and end.killed is None
    assert end.tail == ("Writing: 20%", "b")


def test_stderr_is_read_with_stdout_and_bad_utf8_is_replaced() -> None:
    seen: list[str] = []
    code = "import sys; sys.stderr.buffer.write(b'err \\xff\\n'); sys.stderr.flush()"
    end = child.run(python(code), seen.append)
    assert end.code == 0 and seen == ["err \ufffd"]


def test_a_killed_child_names_the_signal() -> None:
    end = child.run(python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), print)
    assert end.killed == "SIGKILL (out of memory?)"
    end = child.run(python("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"), print)
    assert end.killed == "SIGTERM"


def test_output_without_newlines_is_cut_into_bounded_lines_and_stdin_is_closed() -> None:
    seen: list[str] = []
    code = "import sys; sys.stdout.write('x' * 300000); sys.stdout.write(sys.stdin.read())"
    end = child.run(python(code), seen.append)
    assert end.code == 0
    assert "".join(seen) == "x" * 300000
    assert max(len(line) for line in seen) <= 2 * 65536


def test_a_signal_without_a_name_is_named_by_number() -> None:
    assert child.Exit(-40, ()).killed == "signal 40"
