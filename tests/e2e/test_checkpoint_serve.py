"""A Hugging Face checkpoint (SmolLM2, rebuilt from the bundled GGUF by tests/checkpoints.py)
as a user meets it: `inferd serve --model <folder>` converts it at the configured type and
answers in every dialect; `inferd models pull <folder>` converts it into the models directory,
`inferd models quantize` requantizes a model next to it, `inferd models list/rm` show and remove
conversion-cache entries."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from inferd.models.convert_cache import ENTRY_FILE, ConvertCache
from inferd.models.gguf_header import read_header
from tests import checkpoints
from tests.conftest import LiveServer

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]
checkpoint_root, smollm2_dir, moe_dir, tiny_llama_dir = (
    checkpoints.checkpoint_root,
    checkpoints.smollm2_dir,
    checkpoints.moe_dir,
    checkpoints.tiny_llama_dir,
)

# llama.cpp file types (general.file_type)
Q8_0, Q4_0 = 7, 2


def inferd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "inferd", *args]
    run_env = {**os.environ, "COLUMNS": "250", **env}
    return subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=600)


def models_dir_server(models: Path, name: str, checkpoint: Path, cache: Path) -> LiveServer:
    """`inferd serve` (starting) with a models directory that holds `checkpoint` as `name`,
    converted at f32 into the conversion cache `cache` when first asked for."""
    models.mkdir()
    (models / name).symlink_to(checkpoint)
    env = {
        "INFERD_CONVERT_CACHE_DIR": str(cache),
        "INFERD_MODELS_DIR": str(models),
        "INFERD_QUANTIZE": "f32",
    }
    return LiveServer("--n-threads", "2", env=env)


def test_serve_a_checkpoint_folder_converted_at_the_configured_type(
    smollm2_dir: Path, checkpoint_root: Path
) -> None:
    env = {
        "INFERD_CONVERT_CACHE_DIR": str(checkpoint_root / "converted"),
        "LLM_ISQ_TYPE": "Q8_0",  # the seed's setting names the type
    }
    server = LiveServer("--model", str(smollm2_dir), "--n-threads", "2", env=env)
    try:
        server.wait_ready(timeout=600)
        name = smollm2_dir.name
        models = httpx.get(f"{server.url}/models").json()["models"]
        assert [(m["name"], m["status"]) for m in models] == [(name, "ready")]
        question = "What is the capital of France? Answer in one word."
        chat = {"model": name, "messages": [{"role": "user", "content": question}]}
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={**chat, "temperature": 0, "max_tokens": 16},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert "Paris" in r.json()["choices"][0]["message"]["content"]
        r = httpx.post(
            f"{server.url}/api/chat",
            json={**chat, "stream": False, "options": {"temperature": 0, "num_predict": 16}},
            timeout=120,
        )
        assert r.status_code == 200 and "Paris" in r.json()["message"]["content"]
        show = httpx.post(f"{server.url}/api/show", json={"model": name}, timeout=60).json()
        assert show["details"]["quantization_level"] == "Q8_0"
        assert "<|im_start|>" in show["template"]  # the checkpoint's chat template survived
    finally:
        server.stop()


def test_pull_quantize_list_and_remove(
    smollm2_dir: Path, checkpoint_root: Path, tmp_path: Path
) -> None:
    shared = ConvertCache(checkpoint_root / "converted")
    # a cache of our own holding a copy of the shared q8_0 entry, so that rm removes ours only
    cache = tmp_path / "cache"
    cache.mkdir()
    q8 = next(
        e for e in shared.entries() if e.quant == "q8_0" and e.source.endswith(smollm2_dir.name)
    )
    shutil.copytree(q8.path.parent, cache / q8.path.parent.name, copy_function=os.link)
    models = tmp_path / "models"
    env = {"INFERD_CONVERT_CACHE_DIR": str(cache), "INFERD_MODELS_DIR": str(models)}

    pulled = inferd(env, "models", "pull", str(smollm2_dir), "--quantize", "q8_0", "--name", "smol")
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled smol" in pulled.stdout and "q8_0" in pulled.stdout
    assert read_header(models / "smol.gguf").metadata["general.file_type"] == str(Q8_0)
    assert sorted(p.name for p in models.iterdir()) == ["smol.gguf"]  # no partial file left
    again = inferd(env, "models", "pull", str(smollm2_dir), "--quantize", "q8_0", "--name", "smol")
    assert again.returncode == 1 and "already in" in again.stderr

    quantized = inferd(env, "models", "quantize", "smol", "--type", "Q4_0")
    assert quantized.returncode == 0, quantized.stderr
    assert read_header(models / "smol-q4_0.gguf").metadata["general.file_type"] == str(Q4_0)
    bad = inferd(env, "models", "quantize", "smol", "--type", "q3")
    assert bad.returncode == 1 and "unknown quantization type 'q3'" in bad.stderr

    listed = inferd(env, "models", "list")
    assert listed.returncode == 0, listed.stderr
    assert "smol-q4_0" in listed.stdout and "Q4_0" in listed.stdout
    assert q8.short_key in listed.stdout and "converted checkpoints" in listed.stdout
    removed = inferd(env, "models", "rm", q8.short_key[:10])
    assert removed.returncode == 0, removed.stderr
    assert "removed converted checkpoint" in removed.stdout
    assert list(cache.iterdir()) in ([], [cache / "hashes.json"])
    assert (q8.path.parent / ENTRY_FILE).is_file()  # the shared entry is untouched
    assert (models / "smol.gguf").is_file()  # the pulled model does not depend on the cache
    unknown = inferd(env, "models", "rm", "abcdef123")
    assert unknown.returncode == 1 and "no converted model with key" in unknown.stderr


def test_moe_checkpoints_in_the_models_directory_serve_every_dialect(
    moe_dir: Path, checkpoint_root: Path, tmp_path: Path
) -> None:
    """A tiny Mixtral or Qwen2-MoE folder in the models directory: converted on its first
    request (which waits for it), the same greedy text in every dialect, expert counts shown."""
    server = models_dir_server(tmp_path / "models", "moe", moe_dir, checkpoint_root / "converted")
    try:
        server.wait_ready(timeout=300)
        url, prompt = server.url, "The capital of France is"
        listed = {m["name"]: m for m in httpx.get(f"{url}/models").json()["models"]}
        assert listed["moe"]["status"] == "unloaded"
        texts = {}
        r = httpx.post(
            f"{url}/v1/completions",
            json={"model": "moe", "prompt": prompt, "max_tokens": 8, "temperature": 0},
            timeout=300,
        )
        assert r.status_code == 200, r.text
        texts["openai"] = r.json()["choices"][0]["text"]
        r = httpx.post(
            f"{url}/api/generate",
            json={
                "model": "moe",
                "prompt": prompt,
                "raw": True,
                "stream": False,
                "options": {"temperature": 0, "num_predict": 8},
            },
            timeout=120,
        )
        assert r.status_code == 200, r.text
        texts["ollama"] = r.json()["response"]
        r = httpx.post(
            f"{url}/generate",
            json={"model": "moe", "prompt": prompt, "max_tokens": 8, "temperature": 0},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        texts["native"] = r.json()["text"]
        assert len(set(texts.values())) == 1 and texts["openai"], texts
        chat = {"model": "moe", "messages": [{"role": "user", "content": "Hi"}]}
        for path, body in [
            ("/v1/chat/completions", {**chat, "max_tokens": 4}),
            ("/api/chat", {**chat, "stream": False, "options": {"num_predict": 4}}),
            ("/chat", {**chat, "max_tokens": 4}),
        ]:
            assert httpx.post(f"{url}{path}", json=body, timeout=120).status_code == 200, path
        info = httpx.get(f"{url}/models/moe").json()
        assert info["status"] == "ready"
        assert (info["config"]["experts"], info["config"]["experts_used"]) == (4, 2)
        show = httpx.post(f"{url}/api/show", json={"model": "moe"}, timeout=60).json()
        assert show["details"]["quantization_level"] == "F32"
        arch = show["model_info"]["general.architecture"]
        assert show["model_info"][f"{arch}.expert_count"] == 4
    finally:
        server.stop()


def test_a_conversion_under_way_shows_in_every_listing(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """A real conversion (the tiny llama at f32, into an empty cache) watched through a live
    server while it runs: Ollama's /api/ps as the official client parses it, `inferd ps`,
    OpenAI's /v1/models as the official client parses it, and /models show it converting with
    how far; the bundled model serves meanwhile; then it is listed loaded."""
    server = models_dir_server(tmp_path / "models", "llama", tiny_llama_dir, tmp_path / "converted")
    try:
        server.wait_ready(timeout=120)
        url = server.url
        assert httpx.post(f"{url}/models/llama/load", timeout=30).status_code == 202
        deadline = time.monotonic() + 300
        while True:  # the converter child imports torch first: seconds at 0 %
            ps = httpx.get(f"{url}/api/ps", timeout=30).json()["models"]
            mine = next((m for m in ps if m["name"] == "llama"), None)
            if mine is not None and mine["status"] == "converting":
                break
            assert time.monotonic() < deadline, ps
            time.sleep(0.2)
        assert mine["progress"]["phase"] == "converting" and mine["expires_at"] is None
        with ollama.Client(host=url, timeout=60) as oll:
            running = {m.model: m for m in oll.ps().models}
        assert running["llama"].expires_at is None and running["smollm2:135m"].expires_at
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as oai:
            cards = {m.id: m for m in oai.models.list()}
        assert (cards["llama"].model_extra or {})["status"] in ("converting", "loading", "ready")
        listed = inferd({"INFERD_HOST": url}, "ps")
        assert listed.returncode == 0, listed.stderr
        # converting, unless it finished while the command started
        assert re.search(r"llama .*(converting \d+%|loading|Forever)", listed.stdout), listed.stdout
        native = httpx.get(f"{url}/models/llama", timeout=30).json()
        assert native["status"] in ("converting", "loading", "ready")
        chat = {"model": "smollm2:135m", "prompt": "Hi", "max_tokens": 4}
        assert httpx.post(f"{url}/v1/completions", json=chat, timeout=60).status_code == 200
        while httpx.get(f"{url}/models/llama", timeout=30).json()["status"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        ps = httpx.get(f"{url}/api/ps", timeout=30).json()["models"]
        (mine,) = [m for m in ps if m["name"] == "llama"]
        assert mine["status"] == "ready" and mine["progress"] is None and mine["expires_at"]
    finally:
        server.stop()
