"""The transformers backend on a CUDA GPU: what docs/configuration.md marks untested until this
runs on a machine with one (every test skips, saying why, on a CPU-only machine).

Run on a GPU machine (the hf extra with a CUDA build of torch, and bitsandbytes for the
quantized case):

    PYTHONPATH=$PWD/src:$PWD python -m pytest tests/integration/test_torch_cuda.py -v -rs

- the default dtype there (bfloat16 where the GPU has it) and float32, on SmolLM2 rebuilt
  from the bundled GGUF: 8 concurrent greedy answers held to transformers' own `generate`
  (on the CPU, float32) up to each answer's first near-tie;
- `device = "cuda:N"` past the GPUs present: a failed model with the reason;
- a bitsandbytes 4-bit checkpoint (made here from the tiny llama) loads and answers;
- GPTQ and AWQ: a checkpoint named by INFERD_TEST_GPTQ / INFERD_TEST_AWQ (a folder; the tests
  cannot make one without calibration data), served and answering.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from inferd.config import Settings
from inferd.models.loading import engine_factory
from inferd.models.registry import ModelRegistry
from tests import checkpoints
from tests.checkpoints import NEAR_TIE, hf_greedy, serving_torch
from tests.conftest import AppHandle, wait_for

checkpoint_root, smollm2_dir, tiny_llama_dir = (
    checkpoints.checkpoint_root,
    checkpoints.smollm2_dir,
    checkpoints.tiny_llama_dir,
)
torch = pytest.importorskip("torch", reason="needs the hf extra: pip install 'inferd[hf]'")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: these run on a GPU machine"
)

TEXTS = ["The capital of France is", "def fibonacci(n):", "List three colours:", "A"] * 2
N = 16


def prompts_of(folder: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return [tokenizer(t)["input_ids"] for t in TEXTS]


@pytest.mark.parametrize("dtype", ["auto", "float32"])
async def test_concurrent_greedy_answers_on_the_gpu(smollm2_dir: Path, dtype: str) -> None:
    import asyncio

    prompts = prompts_of(smollm2_dir)
    expected = hf_greedy(smollm2_dir, prompts, N)
    async with serving_torch(smollm2_dir, max_seqs=8, device="cuda", dtype=dtype) as engine:
        facts = engine.facts()
        got = await asyncio.gather(
            *(checkpoints.engine_greedy(engine, p, N, rid=f"r{i}") for i, p in enumerate(prompts))
        )
    assert facts["device"].startswith("cuda")
    wide = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    assert facts["dtype"] == (wide if dtype == "auto" else "float32")
    # 16-bit weights part from float32 sooner: held to the first few decided tokens
    tolerance, at_least = (NEAR_TIE, 8) if dtype == "float32" else (0.5, 2)
    checkpoints.assert_agrees(got, expected, at_least, tolerance)


async def test_a_device_past_the_gpus_present_fails_alone(tiny_llama_dir: Path) -> None:
    past = f"cuda:{torch.cuda.device_count()}"
    spec = checkpoints.transformers_spec(tiny_llama_dir)
    specs = [
        dataclasses.replace(spec, name="tiny"),
        dataclasses.replace(checkpoints.transformers_spec(tiny_llama_dir, device=past), name="x"),
    ]
    async with AppHandle(Settings(), ModelRegistry(specs, engine_factory())) as h:
        assert await wait_for(lambda: h.registry.entry("x").status.value == "failed", 60)
        assert f"device {past} asked for" in (h.registry.entry("x").error or "")
        r = await h.client.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert r.status_code == 200, r.text


def quantize_4bit(source: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16)
    model = AutoModelForCausalLM.from_pretrained(
        source, quantization_config=config, device_map="cuda"
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)


async def test_a_bitsandbytes_checkpoint_serves(
    checkpoint_root: Path, tiny_llama_dir: Path
) -> None:
    pytest.importorskip("bitsandbytes", reason="pip install bitsandbytes")
    folder = checkpoints.cached(
        checkpoint_root,
        "llama-bnb4",
        f"bnb4|{tiny_llama_dir.name}",
        lambda out: quantize_4bit(tiny_llama_dir, out),
    )
    await answers(folder)


@pytest.mark.parametrize(
    ("variable", "package"), [("INFERD_TEST_GPTQ", "gptqmodel"), ("INFERD_TEST_AWQ", "awq")]
)
async def test_a_gptq_or_awq_checkpoint_serves(variable: str, package: str) -> None:
    folder = os.environ.get(variable)
    if not folder:
        pytest.skip(f"set {variable} to a quantized checkpoint's folder")
    pytest.importorskip(package, reason=f"pip install {package}")
    await answers(Path(folder))


async def answers(folder: Path) -> None:
    async with serving_torch(folder, device="cuda", dtype="float16") as engine:
        tokens = await checkpoints.engine_greedy(engine, prompts_of(folder)[0], 8)
    assert tokens
