"""llama.cpp's own quantizer (`llama_model_quantize`), GGUF in, GGUF out.

`quantize` runs it in a child process (this module as a script), so a crash or an
out-of-memory kill fails one conversion, not the server; the child's per-tensor log lines
(`[  12/ 272] blk.1.attn_q.weight ...`) become progress. This module calls llama_cpp only in
the child. The types it writes are `inferd.config.QUANT_TYPES`, the values the `quantize`
setting takes.
"""

from __future__ import annotations

import ctypes
import re
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from inferd.config import QUANT_TYPES

_TENSOR = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")

# fraction done (0..1), and the log line it came from
QuantizeProgress = Callable[[float, str], None]


class QuantizeError(RuntimeError):
    """The quantizer failed; the message says why (its last log lines, or the signal)."""


def quantize(
    src: Path,
    dst: Path,
    qtype: str,
    *,
    threads: int = 0,
    on_progress: QuantizeProgress | None = None,
) -> None:
    """Quantize the GGUF `src` into `dst` as `qtype` (one of QUANT_TYPES), in a child process;
    an already quantized `src` is requantized.
    `threads` <= 0: all cores. Raises QuantizeError; `dst` may be left half written (the
    caller writes to a temporary name)."""
    if qtype not in QUANT_TYPES:
        raise QuantizeError(f"unknown quantization type {qtype!r}; one of {', '.join(QUANT_TYPES)}")
    cmd = [sys.executable, "-m", __name__, str(src), str(dst), qtype, str(threads)]
    tail: deque[str] = deque(maxlen=20)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            tail.append(line)
            m = _TENSOR.search(line)
            if m and on_progress is not None:
                on_progress(int(m[1]) / max(int(m[2]), 1), line)
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc < 0:
        name = signal.Signals(-rc).name
        hint = " (out of memory?)" if -rc == signal.SIGKILL else ""
        raise QuantizeError(f"the quantizer was killed by {name}{hint}")
    if rc != 0:
        last = [t for t in tail if not _TENSOR.search(t)][-3:] or list(tail)[-3:]
        raise QuantizeError(f"the quantizer failed ({'; '.join(last)})")


def _ftype(qtype: str) -> int:
    import llama_cpp

    name = "LLAMA_FTYPE_ALL_F32" if qtype == "f32" else f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}"
    return int(getattr(llama_cpp, name))


def _main(src: str, dst: str, qtype: str, threads: str) -> int:
    import llama_cpp

    @llama_cpp.llama_log_callback
    def log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        sys.stderr.write(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _ftype(qtype)
    params.nthread = int(threads)
    params.allow_requantize = True  # a quantized GGUF may be requantized (with some loss)
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    sys.stderr.flush()
    if rc != 0:
        print(f"llama_model_quantize returned {rc}", file=sys.stderr)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.exit(_main(*sys.argv[1:5]))
