"""`org/repo:file.gguf` resolved in a Hugging Face cache laid out as huggingface_hub does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inferd.config import ModelConfig, Settings
from inferd.errors import ConfigError
from inferd.models import hf_cache
from inferd.models.spec import specs_from_settings

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "smollm2-135m-instruct-q4_1.gguf"


def make_cache(home: Path, model_path: Path, *, with_ref: bool = True) -> Path:
    """$HF_HOME/hub/models--org--repo/{blobs,refs/main,snapshots/<rev>/file -> blob}."""
    root = home / "hub" / ("models--" + REPO.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    (root / "blobs").mkdir(parents=True)
    blob = root / "blobs" / "sha256-of-the-file"
    blob.symlink_to(model_path)
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / FILE).symlink_to(os.path.relpath(blob, snap))
    if with_ref:
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(rev)
    return snap / FILE


@pytest.mark.parametrize("with_ref", [True, False])
def test_resolves_in_the_cache(tmp_path: Path, model_path: Path, with_ref: bool) -> None:
    expected = make_cache(tmp_path, model_path, with_ref=with_ref)
    got = hf_cache.resolve(f"{REPO}:{FILE}", {"HF_HOME": str(tmp_path)})
    assert got == expected and got.resolve() == model_path.resolve()


def test_hub_cache_variable_wins(tmp_path: Path) -> None:
    env = {"HF_HOME": "/a", "HF_HUB_CACHE": str(tmp_path)}
    assert hf_cache.hub_dir(env) == tmp_path
    assert hf_cache.hub_dir({"HF_HOME": "/a"}) == Path("/a/hub")
    assert hf_cache.hub_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/huggingface/hub")


def test_a_file_not_in_the_cache_is_a_clear_error(tmp_path: Path, model_path: Path) -> None:
    make_cache(tmp_path, model_path)
    with pytest.raises(ConfigError, match="not in the Hugging Face cache") as err:
        hf_cache.resolve(f"{REPO}:other.gguf", {"HF_HOME": str(tmp_path)})
    assert "huggingface-cli download" in err.value.message
    with pytest.raises(ConfigError, match="not in the Hugging Face cache"):
        hf_cache.resolve(f"someone/else:{FILE}", {"HF_HOME": str(tmp_path)})


@pytest.mark.parametrize(
    "text",
    ["org/repo:../../etc/passwd.gguf", "org/repo:file.bin", "/abs/file.gguf", "repo:file.gguf"],
)
def test_what_is_not_a_spec(text: str) -> None:
    assert not hf_cache.is_hf_spec(text)
    with pytest.raises(ConfigError):
        hf_cache.resolve(text, {})


def test_settings_models_resolve_specs(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_cache(tmp_path, model_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    settings = Settings(models=[ModelConfig(path=Path(f"{REPO}:{FILE}"))])
    (spec,) = specs_from_settings(settings)
    assert spec.name == "smollm2-135m-instruct-q4_1"
    assert spec.path.resolve() == model_path.resolve()
    assert spec.config.path == spec.path
