"""The models directory: the .gguf files (and checkpoint folders) in it and the aliases file
beside them.

This is the one place that reads or writes that directory (the registry, the Ollama copy and
delete routes and the `inferd models` commands all go through it). Nothing here follows a
client-supplied name outside the directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from inferd.errors import InvalidRequest
from inferd.models.checkpoint import is_checkpoint_dir

log = logging.getLogger(__name__)

ALIASES_FILE = "aliases.json"
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
        try:
            data = json.loads(self.aliases_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.aliases_path, exc)
            return {}
        raw = data.get("aliases") if isinstance(data, dict) else None
        if not isinstance(raw, dict):
            return {}
        return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}

    def _save_aliases(self, aliases: dict[str, str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"aliases": dict(sorted(aliases.items()))}, indent=2) + "\n"
        atomic_write(self.aliases_path, body.encode())

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
