"""Ollama's model routes on the real engine (the bundled SmolLM2) with a models directory of the
test's own: /api/pull (a local path, a URL served on 127.0.0.1, the local HF cache; registry
names refused), /api/blobs, /api/create (from a model or an uploaded GGUF, with template,
system, parameters, messages, license, quantize, or Modelfile lines; kept across restarts),
/api/push, and the official ollama client's create() and pull()."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.server
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from inferd.config import Settings
from inferd.models.convert_cache import ConvertCache
from inferd.models.engines import BackendEngineFactory
from inferd.models.gguf_header import read_header
from inferd.models.loading import llamacpp_loader, quantizer
from inferd.models.registry import ModelRegistry
from inferd.models.spec import ModelSpec
from inferd.models.store import ModelStore
from inferd.models.workshop import Workshop
from tests import checkpoints
from tests.conftest import AppHandle, bundled_spec
from tests.unit.test_hf_cache import FILE, REPO, make_cache

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]
checkpoint_root, smollm2_dir, mixtral_dir = (
    checkpoints.checkpoint_root,
    checkpoints.smollm2_dir,
    checkpoints.mixtral_dir,
)

GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 with the bundled model and nothing else."""
    root = tmp_path_factory.mktemp("www")
    (root / "tiny-smol.gguf").symlink_to(model_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass

    with Quiet(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()


@contextlib.asynccontextmanager
async def server(model_path: Path, models: Path, cache: Path) -> AsyncIterator[AppHandle]:
    """The app on the bundled model, with `models` as its models directory."""
    loader = llamacpp_loader()

    def small(spec: ModelSpec) -> Any:  # every model small and on one thread
        cfg = spec.config.model_copy(update={"n_ctx": 1024, "n_threads": 1, "max_seqs": 4})
        return loader(ModelSpec(spec.name, spec.path, cfg, spec.aliases, spec.source))

    store = ModelStore(models)
    registry = ModelRegistry([bundled_spec(model_path)], BackendEngineFactory(small), store=store)
    handle = AppHandle(Settings(models_dir=models), registry)
    handle.app.state.workshop = Workshop(registry, ConvertCache(cache), quantizer())
    async with handle:
        yield handle


@pytest.fixture(scope="module")
def blob(model_path: Path) -> bytes:
    return model_path.read_bytes()


@pytest.fixture(scope="module")
def digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def statuses(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


async def generate(c: httpx.AsyncClient, model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "stream": False, "options": GREEDY, **extra}
    r = await c.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_pull_from_a_url_a_path_and_the_hf_cache(
    model_path: Path,
    www: str,
    blob: bytes,
    digest: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    make_cache(tmp_path / "hf", model_path)
    models = tmp_path / "models"
    async with server(model_path, models, tmp_path / "cache") as h:
        c = h.client
        lines = statuses(await c.post("/api/pull", json={"model": f"{www}/tiny-smol.gguf"}))
        assert lines[0]["status"] == "pulling tiny-smol.gguf" and lines[-1] == {"status": "success"}
        progress = [s for s in lines if "completed" in s]
        assert progress and progress[-1]["completed"] == progress[-1]["total"]
        assert progress[-1]["total"] == len(blob)
        assert {"status": "verifying sha256 digest", "digest": digest} in lines
        tags = (await c.get("/api/tags")).json()["models"]
        assert "tiny-smol:latest" in [t["name"] for t in tags]
        pulled = await generate(c, "tiny-smol", "The capital of France is")
        bundled = await generate(c, "smollm2", "The capital of France is")
        assert pulled["response"] == bundled["response"] and pulled["response"]

        # a path on the server, without streaming: one answer
        r = await c.post("/api/pull", json={"model": str(model_path), "stream": False})
        assert r.status_code == 200 and r.json() == {"status": "success"}
        # a GGUF in the local Hugging Face cache: served under its repo:file name
        r = await c.post("/api/pull", json={"model": f"{REPO}:{FILE}", "stream": False})
        assert r.status_code == 200, r.text
        assert (models / f"{Path(FILE).stem}.gguf").is_file()
        assert sorted(p.name for p in models.iterdir() if p.name.startswith(".")) == []

        # what inferd cannot fetch: a clear error in Ollama's shape, before any stream
        r = await c.post("/api/pull", json={"model": "llama3.2:1b"})
        assert r.status_code == 404
        assert "inferd cannot pull 'llama3.2:1b' from the Ollama registry" in r.json()["error"]
        assert "http(s) link to a .gguf" in r.json()["error"]
        r = await c.post("/api/pull", json={"model": f"{www}/missing.gguf"})
        assert r.status_code == 400 and "answered HTTP 404" in r.json()["error"]
        r = await c.post("/api/pull", json={})
        assert r.status_code == 400 and r.json()["error"] == "model is required"
        r = await c.post("/api/push", json={"model": "tiny-smol"})
        assert r.status_code == 501 and "does not push" in r.json()["error"]


async def test_blobs_and_create_with_a_profile_kept_across_restarts(
    model_path: Path, blob: bytes, digest: str, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    template = "{{ if .System }}{{ .System }}\n{{ end }}Q: {{ .Prompt }}\nA:"
    async with server(model_path, models, tmp_path / "cache") as h:
        c = h.client
        assert (await c.head(f"/api/blobs/{digest}")).status_code == 404
        r = await c.post(f"/api/blobs/{digest}", content=b"not the blob")
        assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
        r = await c.post("/api/blobs/sha256:xyz", content=b"x")
        assert r.status_code == 400 and "invalid digest" in r.json()["error"]
        # larger than max_body_bytes (16 MiB): uploads are not held to it
        assert len(blob) > Settings().max_body_bytes
        assert (await c.post(f"/api/blobs/{digest}", content=blob)).status_code == 201
        assert (await c.head(f"/api/blobs/{digest}")).status_code == 200
        assert list((models / "blobs").iterdir()) == [models / "blobs" / digest.replace(":", "-")]

        body = {
            "model": "quiz:latest",
            "files": {"smol.gguf": digest},
            "template": template,
            "system": "You answer in one word.",
            "parameters": {"num_predict": 3, "stop": ["\n"]},
            "license": ["MIT", "Apache-2.0"],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ],
        }
        lines = statuses(await c.post("/api/create", json=body))
        assert {"status": f"using existing layer {digest}"} in lines
        assert lines[-2:] == [{"status": "writing manifest"}, {"status": "success"}]
        # the template and system prompt make the prompt: as the same text sent raw
        quiz = await generate(c, "quiz", "Capital of France?", options={"temperature": 0})
        raw = await generate(
            c, "smollm2", "You answer in one word.\nQ: Capital of France?\nA:", raw=True
        )
        assert quiz["prompt_eval_count"] == raw["prompt_eval_count"]
        assert quiz["eval_count"] <= 3  # num_predict from the parameters
        assert raw["response"].startswith(quiz["response"])
        show = (await c.post("/api/show", json={"model": "quiz"})).json()
        assert show["template"] == template and show["system"] == "You answer in one word."
        assert show["license"] == "MIT\n\nApache-2.0"
        assert show["messages"][1] == {"role": "assistant", "content": "Hello"}
        assert "PARAMETER num_predict 3" in show["modelfile"]
        assert 'PARAMETER stop "\\n"' in show["modelfile"]
        # chat: the leading messages and the system prompt come first
        chat = {"model": "quiz", "messages": [{"role": "user", "content": "Bye"}], "stream": False}
        r = await c.post("/api/chat", json=chat)
        assert r.status_code == 200, r.text

        # from an existing model, by Modelfile lines, quantized
        modelfile = "\n".join(
            [
                "FROM smollm2",
                "PARAMETER temperature 0",
                "PARAMETER num_predict 5",
                'SYSTEM """Be brief."""',
            ]
        )
        r = await c.post(
            "/api/create",
            json={"model": "brief", "modelfile": modelfile, "quantize": "q4_0"},
        )
        lines = statuses(r)
        assert lines[0] == {"status": "parsing modelfile"}
        assert any(s["status"].startswith("quantizing") and "completed" in s for s in lines)
        assert read_header(models / "brief.gguf").metadata["general.file_type"] == "2"  # Q4_0
        brief = await generate(c, "brief", "Say something.", options={})
        assert brief["eval_count"] <= 5
        show = (await c.post("/api/show", json={"model": "brief"})).json()
        assert show["system"] == "Be brief." and show["details"]["quantization_level"] == "Q4_0"

        # bad requests: 400 naming the parameter, in Ollama's shape
        for bad, param in [
            ({"model": "x", "from": "smollm2", "quantize": "q3"}, "unknown quantization type"),
            ({"model": "x"}, "from or files is required"),
            ({"model": "x", "from": "nope"}, "does not exist"),
            ({"model": "x", "files": {"m.gguf": "sha256:" + "0" * 64}}, "was not uploaded"),
            ({"model": "x", "modelfile": "FROM smollm2\nADAPTER ./lora.gguf"}, "ADAPTER"),
            ({"model": "x", "files": {"config.json": digest, "tok.py": digest}}, "nothing else"),
            ({"model": "x", "from": "smollm2", "parameters": {"temperature": "hot"}}, "parameters"),
            ({"model": "smollm2:135m", "from": "smollm2", "system": "x"}, "configured model"),
        ]:
            r = await c.post("/api/create", json=bad)
            assert r.status_code in (400, 403, 404), (bad, r.text)
            assert param in r.json()["error"], (bad, r.json())

    # a restart: the created models are still there, with their profiles
    async with server(model_path, models, tmp_path / "cache") as h:
        show = (await h.client.post("/api/show", json={"model": "quiz"})).json()
        assert show["template"] == template and show["license"] == "MIT\n\nApache-2.0"
        quiz = await generate(h.client, "quiz", "Capital of France?", options={"temperature": 0})
        assert quiz["eval_count"] <= 3
        # deleting a created name takes its profile with it
        r = await h.client.request("DELETE", "/api/delete", json={"model": "quiz"})
        assert r.status_code == 200
        assert "quiz" not in ModelStore(models).profiles()


async def test_the_official_ollama_client_creates_and_pulls(
    model_path: Path, www: str, tmp_path: Path
) -> None:
    async with server(model_path, tmp_path / "models", tmp_path / "cache") as h:
        client = ollama.AsyncClient(
            host="http://127.0.0.1", transport=httpx.ASGITransport(app=h.app)
        )
        done = await client.pull(f"{www}/tiny-smol.gguf")
        assert done.status == "success"
        seen = [p async for p in await client.pull(f"{www}/tiny-smol.gguf", stream=True)]
        assert seen[-1].status == "success" and any(p.completed for p in seen)
        digest = await client.create_blob(model_path)
        made = await client.create(
            model="mine",
            files={"model.gguf": digest},
            system="You are terse.",
            parameters={"num_predict": 4},
        )
        assert made.status == "success"
        progress = [p async for p in await client.create(model="copy", from_="mine", stream=True)]
        assert progress[-1].status == "success"
        shown = await client.show("copy")
        assert shown.parameters is not None and "num_predict" in shown.parameters
        answer = await client.generate(model="copy", prompt="Hello", options={"temperature": 0})
        assert answer.eval_count is not None and answer.eval_count <= 4
        names = [m.model for m in (await client.list()).models]
        assert {"mine:latest", "copy:latest", "tiny-smol:latest"} <= set(names or [])
        with pytest.raises(ollama.ResponseError) as err:
            await client.pull("qwen2.5:0.5b")
        assert "Ollama registry" in str(err.value.error)
        with pytest.raises(ollama.ResponseError) as err:
            await client.push("mine")
        assert err.value.status_code == 501


@pytest.fixture
def mixtral_files(mixtral_dir: Path) -> list[Path]:
    return [p for p in sorted(mixtral_dir.iterdir()) if p.suffix in (".json", ".safetensors")]


async def test_create_from_uploaded_checkpoint_files(
    model_path: Path, mixtral_files: list[Path], checkpoint_root: Path, tmp_path: Path
) -> None:
    """A checkpoint's files uploaded as blobs (as `ollama create` does for a safetensors
    folder) are converted, here found in the tests' conversion cache."""
    models = tmp_path / "models"
    async with server(model_path, models, checkpoint_root / "converted") as h:
        client = ollama.AsyncClient(
            host="http://127.0.0.1", transport=httpx.ASGITransport(app=h.app)
        )
        files = {p.name: await client.create_blob(p) for p in mixtral_files}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
        progress = [p async for p in await client.create(model="moe", files=files, stream=True)]
        assert progress[-1].status == "success"
        assert read_header(models / "moe.gguf").metadata["general.file_type"] == "1"  # F16
        left = await asyncio.to_thread(lambda: list((models / ".create").iterdir()))
        assert left == []  # the folder the files were linked into is gone
        answer = await client.generate(model="moe", prompt="Hello", options={"num_predict": 4})
        assert answer.done
