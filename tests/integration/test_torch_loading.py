"""Loading a checkpoint on transformers: progress counted tensor by tensor over a 2-shard
checkpoint (in the log and the load's progress), and settings this machine cannot honour
(a CUDA device without one, a CUDA-only quantized checkpoint) failing that model alone, with
the reason, while the rest serve."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from inferd.config import Settings
from inferd.models.loading import TransformersFactory, engine_factory, transformers_load
from inferd.models.progress import LoadProgress
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from tests import checkpoints
from tests.conftest import AppHandle, wait_for

checkpoint_root, smollm2_dir, tiny_llama_dir = (
    checkpoints.checkpoint_root,
    checkpoints.smollm2_dir,
    checkpoints.tiny_llama_dir,
)


def save_in_shards(source: Path, out: Path) -> None:
    """`source`'s model saved again in 20 MB shards (the tiny llama: 2 files), with its
    tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source)
    model.save_pretrained(out, max_shard_size="20MB")
    AutoTokenizer.from_pretrained(source).save_pretrained(out)


@pytest.fixture(scope="module")
def two_shards(checkpoint_root: Path, tiny_llama_dir: Path) -> Path:
    key = f"shards|{tiny_llama_dir.name}|20MB"
    folder = checkpoints.cached(
        checkpoint_root, "llama-2-shards", key, lambda out: save_in_shards(tiny_llama_dir, out)
    )
    assert len(list(folder.glob("*.safetensors"))) == 2
    return folder


def test_a_two_shard_load_reports_every_tensor(two_shards: Path) -> None:
    seen: list[LoadProgress] = []
    backend = transformers_load(checkpoints.transformers_spec(two_shards), seen.append)
    try:
        index = json.loads((two_shards / "model.safetensors.index.json").read_text())
        n = len(index["weight_map"])  # every tensor, from both files
        assert {p.phase for p in seen} == {"loading"}
        fractions = [p.fraction for p in seen]
        assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
        weights = [p.message for p in seen if p.message.startswith("weights:")]
        assert weights == [f"weights: {i} of {n} tensors (2 files)" for i in range(n + 1)]
    finally:
        backend.close()
    from transformers.utils.logging import set_tqdm_hook

    assert set_tqdm_hook(None) is None  # the hook is gone with the load


