"""Converted checkpoints, kept by content: convert once, serve from the cache after.

An entry's key hashes what the GGUF depends on: each source file's name, size and SHA-256, the
converter's and llama.cpp's versions, and the quantization type. A changed file, a new
converter or another type is another key; a restart with the same inputs finds the entry.

An entry is a folder `<root>/<key[:24]>/` with `model.gguf` and `entry.json`. It is built in a
`.partial-<pid>-*` folder next to it and renamed into place whole, so a conversion that is
killed or fails leaves nothing a later start would trust (its partial folder is removed on
failure, or by the next conversion once its process is gone). Free disk space is checked
first. File hashes are remembered by (size, mtime) in `hashes.json`, so a restart does not
re-read gigabytes of unchanged weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from inferd.errors import ConfigError, ConversionFailed, ModelNotFound
from inferd.models.checkpoint import Checkpoint
from inferd.models.convert import OUTTYPES, convert_checkpoint, converter_version
from inferd.models.progress import LoadProgress, ProgressCallback

log = logging.getLogger(__name__)

MODEL_FILE = "model.gguf"
ENTRY_FILE = "entry.json"
HASHES_FILE = "hashes.json"
_PARTIAL = ".partial-"
_KEY_CHARS = 24
_FORMAT = 1  # bump when the layout or what the key covers changes
# bits per weight of each type, rounded up (K-quants keep some tensors wider); others: 8.5
_BITS = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 7, "q5_k_m": 6.5,
         "q5_k_s": 6, "q5_0": 6, "q5_1": 6.5, "q4_k_m": 6, "q4_k_s": 5.5, "q4_0": 5,
         "q4_1": 5.5}  # fmt: skip
_SLACK = 64 * 1024 * 1024  # metadata, tokenizer, rounding


class Quantizer(Protocol):
    """llama.cpp's quantizer (inferd.engine.backends.llamacpp.quantize.quantize)."""

    def __call__(
        self,
        src: Path,
        dst: Path,
        qtype: str,
        *,
        on_progress: Callable[[float, str], None] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class CacheEntry:
    key: str
    path: Path  # the GGUF file
    source: str  # the checkpoint folder it came from
    architecture: str
    quant: str
    size: int
    converter: str
    llama_cpp: str
    created: float  # unix time
    seconds: float  # how long the conversion took

    @property
    def short_key(self) -> str:
        return self.key[:_KEY_CHARS]


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


class ConvertCache:
    def __init__(
        self,
        root: Path,
        *,
        quantize: Quantizer | None = None,
        disk_free: Callable[[Path], int] = _free_bytes,
    ) -> None:
        """`quantize` turns the converter's f16/bf16 output into the other types (without it,
        only the converter's own types can be asked for); `disk_free` is the free-space probe."""
        self.root = root
        self._quantize = quantize
        self._disk_free = disk_free

    def get_or_convert(
        self,
        checkpoint: Checkpoint,
        quant: str = "f16",
        *,
        on_progress: ProgressCallback | None = None,
    ) -> CacheEntry:
        """The cached GGUF of `checkpoint` at `quant`, converted (and quantized) first unless an
        earlier run did. Blocking: call it off the event loop. Raises ConversionFailed."""
        started = time.monotonic()
        report = on_progress or (lambda _p: None)
        key = self.key(checkpoint, quant)
        found = self.lookup(key)
        if found is not None:
            log.info(
                "%s as %s: already converted (%s), nothing to convert (checked in %.2f s)",
                checkpoint.path.name, quant, found.path, time.monotonic() - started,
            )  # fmt: skip
            report(LoadProgress("done", 1.0, str(found.path)))
            return found
        if quant not in OUTTYPES and self._quantize is None:
            raise ConfigError(
                f"{quant!r} needs the llama.cpp quantizer; one of {OUTTYPES} does not"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()
        self._check_space(checkpoint, quant)
        log.info("converting %s (%s) to %s", checkpoint.path, checkpoint.architecture, quant)
        partial = Path(tempfile.mkdtemp(prefix=f"{_PARTIAL}{os.getpid()}-", dir=self.root))
        try:
            entry = self._build(checkpoint, quant, key, partial, report, started)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        log.info(
            "converted %s to %s in %.1f s: %s",
            checkpoint.path.name,
            quant,
            entry.seconds,
            entry.path,
        )
        report(LoadProgress("done", 1.0, str(entry.path)))
        return entry

    def key(self, checkpoint: Checkpoint, quant: str) -> str:
        hashes = self._hashes(checkpoint.files)
        inputs = {
            "format": _FORMAT,
            "files": [
                [f.name, f.stat().st_size, hashes[str(f.resolve())]] for f in checkpoint.files
            ],
            "converter": converter_version(),
            "llama_cpp": _llama_cpp_version(),
            "quant": quant,
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()

    def lookup(self, key: str) -> CacheEntry | None:
        """The complete entry for `key`, or None (an entry whose file does not match its record
        is not trusted, and is removed)."""
        folder = self.root / key[:_KEY_CHARS]
        entry = _read_entry(folder)
        if entry is None or entry.key != key:
            return None
        try:
            whole = entry.path.stat().st_size == entry.size
        except OSError:
            whole = False
        if not whole:
            log.warning("conversion cache: %s does not match its record; removing it", folder)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return entry

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, newest first."""
        if not self.root.is_dir():
            return []
        found = [_read_entry(d) for d in self.root.iterdir() if not d.name.startswith(".")]
        return sorted((e for e in found if e is not None), key=lambda e: e.created, reverse=True)

    def remove(self, key_prefix: str) -> CacheEntry:
        """Delete the entry whose key starts with `key_prefix` (at least 6 characters)."""
        matches = [e for e in self.entries() if e.key.startswith(key_prefix)]
        if len(key_prefix) < 6 or len(matches) != 1:
            why = "no" if not matches else "more than one" if len(matches) > 1 else "no unique"
            raise ModelNotFound(f"{why} converted model with key {key_prefix!r} in {self.root}")
        shutil.rmtree(matches[0].path.parent)
        return matches[0]

    # ---- building an entry ----------------------------------------------------------------

    def _build(
        self,
        checkpoint: Checkpoint,
        quant: str,
        key: str,
        partial: Path,
        report: ProgressCallback,
        started: float,
    ) -> CacheEntry:
        out = partial / MODEL_FILE
        if quant in OUTTYPES:
            convert_checkpoint(checkpoint, out, quant, on_progress=report)
        else:
            assert self._quantize is not None
            wide = partial / "unquantized.gguf"
            convert_checkpoint(checkpoint, wide, "auto", on_progress=report)

            def progress(fraction: float, line: str) -> None:
                report(LoadProgress("quantizing", fraction, line))

            try:
                self._quantize(wide, out, quant, on_progress=progress)
            except Exception as exc:
                raise ConversionFailed(
                    f"quantizing {checkpoint.path.name} to {quant}: {exc}"
                ) from exc
            wide.unlink()
        entry = CacheEntry(
            key=key,
            path=self.root / key[:_KEY_CHARS] / MODEL_FILE,
            source=str(checkpoint.path.resolve()),
            architecture=checkpoint.architecture,
            quant=quant,
            size=out.stat().st_size,
            converter=converter_version(),
            llama_cpp=_llama_cpp_version(),
            created=time.time(),
            seconds=round(time.monotonic() - started, 3),
        )
        record = {**asdict(entry), "path": MODEL_FILE}
        _write_atomic(partial / ENTRY_FILE, json.dumps(record, indent=2))
        try:
            partial.rename(entry.path.parent)
        except OSError:  # another process finished the same conversion first: use its entry
            found = self.lookup(key)
            if found is None:
                raise
            shutil.rmtree(partial, ignore_errors=True)
            return found
        return entry

    def _check_space(self, checkpoint: Checkpoint, quant: str) -> None:
        needed = estimate_bytes(checkpoint, quant)
        free = self._disk_free(self.root)
        if free < needed:
            raise ConversionFailed(
                f"not enough disk space in {self.root} to convert {checkpoint.path.name} to "
                f"{quant}: about {_gib(needed)} needed, {_gib(free)} free"
            )

    def _sweep(self) -> None:
        """Remove partial folders whose process is gone (killed mid-conversion)."""
        for d in self.root.glob(f"{_PARTIAL}*"):
            pid = d.name[len(_PARTIAL) :].split("-", 1)[0]
            if not (pid.isdigit() and _alive(int(pid))):
                log.info("conversion cache: removing %s, left by an interrupted conversion", d.name)
                shutil.rmtree(d, ignore_errors=True)

    def _hashes(self, files: tuple[Path, ...]) -> dict[str, str]:
        """SHA-256 of each file, remembered by (size, mtime) across runs."""
        memo_path = self.root / HASHES_FILE
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
        out: dict[str, str] = {}
        changed = False
        for f in files:
            name, st = str(f.resolve()), f.stat()
            stamp = [st.st_size, st.st_mtime_ns]
            known = memo.get(name)
            if isinstance(known, list) and known[:2] == stamp:
                out[name] = known[2]
                continue
            out[name] = _sha256(f)
            memo[name] = [*stamp, out[name]]
            changed = True
        if changed:
            self.root.mkdir(parents=True, exist_ok=True)
            _write_atomic(memo_path, json.dumps(memo))
        return out


def gguf_bytes(checkpoint: Checkpoint, quant: str) -> int:
    """About how large the GGUF of `checkpoint` at `quant` will be."""
    return int(checkpoint.n_params * _BITS.get(quant, 8.5) / 8)


def estimate_bytes(checkpoint: Checkpoint, quant: str) -> int:
    """Disk a conversion needs at its peak: the GGUF at `quant`, plus the 16-bit file it is
    quantized from when the converter cannot write `quant` itself."""
    wide = 0 if quant in OUTTYPES else checkpoint.n_params * 2
    return int((gguf_bytes(checkpoint, quant) + wide) * 1.05) + _SLACK


def _read_entry(folder: Path) -> CacheEntry | None:
    try:
        record = json.loads((folder / ENTRY_FILE).read_text())
        return CacheEntry(**{**record, "path": folder / MODEL_FILE})
    except (OSError, ValueError, TypeError):
        return None


def _llama_cpp_version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
