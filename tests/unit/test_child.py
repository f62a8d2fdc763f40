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
