"""Copies a local .gguf or downloads one over http(s) into the models directory.

The bytes go to a hidden `.NAME.gguf.partial` file (which scans skip), are hashed on the
way, checked against an expected sha256 and for a valid GGUF header, and only then renamed
into place, so a model file is either whole or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from inferd.errors import PullFailed
from inferd.models.gguf_header import read_header
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
    name = name or default_name(source)
    dest = store.path_for(name)
    if dest.exists() and not force:
        raise PullFailed(f"{dest.name} is already in {store.root} (use --force to replace it)")
    expected = sha256.lower().strip() if sha256 else None
    store.root.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}{PARTIAL_SUFFIX}")
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
    return Pulled(name, dest, done, got)
