"""Models and templates (RELIABILITY.md 13-15) on the real engine: sandboxed and bounded chat
templates, malformed GGUF files, model files deleted or replaced while loaded. Each time the
other models keep serving and no response holds a path or a stack trace."""

from __future__ import annotations

import os
import shutil
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inferd.config import ModelConfig, Settings
from inferd.models.loading import llamacpp_factory
from inferd.models.registry import ModelRegistry, ModelStatus
from inferd.models.spec import ModelSpec
from tests.conftest import TEST_N_CTX, AppHandle, bundled_spec


def spec(name: str, path: Path, **config: object) -> ModelSpec:
    cfg = ModelConfig(path=path, n_ctx=TEST_N_CTX, max_seqs=2, **config)  # type: ignore[arg-type]
    return ModelSpec(name, path, cfg, ())


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def no_internals(text: str, *paths: Path) -> None:
    assert "Traceback" not in text and " at 0x" not in text
    for p in paths:
        assert str(p.parent) not in text


@pytest.fixture
async def app_with(model_path: Path) -> AsyncIterator[object]:
    handles: list[AppHandle] = []

    async def make(*specs: ModelSpec) -> AppHandle:
        registry = ModelRegistry([bundled_spec(model_path), *specs], llamacpp_factory())
        handle = await AppHandle(Settings(), registry).__aenter__()
        handles.append(handle)
        return handle

    yield make
    for h in handles:
        await h.__aexit__(None, None, None)


# ---- 13: templates ---------------------------------------------------------------------------

HOSTILE_TEMPLATES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__ }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{{ 'a' * 10**10 }}",
    "{{ [1] * 10**10 }}",
    "{{ 2 ** 100000000 }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for m in messages %}{{ m.content * 1000000 }}{% endfor %}",
    "{{ 'x'|center(10**9) }}",
    "{{ 'x'.ljust(10**9) }}",
    "{{ '%999999999s'|format('x') }}",
    "{{ '%999999999s' % 'x' }}",
]

# Loops over what the request brings: bounded by the render deadline, not by range().
SLOW_TEMPLATES = [
    "{% for a in messages %}{% for b in messages %}{% for c in messages %}{{ '' }}"
    "{% endfor %}{% endfor %}{% endfor %}",
    "{% for m in messages %}{% for c in m.content %}{% for d in m.content %}{{ '' }}"
    "{% endfor %}{% endfor %}{% endfor %}",
]


@pytest.mark.parametrize("template", SLOW_TEMPLATES)
async def test_templates_that_loop_over_the_request_stop_at_the_render_deadline(
    app_with: object, model_path: Path, template: str
) -> None:
    h: AppHandle = await app_with(spec("slow", model_path, chat_template=template))  # type: ignore[operator]
    messages = [{"role": "user", "content": "y" * 50_000}] + [
        {"role": "user", "content": "hi"} for _ in range(3000)
    ]
    started = time.monotonic()
    r = await h.client.post(
        "/v1/chat/completions", json={"model": "slow", "messages": messages, "max_tokens": 2}
    )
    assert time.monotonic() - started < 10
    assert r.status_code == 400, r.text
    assert "too long to render" in r.json()["error"]["message"]
    assert (await h.client.post("/v1/chat/completions", json=chat("smollm2"))).status_code == 200


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
async def test_hostile_chat_templates_fail_cleanly_and_quickly(
    app_with: object, model_path: Path, template: str
) -> None:
    h: AppHandle = await app_with(spec("hostile", model_path, chat_template=template))  # type: ignore[operator]
    started = time.monotonic()
    r = await h.client.post("/v1/chat/completions", json=chat("hostile"))
    assert time.monotonic() - started < 10
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages"
    no_internals(r.text, model_path)
    assert "uid=" not in r.text
    r = await h.client.post("/api/chat", json={**chat("hostile"), "stream": False})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    assert (await h.client.post("/v1/chat/completions", json=chat("smollm2"))).status_code == 200


