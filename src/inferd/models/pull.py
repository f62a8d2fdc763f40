"""Puts models into the models directory: a local .gguf copied or one downloaded over http(s)
(`pull`), a Hugging Face checkpoint converted through the conversion cache
(`pull_checkpoint`), a GGUF requantized (`requantize`).

The bytes go to a hidden `.NAME.gguf.partial` file (which scans skip), are checked (an
expected sha256, a valid GGUF header) and only then renamed into place, so a model file is
either whole or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from inferd.errors import InferdError, PullFailed
from inferd.models import checkpoint
from inferd.models.convert_cache import ConvertCache, Quantizer
from inferd.models.gguf_header import read_header
from inferd.models.progress import ProgressCallback
from inferd.models.store import PARTIAL_SUFFIX, ModelStore

# (bytes so far, total bytes when known)
Progress = Callable[[int, int | None], None]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Pulled:
    name: str
    path: Path
    size: int
    sha256: str


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def default_name(source: str) -> str:
    """The model name a source gets without --name: its file name's stem."""
    raw = unquote(urlparse(source).path) if is_url(source) else source
    return Path(raw).stem


@contextlib.contextmanager
def _download(url: str, timeout: float) -> Iterator[tuple[Iterator[bytes], int | None]]:
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as r:
            if r.status_code != 200:
                raise PullFailed(f"{url} answered HTTP {r.status_code}")
            length = r.headers.get("content-length")
            yield r.iter_bytes(_CHUNK), int(length) if length and length.isdigit() else None
    except httpx.HTTPError as exc:
        raise PullFailed(f"cannot download {url}: {exc}") from None


@contextlib.contextmanager
def _copy(path: Path) -> Iterator[tuple[Iterator[bytes], int | None]]:
    if not path.is_file():
        raise PullFailed(f"no such file: {path}")

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk

    yield chunks(), path.stat().st_size


def pull(
    source: str,
    store: ModelStore,
    *,
    name: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> Pulled:
    """Put `source` (a path or an http(s) URL) into `store` as `<name>.gguf`."""
    dest, partial = _partial(store, name or default_name(source), force)
    expected = sha256.lower().strip() if sha256 else None
    digest = hashlib.sha256()
    done = 0
    opened = _download(source, timeout) if is_url(source) else _copy(Path(source).expanduser())
    try:
        with opened as (chunks, total), partial.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done != total:
            raise PullFailed(f"got {done} bytes of {total}: the transfer was cut short")
        got = digest.hexdigest()
        if expected is not None and got != expected:
            raise PullFailed(f"sha256 mismatch: expected {expected}, got {got}")
        read_header(partial)  # raises InvalidModelFile for anything but a GGUF
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return Pulled(dest.stem, dest, done, got)


def _partial(store: ModelStore, name: str, force: bool) -> tuple[Path, Path]:
    """(where `name` goes, the hidden partial file to write first); PullFailed when taken."""
    dest = store.path_for(name)
    if dest.exists() and not force:
        raise PullFailed(f"{dest.name} is already in {store.root} (use --force to replace it)")
    store.root.mkdir(parents=True, exist_ok=True)
    return dest, dest.with_name(f".{dest.name}{PARTIAL_SUFFIX}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pull_checkpoint(
    folder: Path,
    store: ModelStore,
    cache: ConvertCache,
    *,
    quant: str,
    name: str,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
) -> Pulled:
    """Convert the checkpoint in `folder` at `quant` (or find it converted in `cache`) and put
    the GGUF into `store` as `<name>.gguf`: a hard link to the cached file where the two share
    a disk, else a copy. Blocking (minutes for a large model)."""
    dest, partial = _partial(store, name, force)
    entry = cache.get_or_convert(checkpoint.inspect(folder), quant, on_progress=on_progress)
    partial.unlink(missing_ok=True)
    try:
        try:
            os.link(entry.path, partial)
        except OSError:
            shutil.copyfile(entry.path, partial)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return Pulled(name, dest, entry.size, _sha256(dest))


def requantize(
    source: Path,
    store: ModelStore,
    quantize: Quantizer,
    qtype: str,
    *,
    name: str,
    force: bool = False,
    on_progress: Callable[[float, str], None] | None = None,
) -> Pulled:
    """Quantize the GGUF `source` to `qtype` with llama.cpp's quantizer, as `<name>.gguf` in
    `store` (next to the model it came from)."""
    dest, partial = _partial(store, name, force)
    try:
        try:
            quantize(source, partial, qtype, on_progress=on_progress)
        except (OSError, RuntimeError) as exc:
            raise PullFailed(f"quantizing {source.name} to {qtype}: {exc}") from None
        try:
            read_header(partial)
        except InferdError as exc:
            raise PullFailed(f"the quantizer wrote no valid GGUF: {exc.message}") from None
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return Pulled(name, dest, dest.stat().st_size, _sha256(dest))
