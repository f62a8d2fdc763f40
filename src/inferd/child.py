"""A tool run in a child process (the checkpoint converter, llama.cpp's quantizer): a crash or
an out-of-memory kill fails that run, not the server. Its output lines (split at newlines and
at progress bars' carriage returns) go to a callback as they come; the last few are kept for
the error message."""

from __future__ import annotations

import codecs
import os
import re
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO


@dataclass(frozen=True)
class Exit:
    """How a child ended: its exit code (negative: the signal that killed it) and its last
    output lines."""

    code: int
    tail: tuple[str, ...]

    @property
    def killed(self) -> str | None:
        """The killing signal's name, with a hint for SIGKILL (the OOM killer's); None when it
        exited by itself."""
        if self.code >= 0:
            return None
        try:
            name = signal.Signals(-self.code).name
        except ValueError:  # a signal without a name (a real-time one)
            name = f"signal {-self.code}"
        return f"{name} (out of memory?)" if -self.code == signal.SIGKILL else name


def run(
    cmd: list[str],
    on_line: Callable[[str], None],
    *,
    env: Mapping[str, str] | None = None,
    keep: int = 40,
) -> Exit:
    """Run `cmd` to its end (stdout and stderr together), passing each non-empty line to
    `on_line`. The child is killed if the caller is interrupted."""
    tail: deque[str] = deque(maxlen=keep)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    with proc:  # closes the pipe
        try:
            assert proc.stdout is not None
            for line in _lines(proc.stdout):
                tail.append(line)
                on_line(line)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Exit(code, tuple(tail))


_LONGEST = 65536  # a line longer than this goes on in a new one


def _lines(stream: IO[bytes]) -> Iterator[str]:
    decoder, buf = codecs.getincrementaldecoder("utf-8")("replace"), ""
    while chunk := os.read(stream.fileno(), 65536):
        *done, buf = re.split(r"[\r\n]", buf + decoder.decode(chunk))
        if len(buf) > _LONGEST:  # a child writing without newlines: bounded
            done.append(buf)
            buf = ""
        yield from (d.strip() for d in done if d.strip())
    if buf.strip():
        yield buf.strip()