async def test_a_template_that_does_not_compile_fails_that_model_only(
    app_with: object, model_path: Path
) -> None:
    h: AppHandle = await app_with(spec("broken", model_path, chat_template="{% for %}"))  # type: ignore[operator]
    entry = h.registry.entry("broken")
    assert entry.status is ModelStatus.FAILED and "invalid chat template" in (entry.error or "")
    r = await h.client.post("/v1/chat/completions", json=chat("broken"))
    assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]
    assert (await h.client.post("/v1/chat/completions", json=chat("smollm2"))).status_code == 200


# ---- 14: malformed GGUF files ----------------------------------------------------------------


def gguf_header(tensors: int, kvs: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, kvs)


def malformed(directory: Path, model_path: Path) -> dict[str, Path]:
    files = {
        "empty": b"",
        "not-gguf": b"PK\x03\x04" + bytes(1000),
        "truncated": model_path.read_bytes()[: 1 << 20],
        "absurd-tensors": gguf_header(2**62, 0),
        "absurd-kvs": gguf_header(0, 2**62),
        "absurd-string": gguf_header(0, 1) + struct.pack("<Q", 2**62) + b"general.name",
    }
    out = {}
    for name, data in files.items():
        path = directory / f"{name}.gguf"
        path.write_bytes(data)
        out[name] = path
    return out


async def test_malformed_gguf_files_fail_to_load_cleanly(
    app_with: object, model_path: Path, tmp_path: Path
) -> None:
    files = malformed(tmp_path, model_path)
    h: AppHandle = await app_with(*(spec(n, p) for n, p in files.items()))  # type: ignore[operator]
    for name in files:
        entry = h.registry.entry(name)
        assert entry.status is ModelStatus.FAILED, name
        no_internals(entry.error or "", tmp_path / "x")
        r = await h.client.post("/v1/chat/completions", json=chat(name))
        assert r.status_code == 503, (name, r.text)
        no_internals(r.text, tmp_path / "x")
    health = await h.client.get("/health")
    assert health.status_code == 200
    no_internals(health.text, tmp_path / "x")
    r = await h.client.post("/v1/chat/completions", json=chat("smollm2"))
    assert r.status_code == 200


# ---- 15: a model file deleted or replaced while loaded ---------------------------------------


async def test_a_model_file_deleted_or_replaced_while_loaded(
    app_with: object, model_path: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(model_path, copy)
    h: AppHandle = await app_with(spec("copy", copy))  # type: ignore[operator]
    assert (await h.client.post("/v1/chat/completions", json=chat("copy"))).status_code == 200

    copy.unlink()  # deleted: the loaded weights stay mapped, the model keeps serving
    assert (await h.client.post("/v1/chat/completions", json=chat("copy"))).status_code == 200
    await h.registry.unload("copy")
    r = await h.client.post("/v1/chat/completions", json=chat("copy"))  # reload: no file
    assert r.status_code == 503 and "failed to load" in r.text
    assert h.registry.entry("copy").error == "model file not found: copy.gguf"
    no_internals(r.text, copy)

    # replaced by another file (a new inode, as `mv` and downloads do) while loaded
    shutil.copyfile(model_path, copy)
    h.registry.load("copy")
    await h.registry.acquire("copy")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + bytes(100))
    os.replace(garbage, copy)
    assert (await h.client.post("/v1/chat/completions", json=chat("copy"))).status_code == 200
    await h.registry.unload("copy")
    r = await h.client.post("/v1/chat/completions", json=chat("copy"))
    assert r.status_code == 503 and "failed to load" in r.text
    assert "not a valid GGUF" in (h.registry.entry("copy").error or "")
    no_internals((await h.client.get("/health")).text, copy)
    # the other model never noticed
    assert (await h.client.post("/v1/chat/completions", json=chat("smollm2"))).status_code == 200
