"""llama.cpp's own quantizer, run in a child process: requantizing the bundled GGUF, and the
clear errors for what it cannot do."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.engine.backends.llamacpp.quantize import QuantizeError, quantize
from inferd.models.gguf_header import read_header
from tests.checkpoints import engine_greedy, serving


@pytest.mark.timeout(600)
async def test_requantize_the_bundled_model(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "smollm2.q8_0.gguf"
    seen: list[float] = []
    quantize(model_path, out, "q8_0", on_progress=lambda f, _line: seen.append(f))
    header = read_header(out)
    assert header.metadata["general.file_type"] == "7"  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert header.tensor_count == read_header(model_path).tensor_count
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == header.tensor_count
    async with serving(out) as engine:
        assert len(await engine_greedy(engine, await engine.tokenize("The sky is"), 4)) == 4


def test_garbage_in_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(QuantizeError, match="failed") as exc:
        quantize(garbage, tmp_path / "out.gguf", "q4_k_m")
    assert "garbage.gguf" in str(exc.value)
    with pytest.raises(QuantizeError, match="unknown quantization type 'q3_x'"):
        quantize(garbage, tmp_path / "out.gguf", "q3_x")
