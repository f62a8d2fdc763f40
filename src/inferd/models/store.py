"""The models directory: the .gguf files (and checkpoint folders) in it and the aliases file
beside them.

This is the one place that reads or writes that directory (the registry, the Ollama copy and
delete routes and the `inferd models` commands all go through it). Nothing here follows a
client-supplied name outside the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from inferd.errors import InvalidRequest
from inferd.models.checkpoint import is_checkpoint_dir
from inferd.models.profile import ModelProfile

log = logging.getLogger(__name__)

ALIASES_FILE = "aliases.json"
PROFILES_FILE = "profiles.json"
BLOBS_DIR = "blobs"
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
PARTIAL_SUFFIX = ".partial"
# A name a client may create (an alias with /api/copy, a file with `inferd models pull --name`)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_FILE_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str, *, param: str, file: bool = False) -> str:
    """`name` when it is a usable model name (a file stem when `file`), else a 400."""
    pattern = _FILE_STEM if file else _NAME
    if not pattern.match(name) or ".." in name or name.endswith((".", "/", ":")):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise InvalidRequest(
            f"invalid model name {shown!r}: use letters, digits and . _ -"
            + ("" if file else " : /")
            + ", at most 128 characters",
            param=param,
        )
    return name


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class ModelStore:
    """A models directory. Files are `<name>.gguf` (or `<name>/`, a Hugging Face checkpoint);
    aliases live in `aliases.json`."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()

    # ---- files -------------------------------------------------------------------------

    def version(self) -> int | None:
        """Changes whenever a file is added, removed or renamed in the directory."""
        try:
            return self.root.stat().st_mtime_ns
        except OSError:
            return None

    def files(self) -> list[Path]:
        """The models directly in the directory, by name: .gguf files and Hugging Face
        checkpoint folders (hidden names, so partial downloads, excluded)."""
        try:
            found = [
                p
                for p in self.root.iterdir()
                if not p.name.startswith(".")
                and ((p.suffix == ".gguf" and p.is_file()) or is_checkpoint_dir(p))
            ]
        except OSError:
            return []
        return sorted(found)

    def contains(self, path: Path) -> bool:
        """`path` is a file directly inside the directory (symlinks not followed out)."""
        try:
            return path.parent.resolve() == self.root.resolve() and path.name != ""
        except OSError:
            return False

    def path_for(self, name: str) -> Path:
        """Where a model file called `name` lives (the name must be a valid file stem)."""
        check_name(name, param="name", file=True)
        return self.root / f"{name}.gguf"

    def remove_file(self, path: Path) -> None:
        """Delete a model file (or checkpoint folder) of the directory."""
        if not self.contains(path):
            raise InvalidRequest("only files in the models directory can be deleted")
        if is_checkpoint_dir(path) and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    # ---- aliases -----------------------------------------------------------------------

    @property
    def aliases_path(self) -> Path:
        return self.root / ALIASES_FILE

    def aliases(self) -> dict[str, str]:
        """alias -> model name, as saved by `set_alias`. A damaged file counts as empty."""
        raw = self._read(self.aliases_path, "aliases")
        return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}

    def _read(self, path: Path, key: str) -> dict[str, Any]:
        """The `key` table of a JSON file of the directory ({} when absent or damaged)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            return {}
        raw = data.get(key) if isinstance(data, dict) else None
        return raw if isinstance(raw, dict) else {}

    def _write(self, path: Path, key: str, table: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        body = json.dumps({key: dict(sorted(table.items()))}, indent=2) + "\n"
        atomic_write(path, body.encode())

    def _save_aliases(self, aliases: dict[str, str]) -> None:
        self._write(self.aliases_path, "aliases", aliases)

    def set_alias(self, alias: str, target: str) -> None:
        aliases = self.aliases()
        aliases[alias] = target
        self._save_aliases(aliases)

    def remove_aliases(self, *, alias: str | None = None, target: str | None = None) -> int:
        """Remove `alias`, or every alias of `target`. How many were removed."""
        aliases = self.aliases()
        keep = {
            k: v
            for k, v in aliases.items()
            if not (k == alias or (target is not None and v == target))
        }
        if len(keep) != len(aliases):
            self._save_aliases(keep)
        return len(aliases) - len(keep)

    # ---- profiles (what /api/create gives a model: template, system, parameters, ...) ----

    @property
    def profiles_path(self) -> Path:
        return self.root / PROFILES_FILE

    def profiles(self) -> dict[str, ModelProfile]:
        """model name -> its profile, as saved by `set_profile`."""
        raw = self._read(self.profiles_path, "profiles")
        return {k: ModelProfile.from_json(v) for k, v in raw.items() if isinstance(v, dict)}

    def set_profile(self, name: str, profile: ModelProfile) -> None:
        table = {k: p.to_json() for k, p in self.profiles().items()}
        table[name] = profile.to_json()
        self._write(self.profiles_path, "profiles", table)

    def remove_profile(self, name: str) -> None:
        profiles = self.profiles()
        if profiles.pop(name, None) is not None:
            self._write(
                self.profiles_path, "profiles", {k: p.to_json() for k, p in profiles.items()}
            )

    # ---- blobs (uploaded by /api/blobs, named by their SHA-256) --------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob `sha256:<hex>` lives (a 400 for anything else)."""
        m = _DIGEST.match(digest)
        if m is None:
            raise InvalidRequest(
                f"invalid digest {digest[:80]!r}: expected sha256:<64 hex digits>", param="digest"
            )
        return self.root / BLOBS_DIR / f"sha256-{m[1]}"

    @contextlib.contextmanager
    def blob_writer(self, digest: str) -> Iterator[BlobWriter]:
        """A writer for the blob `digest`: what is written is kept only when its SHA-256 is
        `digest` (a 400 otherwise), renamed into place whole."""
        dest = self.blob_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as f:
                writer = BlobWriter(f)
                yield writer
                f.flush()
                os.fsync(f.fileno())
            got = f"sha256:{writer.digest.hexdigest()}"
            if got != digest.replace("-", ":", 1):
                raise InvalidRequest(f"digest mismatch: the body's is {got}", param="digest")
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class BlobWriter:
    """Writes an uploaded blob, hashing it on the way."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._f.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)
