"""The models directory: files, the aliases file, names and deletes that stay inside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferd.errors import InvalidRequest
from inferd.models.store import ModelStore, check_name


def test_files_skip_partials_hidden_and_other_files(tmp_path: Path) -> None:
    for name in ["b.gguf", "a.gguf", ".a.gguf.partial", ".hidden.gguf", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.gguf").mkdir()
    assert [p.name for p in ModelStore(tmp_path).files()] == ["a.gguf", "b.gguf"]
    assert ModelStore(tmp_path / "missing").files() == []


def test_aliases_round_trip_atomically(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.aliases() == {}
    store.set_alias("mine", "smollm2:135m")
    store.set_alias("other", "x")
    assert ModelStore(tmp_path / "models").aliases() == {"mine": "smollm2:135m", "other": "x"}
    assert json.loads(store.aliases_path.read_text())["aliases"]["mine"] == "smollm2:135m"
    assert store.remove_aliases(alias="mine") == 1
    assert store.remove_aliases(target="x") == 1
    assert store.aliases() == {}
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["aliases.json"]  # no temp left


@pytest.mark.parametrize("content", ["{", "[1, 2]", '{"aliases": 3}', '{"aliases": {"a": 1}}'])
def test_a_damaged_aliases_file_counts_as_empty(tmp_path: Path, content: str) -> None:
    (tmp_path / "aliases.json").write_text(content)
    assert ModelStore(tmp_path).aliases() == {}


@pytest.mark.parametrize(
    "name", ["../x", "a/../b", "/etc/passwd", "", "x" * 200, "a b", "-x", "a:", "a\0b", "é"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidRequest):
        check_name(name, param="destination")


def test_file_names_are_plain_stems(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.path_for("my-model_1.Q4") == tmp_path / "my-model_1.Q4.gguf"
    for bad in ["a/b", "a:b", "../a"]:
        with pytest.raises(InvalidRequest):
            store.path_for(bad)


def test_remove_file_never_leaves_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"x")
    store = ModelStore(root)
    for path in [outside, root / ".." / "outside.gguf", root / "sub" / "x.gguf"]:
        with pytest.raises(InvalidRequest):
            store.remove_file(path)
    assert outside.exists()
    inside = root / "m.gguf"
    inside.write_bytes(b"x")
    store.remove_file(inside)
    assert not inside.exists()
