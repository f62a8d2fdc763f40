"""`org/repo:file.gguf` specs resolved in the local Hugging Face cache, never over the network.

The cache layout is huggingface_hub's: `<hub>/models--org--repo/refs/main` names a commit and
`<hub>/models--org--repo/snapshots/<commit>/<file>` is the file (usually a symlink into blobs/).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from inferd.errors import ConfigError

_SPEC = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<file>[\w.-]+(?:/[\w.-]+)*\.gguf)$")


def is_hf_spec(text: str) -> bool:
    """`org/repo:file.gguf` (the file may sit in a folder of the repo; no `..`)."""
    m = _SPEC.match(text)
    return m is not None and ".." not in text


def hub_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where huggingface_hub keeps models: HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache."""
    env = os.environ if env is None else env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def resolve(spec: str, env: Mapping[str, str] | None = None) -> Path:
    """The cached file for `org/repo:file.gguf`: the snapshot `refs/main` points at, else the
    newest snapshot holding it. ConfigError when it is not in the cache."""
    m = _SPEC.match(spec)
    if m is None or ".." in spec:
        raise ConfigError(f"{spec!r} is not a Hugging Face spec (org/repo:file.gguf)")
    repo, file = m["repo"], m["file"]
    root = hub_dir(env) / ("models--" + repo.replace("/", "--"))
    snapshots = root / "snapshots"
    candidates: list[Path] = []
    ref = root / "refs" / "main"
    if ref.is_file():
        candidates.append(snapshots / ref.read_text().strip() / file)
    if snapshots.is_dir():
        others = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        candidates += [d / file for d in others]
    for path in candidates:
        if path.is_file():  # follows the symlink into blobs/
            return path
    raise ConfigError(
        f"{file} of {repo} is not in the Hugging Face cache ({hub_dir(env)}); inferd never "
        f"downloads from the hub by itself. Fetch it first, e.g.\n"
        f"  huggingface-cli download {repo} {file}\n"
        f"or set HF_HOME to the cache that holds it."
    )
