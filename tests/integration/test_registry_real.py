"""Model management on the real engine: two models at once (the bundled file under two
names), load/unload over the API, LRU eviction, allowlist, idle unload, a garbage .gguf in
the models directory, Ollama copy/delete and name mapping."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from inferd.config import Settings
from inferd.models.loading import llamacpp_factory
from inferd.models.registry import ModelRegistry, RegistryOptions
from inferd.models.spec import BUNDLED_ALIASES, BUNDLED_NAME, ModelSpec, Source
from inferd.models.store import ModelStore
from tests.conftest import TEST_N_CTX, AppHandle, bundled_spec, wait_for

GREEDY = {"max_tokens": 6, "temperature": 0, "seed": 1}


def exists(path: Path) -> bool:
    return path.exists()


def named(path: Path, name: str) -> ModelSpec:
    s = bundled_spec(path, max_seqs=4)
    return ModelSpec(name, path, s.config, ())


@contextlib.asynccontextmanager
async def app(
    specs: list[ModelSpec], models_dir: Path | None = None, **settings: Any
) -> AsyncIterator[AppHandle]:
    st = Settings(**settings)
    registry = ModelRegistry(
        specs,
        llamacpp_factory(),
        options=RegistryOptions.from_settings(st),
        store=None if models_dir is None else ModelStore(models_dir),
        model_overrides={"n_ctx": TEST_N_CTX, "max_seqs": 4},
    )
    async with AppHandle(st, registry) as handle:
        yield handle


async def generate(h: AppHandle, model: str) -> dict[str, Any]:
    resp = await h.client.post("/generate", json={"prompt": "The sky is", "model": model, **GREEDY})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def states(h: AppHandle) -> dict[str, bool]:
    return {m["name"]: m["loaded"] for m in (await h.client.get("/models")).json()["models"]}


async def test_two_models_at_once(model_path: Path) -> None:
    async with app([named(model_path, "one"), named(model_path, "two")]) as h:
        assert await states(h) == {"one": True, "two": True}
        a, b = await generate(h, "one"), await generate(h, "two")
        assert a["model"] == "one" and b["model"] == "two"
        assert a["text"] == b["text"]  # the same weights, greedy
        health = (await h.client.get("/health")).json()
        assert health["models_loaded"] == 2 and health["total_models"] == 2
        # the two engines are distinct
        assert h.registry.get("one").engine is not h.registry.get("two").engine


async def test_unload_and_load_over_the_api(model_path: Path) -> None:
    async with app([named(model_path, "one"), named(model_path, "two")]) as h:
        resp = await h.client.delete("/models/two/unload")
        assert resp.status_code == 200 and resp.json()["status"] == "unloaded"
        assert await states(h) == {"one": True, "two": False}
        await generate(h, "one")  # the other keeps serving
        resp = await h.client.post("/models/two/load")
        assert resp.status_code == 202 and resp.json()["status"] == "loading"
        again = await h.client.post("/models/two/load")  # shares the load in flight
        assert again.status_code == 202
        assert await wait_for(lambda: h.registry.entry("two").model is not None, 60)
        await generate(h, "two")


async def test_lru_eviction_with_max_loaded_models_1(model_path: Path) -> None:
    specs = [named(model_path, "one"), named(model_path, "two")]
    async with app(specs, max_loaded_models=1) as h:
        assert await states(h) == {"one": True, "two": False}
        await generate(h, "two")  # loads two, evicting one (idle)
        assert await states(h) == {"one": False, "two": True}
        chat = await h.client.post(
            "/v1/chat/completions",
            json={"model": "one", "messages": [{"role": "user", "content": "Hi"}], **GREEDY},
        )
        assert chat.status_code == 200, chat.text
        assert await states(h) == {"one": True, "two": False}
        assert (await h.client.get("/health")).json()["models_loaded"] == 1


async def test_allowlist(model_path: Path) -> None:
    specs = [named(model_path, "one"), named(model_path, "two")]
    async with app(specs, allowed_models=["two"]) as h:
        assert await states(h) == {"two": True}
        resp = await h.client.post("/generate", json={"prompt": "x", "model": "one"})
        assert resp.status_code == 404
        assert resp.json()["error"]["message"] == "The model 'one' does not exist"
        resp = await h.client.post("/api/generate", json={"prompt": "x", "model": "one"})
        assert resp.status_code == 404 and set(resp.json()) == {"error"}
        assert [m["id"] for m in (await h.client.get("/v1/models")).json()["data"]] == ["two"]
        assert [m["name"] for m in (await h.client.get("/api/tags")).json()["models"]] == [
            "two:latest"
        ]
        assert (await h.client.get("/api/llms")).json()["llms"] == ["two"]
        await generate(h, "two")


async def test_idle_unload_after_keep_alive(model_path: Path) -> None:
    async with app([named(model_path, "one")], keep_alive=1.0) as h:
        await generate(h, "one")
        t0 = time.monotonic()
        assert await wait_for(lambda: h.registry.entry("one").model is None, 10)
        assert time.monotonic() - t0 < 5
        # the default model is not loaded: not ready (its next request loads it again)
        assert (await h.client.get("/health/ready")).status_code == 503
        await generate(h, "one")
        assert (await h.client.get("/health/ready")).status_code == 200


async def test_ollama_keep_alive_schedules_an_idle_unload(model_path: Path) -> None:
    async with app([named(model_path, "one")]) as h:  # default: forever
        body = {"model": "one", "prompt": "Hi", "stream": False, "keep_alive": "1s"}
        body["options"] = {"num_predict": 4}
        resp = await h.client.post("/api/generate", json=body)
        assert resp.status_code == 200, resp.text
        (running,) = (await h.client.get("/api/ps")).json()["models"]
        assert running["expires_at"] < "2100"  # a real deadline, not "forever"
        assert await wait_for(lambda: h.registry.entry("one").model is None, 10)
        assert (await h.client.get("/api/ps")).json()["models"] == []
        # the next request without keep_alive loads it again and keeps it
        body = {"model": "one", "prompt": "Hi", "stream": False, "options": {"num_predict": 4}}
        assert (await h.client.post("/api/generate", json=body)).status_code == 200
        (running,) = (await h.client.get("/api/ps")).json()["models"]
        assert running["expires_at"] > "2100"


async def test_garbage_gguf_in_the_models_directory(model_path: Path, tmp_path: Path) -> None:
    (tmp_path / "garbage.gguf").write_bytes(b"GGUF" + b"\xff" * 100)
    (tmp_path / "tiny.gguf").symlink_to(model_path)
    bundled = ModelSpec(
        BUNDLED_NAME, model_path, bundled_spec(model_path).config, BUNDLED_ALIASES, Source.BUNDLED
    )
    async with app([bundled], tmp_path) as h:
        models = {m["name"]: m for m in (await h.client.get("/models")).json()["models"]}
        assert set(models) == {BUNDLED_NAME, "garbage", "tiny"}
        # directory models load on demand; their config comes from the file's header
        tiny = models["tiny"]
        assert tiny["loaded"] is False and tiny["status"] == "unloaded"
        assert tiny["config"]["architecture"] == "llama"
        assert tiny["config"]["context_length"] == 8192
        assert tiny["config"]["vocab_size"] == 49152
        assert tiny["config"]["layers"] == 30 and tiny["config"]["parameter_size"] == "135M"
        assert models["garbage"]["config"] == {}
        # loading garbage fails cleanly
        assert (await h.client.post("/models/garbage/load")).status_code == 202
        assert await wait_for(lambda: h.registry.entry("garbage").status.value == "failed", 30)
        info = (await h.client.get("/models/garbage")).json()
        assert "garbage.gguf is not a valid GGUF file" in info["error"]
        assert str(tmp_path) not in info["error"]
        resp = await h.client.post("/generate", json={"prompt": "x", "model": "garbage"})
        assert resp.status_code == 503 and "failed to load" in resp.json()["error"]["message"]
        assert resp.headers["retry-after"]
        # the others keep serving, and a directory model loads on its first request
        await generate(h, BUNDLED_NAME)
        await generate(h, "tiny")
        assert (await h.client.get("/health/live")).status_code == 200


async def test_ollama_copy_delete_and_model_map(model_path: Path, tmp_path: Path) -> None:
    (tmp_path / "tiny.gguf").symlink_to(model_path)
    bundled = ModelSpec(
        BUNDLED_NAME, model_path, bundled_spec(model_path).config, BUNDLED_ALIASES, Source.BUNDLED
    )
    mapping = {"mistral:latest": BUNDLED_NAME}
    async with app([bundled], tmp_path, model_map=mapping) as h:
        c = h.client
        chat = {"messages": [{"role": "user", "content": "Hi"}], "stream": False}
        chat["options"] = {"num_predict": 4}
        for name in ["mistral", "mistral:latest", "smollm2", "smollm2:latest"]:
            resp = await c.post("/api/chat", json={"model": name, **chat})
            assert resp.status_code == 200, (name, resp.text)
        resp = await c.post("/api/copy", json={"source": "smollm2", "destination": "mine:latest"})
        assert resp.status_code == 200
        names = {m["name"] for m in (await c.get("/api/tags")).json()["models"]}
        assert {"mine:latest", "mistral:latest", "tiny:latest", "smollm2:latest"} <= names
        assert (await c.post("/api/chat", json={"model": "mine", **chat})).status_code == 200
        assert "mine" in (tmp_path / "aliases.json").read_text()
        # errors, Ollama-shaped
        for body, status in [
            ({"source": "nope", "destination": "x"}, 404),
            ({"source": "tiny", "destination": "../x"}, 400),
            ({"source": "tiny", "destination": BUNDLED_NAME}, 400),
            ({"source": "tiny"}, 400),
        ]:
            resp = await c.post("/api/copy", json=body)
            assert resp.status_code == status, body
            assert set(resp.json()) == {"error"}
        for name in [BUNDLED_NAME, "smollm2", "mistral"]:
            resp = await c.request("DELETE", "/api/delete", json={"model": name})
            assert resp.status_code == 403 and set(resp.json()) == {"error"}
        outside = tmp_path.parent / f"{tmp_path.name}-outside.gguf"
        outside.write_bytes(b"x")
        for name in [f"../{outside.stem}", str(outside), "../" * 20 + "etc/passwd", "n" * 10_000]:
            resp = await c.request("DELETE", "/api/delete", json={"model": name})
            assert resp.status_code == 404
            shown = name if len(name) <= 64 else name[:64] + "..."
            assert resp.json() == {"error": f'model "{shown}" not found, try pulling it first'}
        assert exists(outside)
        # delete the alias, then the directory model
        resp = await c.request("DELETE", "/api/delete", json={"model": "mine:latest"})
        assert resp.status_code == 200
        assert (await c.post("/api/chat", json={"model": "mine", **chat})).status_code == 404
        assert (await c.post("/api/chat", json={"model": "tiny", **chat})).status_code == 200
        resp = await c.request("DELETE", "/api/delete", json={"model": "tiny"})
        assert resp.status_code == 200
        assert not exists(tmp_path / "tiny.gguf") and exists(model_path)
        assert (await c.post("/api/chat", json={"model": "tiny", **chat})).status_code == 404
        resp = await c.request("DELETE", "/api/delete", json={"model": "tiny"})
        assert resp.status_code == 404
