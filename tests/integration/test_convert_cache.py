"""The conversion cache on a real (tiny MoE) checkpoint: convert once, reuse after a restart,
convert again when a source file changes; a killed or failed conversion, or a full disk,
leaves nothing a later start would trust."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferd.errors import ConfigError, ConversionFailed, ModelNotFound
from inferd.models import checkpoint
from inferd.models.convert_cache import ConvertCache, estimate_bytes
from inferd.models.gguf_header import read_header
from inferd.models.progress import LoadProgress
from tests import checkpoints

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]
checkpoint_root, smollm2_dir, mixtral_dir = (
    checkpoints.checkpoint_root,
    checkpoints.smollm2_dir,
    checkpoints.mixtral_dir,
)


@pytest.fixture
def source(mixtral_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny MoE checkpoint this test may change, under the same name: the
    GGUF's name comes from the folder's, so its conversion is the shared entry's byte for byte."""
    return Path(shutil.copytree(mixtral_dir, tmp_path / mixtral_dir.name))


@pytest.fixture(scope="module")
def converted(checkpoint_root: Path, mixtral_dir: Path) -> Path:
    """The folder of the tiny MoE's f32 entry in the shared conversion cache (converted once;
    test_convert_moe.py converts the same), for the tests that need an entry to start from."""
    cache = ConvertCache(checkpoint_root / "converted")
    return cache.get_or_convert(checkpoint.inspect(mixtral_dir), "f32").path.parent


def holding(converted: Path, root: Path) -> ConvertCache:
    """A cache of its own at `root` holding a copy of the converted entry: a lookup of the
    same files finds it (the key is their names, sizes and hashes, not where they are)."""
    shutil.copytree(converted, root / converted.name)
    return ConvertCache(root)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".partial-"))