def test_only_the_loading_threads_bar_is_counted() -> None:
    from transformers.utils.logging import set_tqdm_hook, tqdm

    from inferd.engine.backends.torch.progress import WEIGHTS_BAR, WeightsProgress

    seen: list[tuple[float, str]] = []
    other: list[int] = []
    with WeightsProgress(lambda f, what: seen.append((f, what))):
        thread = threading.Thread(target=lambda: other.extend(tqdm(range(3), desc=WEIGHTS_BAR)))
        thread.start()
        thread.join()
        assert list(tqdm(range(2), desc="something else")) == [0, 1]
        assert seen == [] and other == [0, 1, 2]  # another thread's, another bar: untouched
        assert list(tqdm({"a": 1, "b": 2}.items(), desc=WEIGHTS_BAR)) == [("a", 1), ("b", 2)]
        # a hook set on top of ours meanwhile stays in place when the load ends
        outer: list[str] = []

        def on_top(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            outer.append(kwargs.get("desc", ""))
            return factory(*args, **kwargs)

        set_tqdm_hook(on_top)
    assert seen == [
        (0.0, "weights: 0 of 2 tensors"),
        (0.5, "weights: 1 of 2 tensors"),
        (1.0, "weights: 2 of 2 tensors"),
    ]
    assert list(tqdm(range(1), desc=WEIGHTS_BAR)) == [0]
    assert outer == [WEIGHTS_BAR] and len(seen) == 3  # ours counts nothing more
    assert set_tqdm_hook(None) is on_top


async def test_the_factory_logs_the_load_and_hands_its_progress_to_the_loop(
    two_shards: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inferd.models.loading")
    seen: list[LoadProgress] = []
    spec = checkpoints.transformers_spec(two_shards)
    model = await TransformersFactory().load(
        spec, on_finish=lambda *_: None, on_progress=seen.append
    )
    try:
        assert seen and seen[-1].fraction == 1.0
        logged = [r.getMessage() for r in caplog.records if r.name == "inferd.models.loading"]
        prefix = f"model {spec.name}: loading "
        percents = [int(m.removeprefix(prefix).rstrip("%")) for m in logged]
        # its start, about each quarter (as far as 21 tensors land), its end
        assert percents[0] == 0 and percents[-1] == 100 and len(percents) >= 4, logged
        assert percents == sorted(percents) and all(m.startswith(prefix) for m in logged)
    finally:
        await model.engine.stop()


def named(name: str, folder: Path, **config: object) -> ModelSpec:
    return dataclasses.replace(checkpoints.transformers_spec(folder, **config), name=name)


def cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


async def test_what_this_machine_cannot_run_fails_alone(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """`device = "cuda"` without CUDA, and a bitsandbytes 4-bit checkpoint (a CUDA-only format
    here) are failed models with the reason; the model beside them serves."""
    if cuda():
        pytest.skip("a CUDA device is here: tests/integration/test_torch_cuda.py runs on it")
    quantized = tmp_path / "bnb-4bit"
    shutil.copytree(tiny_llama_dir, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": "float16",
    }
    (quantized / "config.json").write_text(json.dumps(config))
    specs = [
        named("tiny", tiny_llama_dir),
        named("on-cuda", tiny_llama_dir, device="cuda"),
        named("bnb", quantized),
    ]
    registry = ModelRegistry(specs, engine_factory())
    async with AppHandle(Settings(), registry) as h:
        failing = ("on-cuda", "bnb")
        assert await wait_for(
            lambda: all(h.registry.entry(n).status.value == "failed" for n in failing), 120
        )
        models = {m["name"]: m for m in (await h.client.get("/models")).json()["models"]}
        assert "device cuda asked for, but torch sees no CUDA device" in models["on-cuda"]["error"]
        assert models["bnb"]["error"], models["bnb"]
        assert "internal error" not in models["bnb"]["error"]
        for name in failing:
            r = await h.client.post("/v1/completions", json={"model": name, "prompt": "x"})
            assert r.status_code == 503 and models[name]["error"] in r.json()["error"]["message"]
        r = await h.client.post(
            "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}
        )
        assert r.status_code == 200, r.text


def test_embeddings_pool_as_the_checkpoint_says(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A sentence-transformers Pooling module (modules.json) picks the pooling: its last token,
    its first (cls) or the mean, which is also what a checkpoint without one gets."""
    import torch
    from transformers import AutoModel

    folder = tmp_path / "embedder"
    shutil.copytree(tiny_llama_dir, folder)
    ids = [17, 2, 405, 99, 3000]
    base = AutoModel.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with torch.no_grad():
        hidden = base(input_ids=torch.tensor([ids])).last_hidden_state[0]
    expected = {"mean": hidden.mean(dim=0), "last": hidden[-1], "cls": hidden[0]}
    modes = [("mean", None), ("last", "pooling_mode_lasttoken"), ("cls", "pooling_mode_cls_token")]
    for mode, key in modes:
        if key is not None:
            (folder / "1_Pooling").mkdir(exist_ok=True)
            pooling = {"word_embedding_dimension": 64, "pooling_mode_mean_tokens": False, key: True}
            (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
            modules = [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
            (folder / "modules.json").write_text(json.dumps(modules))
        backend = transformers_load(checkpoints.transformers_spec(folder))
        try:
            assert backend.facts()["pooling"] == mode
            (got,) = backend.embed([ids])
        finally:
            backend.close()
        assert torch.allclose(torch.tensor(got), expected[mode], atol=1e-4), mode
