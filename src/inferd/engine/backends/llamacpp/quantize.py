"""llama.cpp's own quantizer (`llama_model_quantize`), GGUF in, GGUF out.

`quantize` runs it in a child process (this module as a script, by `inferd.child`); the child's per-
tensor log lines (`[ 12/ 272] blk.1.attn_q.weight ...`) become progress. This module calls llama_cpp
only in the child. The types it writes are `inferd.config.QUANT_TYPES`, the values the `quantize`
setting takes.
"""

from __future__ import annotations

import ctypes
import re
import sys
from collections.abc import Callable
from pathlib import Path

from inferd import child
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

    def line(text: str) -> None:
        m = _TENSOR.search(text)
        if m and on_progress is not None:
            on_progress(int(m[1]) / max(int(m[2]), 1), text)

    end = child.run(cmd, line, keep=20)
    if end.killed:
        raise QuantizeError(f"the quantizer was killed by {end.killed}")
    if end.code != 0:
        last = [t for t in end.tail if not _TENSOR.search(t)][-3:] or list(end.tail)[-3:]
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