def test_convert_once_then_reuse_across_restarts(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inferd.models.convert_cache")
    root = tmp_path / "cache"
    seen: list[LoadProgress] = []
    first = ConvertCache(root).get_or_convert(
        checkpoint.inspect(source), "f32", on_progress=seen.append
    )
    assert first.path.is_file() and read_header(first.path).metadata["general.file_type"] == "0"
    assert first.size == first.path.stat().st_size and first.quant == "f32"
    # progress: the converter's writer, from 0 to 100 %, then done
    fractions = [p.fraction for p in seen if p.phase == "converting"]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert seen[-1].phase == "done"
    assert any("converting" in r.getMessage() for r in caplog.records)
    stamp = first.path.stat().st_mtime_ns
    caplog.clear()

    again = ConvertCache(root).get_or_convert(checkpoint.inspect(source), "f32")  # a restart
    assert again == first and again.path.stat().st_mtime_ns == stamp
    messages = [r.getMessage() for r in caplog.records]
    assert any("nothing to convert" in m for m in messages), messages
    assert not any(m.startswith("converting") for m in messages)
    assert [e.key for e in ConvertCache(root).entries()] == [first.key]
    assert leftovers(root) == []


def test_a_changed_source_file_converts_again(
    source: Path, converted: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    cache = holding(converted, tmp_path / "cache")
    before = cache.get_or_convert(checkpoint.inspect(source), "f32")
    weights = source / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 2
    save_file(tensors, weights, metadata={"format": "pt"})
    after = cache.get_or_convert(checkpoint.inspect(source), "f32")
    assert after.key != before.key and after.path != before.path
    assert sorted(e.key for e in cache.entries()) == sorted([before.key, after.key])
    # each entry is removable, by a key prefix
    assert cache.remove(before.short_key[:8]) == before and not before.path.exists()
    assert [e.key for e in cache.entries()] == [after.key]
    with pytest.raises(ModelNotFound):
        cache.remove(before.short_key[:8])


def test_a_killed_conversion_leaves_nothing_trusted(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    script = (
        "import sys; from pathlib import Path\n"
        "from inferd.models import checkpoint\n"
        "from inferd.models.convert_cache import ConvertCache\n"
        "ckpt = checkpoint.inspect(Path(sys.argv[2]))\n"
        "ConvertCache(Path(sys.argv[1])).get_or_convert(ckpt, 'f32')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(root), str(source)], start_new_session=True
    )
    deadline = time.monotonic() + 300
    # kill it (and its converter) once the converter has started writing into its partial folder
    while not any(root.glob(".partial-*/*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the conversion ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert leftovers(root) != []  # it was killed mid-way
    cache = ConvertCache(root)
    assert cache.entries() == []
    assert cache.lookup(cache.key(checkpoint.inspect(source), "f32")) is None
    entry = cache.get_or_convert(checkpoint.inspect(source), "f32")  # the next start converts
    assert entry.path.is_file() and leftovers(root) == []  # and sweeps the dead one's folder


def test_an_entry_that_does_not_match_its_record_is_not_trusted(
    source: Path, converted: Path, tmp_path: Path
) -> None:
    cache = holding(converted, tmp_path / "cache")
    entry = cache.get_or_convert(checkpoint.inspect(source), "f32")
    with entry.path.open("r+b") as f:
        f.truncate(entry.size // 2)
    assert cache.lookup(entry.key) is None and not entry.path.parent.exists()
    again = cache.get_or_convert(checkpoint.inspect(source), "f32")
    assert again.path.stat().st_size == entry.size


def test_a_config_that_lies_fails_with_the_converters_reason(source: Path, tmp_path: Path) -> None:
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "num_local_experts": 8}))
    root = tmp_path / "cache"
    with pytest.raises(ConversionFailed) as exc:
        ConvertCache(root).get_or_convert(checkpoint.inspect(source), "f16")
    assert exc.value.message.startswith(
        f"converting {source.name} failed: ValueError: Unprocessed experts"
    )
    assert "Traceback" not in exc.value.message
    assert ConvertCache(root).entries() == [] and leftovers(root) == []


def test_too_little_free_space_is_refused_before_converting(source: Path, tmp_path: Path) -> None:
    ckpt = checkpoint.inspect(source)
    need = estimate_bytes(ckpt, "f32")
    assert need > 4 * ckpt.n_params  # f32 weights and some slack
    cache = ConvertCache(tmp_path / "cache", disk_free=lambda _p: need - 1)
    started = time.monotonic()
    with pytest.raises(ConversionFailed, match="not enough disk space"):
        cache.get_or_convert(ckpt, "f32")
    assert time.monotonic() - started < 5  # no conversion was attempted
    assert ConvertCache(tmp_path / "cache").entries() == []
    # quantizing needs room for the 16-bit file it starts from as well
    assert estimate_bytes(ckpt, "q4_k_m") > estimate_bytes(ckpt, "f16")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB filesystem (tmpfs, as root), smaller than any conversion here."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_that_fills_up_mid_conversion_fails_cleanly(source: Path, tiny_disk: Path) -> None:
    ckpt = checkpoint.inspect(source)
    with pytest.raises(ConversionFailed, match="not enough disk space"):
        ConvertCache(tiny_disk).get_or_convert(ckpt, "f32")  # the check, on the real disk
    # a probe that lies: the converter itself runs out of space and says so
    lying = ConvertCache(tiny_disk, disk_free=lambda _p: 1 << 40)
    with pytest.raises(ConversionFailed, match="no space left on the disk"):
        lying.get_or_convert(ckpt, "f32")
    assert lying.entries() == [] and leftovers(tiny_disk) == []
    assert shutil.disk_usage(tiny_disk).used < 1 << 20  # the half-written file is gone


def test_a_type_the_converter_cannot_write_needs_the_quantizer(
    source: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="quantizer"):
        ConvertCache(tmp_path / "cache").get_or_convert(checkpoint.inspect(source), "q4_k_m")
